"""The evaluate stage with a tiny trained model: metrics, report, plots, cached units, user sets, bad sets."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_train import PARAMS, build_inputs

from xlmflow.storage import Location, RunDir, load_output
from xlmflow.tasks import evaluate, train
from xlmflow.tasks.common.parallel_sets import read_set
from xlmflow.tasks.evaluate import EvalParams
from xlmflow.tasks.evaluate import ui as evaluate_ui

EN = ["the cat sat on a mat", "the dog ran far away", "a cat and a dog", "the mat and the home", "far from home"]
FR = ["le chat est sur le tapis", "le chien court loin", "un chat et un chien", "le tapis de la maison", "loin de la"]
# sentences the LID model labels en and fr with confidence, so no row of a set built from them is dropped
LONG_EN = [
    "The kernel provides a block device file for every RAID volume that is configured on the machine.",
    "Administrators should keep backups of the configuration files before they upgrade the system.",
    "The package manager resolves dependencies and downloads the required archives from the mirrors.",
    "This chapter explains how the graphical desktop environment can be installed and configured.",
    "The printer driver must be installed before the first document can be printed from the office suite.",
]
LONG_FR = [
    "Le noyau fournit un fichier de périphérique pour chaque volume RAID configuré sur la machine.",
    "Les administrateurs doivent conserver une copie des fichiers de configuration avant la mise à jour.",
    "Le gestionnaire de paquets résout les dépendances et télécharge les archives depuis les miroirs.",
    "Ce chapitre explique comment installer et configurer un environnement de bureau graphique.",
    "Le pilote de l'imprimante doit être installé avant d'imprimer le premier document depuis la suite.",
]
SMALL = EvalParams(
    max_docs=5, max_segments=50, probe_rows=20, probe_min_class_rows=1, prompts=1, gen_tokens=4, translate_segments=2
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    build_inputs(str(run_dir))
    train.train_unit(train.plan(RunDir.of(str(run_dir)), PARAMS))
    sets = tmp_path_factory.mktemp("sets")
    ids = [f"text/swriter/a{i}.xhp#1" if i % 2 else f"text/scalc/b{i}.xhp#1" for i in range(len(EN))]
    pl.DataFrame({"id": ids, "en": EN, "fr": FR}).write_parquet(sets / "toy.eval.parquet")
    pl.DataFrame({"id": ids, "en": EN, "fr": FR}).write_parquet(sets / "toy.train.parquet")
    return run_dir, sets


def trained_model(run_dir):
    from tokenizers import Tokenizer

    from xlmflow.tasks.common.model import XlmGPT2LMHeadModel

    folder = Path(run_dir) / "train"
    model = XlmGPT2LMHeadModel.from_pretrained(folder, use_safetensors=True).eval()
    return model, Tokenizer.from_file(str(folder / "tokenizer.json"))


def hand_bits_per_byte(run_dir, lang: str, n_docs: int) -> float:
    """Bits per byte of the trained model on the first ``n_docs`` valid documents of ``lang``, by hand: summed
    NLL (nats) of every token after the document's tag but the tags, one document at a time in windows of the
    context moved by half of it (the last one ending at the document's end), each token scored in the first window
    holding it after its first position, over ln 2 x (the UTF-8 bytes of the document's text as langid kept it,
    plus one for its end-of-text token)."""
    import torch
    import torch.nn.functional as F

    model, _ = trained_model(run_dir)
    files = sorted((Path(run_dir) / "shard" / "valid").glob(f"{lang}-*/*.parquet"))
    docs = pl.concat([pl.read_parquet(f, columns=["doc_id", "input_ids"]) for f in files]).head(n_docs)
    clean = pl.concat(pl.read_parquet(f) for f in (Path(run_dir) / "langid" / "clean").glob(f"lang={lang}/*.parquet"))
    text = dict(clean.select("doc_id", "text").rows())
    tags = list(model.config.lang_token_ids)
    context = model.config.n_positions
    nll, n_bytes = 0.0, 0
    for doc_id, ids in docs.rows():
        assert ids[0] in tags and ids[-1] == model.config.eos_token_id
        language = tags.index(ids[0]) + 1
        start, done = 0, 1  # done: the first position not scored yet
        while done < len(ids):
            start = min(start, max(len(ids) - context, 0))
            window = torch.tensor([ids[start : start + context]])
            with torch.no_grad():
                logits = model(window, lang_ids=torch.full_like(window, language)).logits[0]
            for pos in range(max(done, start + 1), start + window.shape[1]):
                if ids[pos] not in tags:
                    nll += F.cross_entropy(logits[pos - start - 1], torch.tensor(ids[pos])).item()
            done, start = start + window.shape[1], start + context // 2
        n_bytes += len(text[doc_id].encode("utf-8")) + 1
    return nll / (np.log(2) * n_bytes)


def hand_embed(run_dir, texts: list[str], lang: str) -> np.ndarray:
    """[layers, texts, width] by hand: each text fed after its language tag alone (the model derives the language
    from it), every layer's hidden states averaged over the text's tokens (the tag left out), L2-normalised."""
    import torch

    model, tok = trained_model(run_dir)
    rows = []
    for t in texts:
        ids = [tok.token_to_id(f"<lang:{lang}>"), *tok.encode(t, add_special_tokens=False).ids]
        with torch.no_grad():
            states = model(torch.tensor([ids[: model.config.n_positions]]), output_hidden_states=True).hidden_states
        mean = torch.stack([h[0, 1:].mean(0) for h in states])  # [layers, width]
        rows.append((mean / mean.norm(dim=-1, keepdim=True)).numpy())
    return np.stack(rows, axis=1)


def hand_valid_mean(run_dir, lang: str, n_docs: int) -> np.ndarray:
    """[layers, width]: the mean embedding of the first ``n_docs`` valid documents of ``lang``, as text."""
    _, tok = trained_model(run_dir)
    files = sorted((Path(run_dir) / "shard" / "valid").glob(f"{lang}-*/*.parquet"))
    docs = pl.concat([pl.read_parquet(f, columns=["input_ids"]) for f in files]).head(n_docs)["input_ids"].to_list()
    return hand_embed(run_dir, [tok.decode(d) for d in docs], lang).mean(axis=1)


def hand_retrieval(run_dir, a: list[str], b: list[str], langs=("en", "fr"), means=None) -> np.ndarray:
    """acc@1 [layers, (a->b, b->a)] by hand: cosine nearest neighbour of :func:`hand_embed` vectors; with
    ``means`` (one [layers, width] per language), of the vectors minus their language's mean."""
    ea, eb = hand_embed(run_dir, a, langs[0]), hand_embed(run_dir, b, langs[1])
    if means is not None:
        ea, eb = ea - means[0][:, None], eb - means[1][:, None]
        ea, eb = ea / np.linalg.norm(ea, axis=2, keepdims=True), eb / np.linalg.norm(eb, axis=2, keepdims=True)
    sims = ea @ eb.transpose(0, 2, 1)
    gold = np.arange(len(a))
    return np.stack([(sims.argmax(2) == gold).mean(1), (sims.argmax(1) == gold).mean(1)], axis=1)


def run_stage(run_dir, params):
    run = RunDir.of(str(run_dir))
    lms, sets, _ = evaluate.plan(run, params)
    refs = [evaluate.lm_unit(u) for u in lms] + [evaluate.set_unit(u) for u in sets]
    evaluate.commit_evaluation(evaluate.stage_for(run, params, refs), refs)
    return json.loads((Path(run_dir) / "evaluate" / "metrics.json").read_text())


def test_metrics_report_and_plots(trained, tmp_path):
    run_dir, sets = trained
    user = tmp_path / "mine.tsv"
    rows = ["en\tfr\tnotes"] + [f"{e}\t{f}\tx" for e, f in zip(LONG_EN, LONG_FR)] + ["\tseul\tx", "same\tsame\tx"]
    user.write_text("\n".join(rows) + "\n")
    m = run_stage(run_dir, SMALL.model_copy(update={"parallel": [str(sets), str(user)]}))
    langs = ["en", "fr", "zh"]
    assert sorted(m["bits_per_byte"]) == langs
    for lang in langs:  # the model's loss on the valid documents, per byte of their text
        assert m["bits_per_byte"][lang] == pytest.approx(hand_bits_per_byte(run_dir, lang, SMALL.max_docs), rel=1e-4)
    assert sorted(m["generation_language_rate"]) == langs
    assert set(m["retrieval"]) == {"toy", "mine"}
    r = m["retrieval"]["mine"]  # a file: no train part, so the fixed rule (middle layer, centred on valid shards)
    assert r["dropped"]["en-fr"] == {"empty": 1, "identical": 1, "wrong_language": 0}
    pair = r["pairs"]["en-fr"]
    assert pair["rows"] == len(LONG_EN) and r["chance"] == pytest.approx(1 / len(LONG_EN))
    acc = hand_retrieval(run_dir, LONG_EN, LONG_FR)  # [embeddings + one block, 2 directions]
    assert r["per_layer"]["raw"] == pytest.approx(acc.mean(axis=1).tolist(), abs=1e-9)
    means = [hand_valid_mean(run_dir, lang, SMALL.max_segments) for lang in ("en", "fr")]
    centred = hand_retrieval(run_dir, LONG_EN, LONG_FR, means=means)
    assert r["per_layer"]["centred"] == pytest.approx(centred.mean(axis=1).tolist(), abs=1e-9)
    assert (r["layer"], r["centred"], r["layer_rule"], r["centring"]) == (1, True, "fixed_middle", "valid shards")
    assert r["acc_at_1"] == pytest.approx(centred[1].mean(), abs=1e-9)
    assert (pair["forward"], pair["backward"]) == pytest.approx(tuple(centred[1]), abs=1e-9)
    assert r["embedding_acc_at_1"] == pytest.approx(centred[0].mean(), abs=1e-9)
    assert r["beats_baselines"] == (r["acc_at_1"] > max(r["baselines"].values()))
    toy = m["retrieval"]["toy"]  # a folder set: its train part chooses
    assert toy["layer_rule"] == "train_argmax" and toy["centring"] == "train part"
    score = np.array([toy["train_per_layer"]["raw"], toy["train_per_layer"]["centred"]])
    assert (int(toy["centred"]), toy["layer"]) == np.unravel_index(np.argmax(score), score.shape)
    assert "toy" in m["chrf"] and "toy/en-fr" in m["bleu"] and "mine" in m["chrf"]
    assert set(m["contamination"]["toy"]["per_language"]) == {"en", "fr"}
    t = m["transfer"]["toy"]
    assert set(t["accuracy"]) == {"en", "fr"} and t["classes"] == 2
    assert (t["layer"], t["centred"]) == (toy["layer"], toy["centred"])  # the probe uses retrieval's choice
    folder = Path(run_dir) / "evaluate"
    report = (folder / "report.md").read_text()
    assert report.index("## Retrieval on mine") < report.index("## Retrieval on toy") < report.index("## Bits per")
    assert "| beats lexical overlap |" in report
    ui = evaluate_ui.report(RunDir.of(str(run_dir)))  # the Prefect artifact: report.md led the same way, charts added
    assert ui.markdown.index("## Retrieval on mine") < ui.markdown.index('title "mine: retrieval per layer"')
    assert ui.headline["beats_lexical_overlap"] == {
        s: "yes" if r["beats_baselines"] else "no" for s, r in m["retrieval"].items()
    }
    for png in ("bits_per_byte.png", "loss_curves.png", "retrieval_toy.png", "retrieval_mine.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report
    for png in ("retrieval_layers_toy.png", "retrieval_layers_mine.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report
    manifest = load_output(RunDir.of(str(run_dir)).stage("evaluate"), "evaluate")
    assert {"metrics.json", "report.md", "bits_per_byte.png"} <= {f.path for f in manifest.files}


def test_retrieval_on_embeddings_whose_answer_is_known(trained, tmp_path, monkeypatch):
    """The set unit's retrieval figures on embeddings given in place of the model's, whose answers are known.
    Row i of the set (after two dropped rows: an empty side, an untranslated copy) is e_i on the en side; on the
    fr side it is e_(i+1) at layer 0 (no row finds its own: 0 both ways) and e_i + e_0 at layer 1 (row 0 alone
    is e_0): en->fr finds every row, fr->en finds row 0 for every row (ties go to the lowest index): 1/n. The file
    has no train part: the fixed middle layer (1 of 1), centred on the valid shards' mean, which is zero here (the
    fake embeds every other text as zero), so centred equals raw."""
    from xlmflow.tasks.evaluate import embeddings

    run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)  # the faked unit must not be cached where the other tests look
    known = tmp_path / "known.tsv"
    rows = ["en\tfr", "\tseul", "same\tsame"] + [f"{e}\t{f}" for e, f in zip(LONG_EN, LONG_FR)]
    known.write_text("\n".join(rows) + "\n")
    n = len(LONG_EN)

    def embed(model, tok, texts, tag_id, lang_id, batch_size=32):
        out = np.zeros((2, len(texts), n), np.float32)
        for k, t in enumerate(texts):
            if t in LONG_EN:
                out[:, k, LONG_EN.index(t)] = 1
            elif t in LONG_FR:
                i = LONG_FR.index(t)
                out[0, k, (i + 1) % n] = 1
                out[1, k, [0, i]] = 1
        return out / np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)

    monkeypatch.setattr(embeddings, "embed", embed)
    _, units, _ = evaluate.plan(RunDir.of(str(copy)), SMALL.model_copy(update={"parallel": [str(known)]}))
    (unit,) = units
    r = json.loads((Path(Location(evaluate.set_unit(unit).uri).path) / "metrics.json").read_text())["retrieval"]
    assert r["dropped"] == {"en-fr": {"empty": 1, "identical": 1, "wrong_language": 0}}
    pair = r["pairs"]["en-fr"]
    assert pair["rows"] == n and r["chance"] == pytest.approx(1 / n)
    assert r["per_layer"]["raw"] == r["per_layer"]["centred"] == pytest.approx([0.0, (1 + 1 / n) / 2])
    assert r["layer"] == 1 and r["layer_rule"] == "fixed_middle" and r["acc_at_1"] == pytest.approx((1 + 1 / n) / 2)
    assert (pair["forward"], pair["backward"]) == (1.0, pytest.approx(1 / n)) and r["embedding_acc_at_1"] == 0.0


def test_adding_a_set_runs_only_its_units(trained, tmp_path, caplog):
    run_dir, sets = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    run_stage(copy, SMALL.model_copy(update={"parallel": [str(sets)]}))
    extra = tmp_path / "extra.parquet"
    pl.DataFrame({"en": EN, "fr": FR}).write_parquet(extra)
    caplog.set_level(logging.INFO, logger="xlmflow")
    m = run_stage(copy, SMALL.model_copy(update={"parallel": [str(sets), str(extra)]}))
    log = [line for line in caplog.text.splitlines() if "evaluate/" in line]
    built = [line for line in log if "committed" in line and "nothing to do" not in line]
    assert sum("nothing to do" in line for line in log) == 2  # the model's lm unit and the toy set's unit
    assert any("model--extra" in line for line in built)
    assert not any("model--toy" in line or "evaluate/model:" in line for line in built), built
    assert set(m["retrieval"]) == {"toy", "extra"}


def test_two_models_side_by_side(trained, tmp_path):
    run_dir, sets = trained
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    shutil.rmtree(other / "train")
    train.train_unit(train.plan(RunDir.of(str(other)), PARAMS.model_copy(update={"align": "tie", "max_steps": 4})))
    params = SMALL.model_copy(update={"parallel": [str(sets)], "models": [str(run_dir), str(other)]})
    m = run_stage(run_dir, params)
    assert sorted(m["models"]) == ["other/train", "run/train"]  # named by run and stage
    cmp = m["comparison"]["bits_per_byte"]["fr"]
    assert cmp["other/train-run/train"] == pytest.approx(cmp["other/train"] - cmp["run/train"])
    assert m["bits_per_byte"] == m["models"]["run/train"]["bits_per_byte"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.tsv", None, "no such file"),
        ("set.csv", "en,fr\na,b\n", "not a Parquet or TSV file"),
        ("nolang.tsv", "left\tright\na\tb\nc\td\n", "no language column"),
        ("ragged.tsv", "en\tfr\na\tb\nc\td\te\n", "unreadable"),
        ("badcode.tsv", "en\teng\na\tb\nc\td\n", "'eng' is not an ISO 639-1 language code"),
        ("short.tsv", "en\tfr\na\tb\n", "1 row"),
    ],
)
def test_malformed_sets_are_errors_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        read_set(Location.of(str(path)), min_rows=2)
    assert name in str(e.value)


def test_a_set_sharing_fewer_than_two_languages_with_the_model_is_an_error(trained, tmp_path):
    run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    odd = tmp_path / "odd.tsv"
    odd.write_text("en\tsw\na\tb\nc\td\n")
    with pytest.raises(ValueError, match=r"odd.tsv: shares 1 language\(s\) with model model"):
        run_stage(copy, SMALL.model_copy(update={"parallel": [str(odd)]}))
