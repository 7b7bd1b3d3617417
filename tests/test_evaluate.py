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
    context overlapping by one token, over ln 2 x the UTF-8 bytes of the document's text as langid kept it."""
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
        for start in range(0, len(ids) - 1, context - 1):
            window = torch.tensor([ids[start : start + context]])
            with torch.no_grad():
                logits = model(window, lang_ids=torch.full_like(window, language)).logits[0, :-1]
            target = window[0, 1:]
            scored = ~torch.isin(target, torch.tensor(tags))
            nll += F.cross_entropy(logits[scored], target[scored], reduction="sum").item()
        n_bytes += len(text[doc_id].encode("utf-8"))
    return nll / (np.log(2) * n_bytes)


def hand_retrieval(run_dir, a: list[str], b: list[str], langs=("en", "fr")) -> np.ndarray:
    """acc@1 [layers, (a->b, b->a)] by hand: each text fed after its language tag alone (the model derives the
    language from it), every layer's hidden states averaged over the text's tokens, cosine nearest neighbour."""
    import torch

    model, tok = trained_model(run_dir)

    def embed(texts, lang):
        rows = []
        for t in texts:
            ids = [tok.token_to_id(f"<lang:{lang}>"), *tok.encode(t, add_special_tokens=False).ids]
            with torch.no_grad():
                states = model(torch.tensor([ids[: model.config.n_positions]]), output_hidden_states=True).hidden_states
            mean = torch.stack([h[0, 1:].mean(0) for h in states])  # [layers, width], the tag left out
            rows.append((mean / mean.norm(dim=-1, keepdim=True)).numpy())
        return np.stack(rows, axis=1)  # [layers, texts, width]

    ea, eb = embed(a, langs[0]), embed(b, langs[1])
    sims = ea @ eb.transpose(0, 2, 1)
    gold = np.arange(len(a))
    return np.stack([(sims.argmax(2) == gold).mean(1), (sims.argmax(1) == gold).mean(1)], axis=1)


def run_stage(run_dir, params):
    run = RunDir.of(str(run_dir))
    lms, sets = evaluate.plan(run, params)
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
    r = m["retrieval"]["mine"]
    assert r["dropped"]["en-fr"] == {"empty": 1, "identical": 1, "wrong_language": 0}
    assert r["rows"]["en-fr"] == len(LONG_EN) and r["chance"] == pytest.approx(1 / len(LONG_EN))
    acc = hand_retrieval(run_dir, LONG_EN, LONG_FR)  # [embeddings + one block, 2 directions]
    assert r["per_layer_mean"] == pytest.approx(acc.mean(axis=1).tolist(), abs=1e-9)
    best = int(np.argmax(acc.mean(axis=1)))
    assert r["best_layer"] == best and r["acc_at_1"]["en-fr"] == pytest.approx(acc[best].mean(), abs=1e-9)
    assert (r["directions"]["en-fr"]["forward"], r["directions"]["en-fr"]["backward"]) == pytest.approx(
        tuple(acc[best]), abs=1e-9
    )
    assert "toy" in m["chrf"] and "toy/en-fr" in m["bleu"] and "mine" in m["chrf"]
    assert set(m["contamination"]["toy"]["per_language"]) == {"en", "fr"}
    t = m["transfer"]["toy"]
    assert set(t["accuracy"]) == {"en", "fr"} and t["classes"] == 2
    folder = Path(run_dir) / "evaluate"
    report = (folder / "report.md").read_text()
    for png in ("bits_per_byte.png", "loss_curves.png", "retrieval_toy.png", "retrieval_mine.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report
    manifest = load_output(RunDir.of(str(run_dir)).stage("evaluate"), "evaluate")
    assert {"metrics.json", "report.md", "bits_per_byte.png"} <= {f.path for f in manifest.files}


def test_retrieval_on_embeddings_whose_answer_is_known(trained, tmp_path, monkeypatch):
    """The set unit's retrieval figures on embeddings given in place of the model's, whose answers are known.
    Row i of the set (after two dropped rows: an empty side, an untranslated copy) is e_i on the en side; on the
    fr side it is e_(i+1) at layer 0 (no row finds its own: 0 both ways) and e_i + e_0 at layer 1 (row 0 alone
    is e_0): en->fr finds every row, fr->en finds row 0 for every row (ties go to the lowest index): 1/n."""
    from xlmflow.tasks.evaluate import measures

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

    monkeypatch.setattr(measures, "embed", embed)
    _, units = evaluate.plan(RunDir.of(str(copy)), SMALL.model_copy(update={"parallel": [str(known)]}))
    (unit,) = units
    r = json.loads((Path(Location(evaluate.set_unit(unit).uri).path) / "metrics.json").read_text())["retrieval"]
    assert r["dropped"] == {"en-fr": {"empty": 1, "identical": 1, "wrong_language": 0}}
    assert r["rows"] == {"en-fr": n} and r["chance"] == pytest.approx(1 / n)
    assert r["per_layer_mean"] == pytest.approx([0.0, (1 + 1 / n) / 2])
    assert r["best_layer"] == 1 and r["acc_at_1"] == {"en-fr": pytest.approx((1 + 1 / n) / 2)}
    assert r["directions"] == {"en-fr": {"forward": 1.0, "backward": pytest.approx(1 / n)}}


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
    assert any("train--extra" in line for line in built)
    assert not any("train--toy" in line or "evaluate/train:" in line for line in built), built
    assert set(m["retrieval"]) == {"toy", "extra"}


def test_two_models_side_by_side(trained, tmp_path):
    run_dir, sets = trained
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    shutil.rmtree(other / "train")
    train.train_unit(train.plan(RunDir.of(str(other)), PARAMS.model_copy(update={"align": "tie", "max_steps": 4})))
    params = SMALL.model_copy(update={"parallel": [str(sets)], "models": [str(run_dir), str(other)]})
    m = run_stage(run_dir, params)
    assert sorted(m["models"]) == ["other", "run"]
    cmp = m["comparison"]["bits_per_byte"]["fr"]
    assert cmp["other-run"] == pytest.approx(cmp["other"] - cmp["run"])
    assert m["bits_per_byte"] == m["models"]["run"]["bits_per_byte"]


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
    with pytest.raises(ValueError, match=r"odd.tsv: shares 1 language\(s\) with model train"):
        run_stage(copy, SMALL.model_copy(update={"parallel": [str(odd)]}))
