"""Translation retrieval that cannot flatter: lexical baselines beside the model, the layer chosen on the train part.

The baselines on cases whose answer is known and against a plain-Python reference; centring; an untrained model
that must not beat lexical overlap on a bundled set; the layer (and raw/centred) chosen on train rows, reported on
eval rows, with embeddings whose best eval layer is not the one the train part chooses.
"""

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from xlmflow.storage import Location, RunDir
from xlmflow.tasks import evaluate
from xlmflow.tasks.evaluate import EvalParams
from xlmflow.tasks.evaluate import embeddings as M
from xlmflow.tasks.evaluate import lexical as L

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "parallel"
SMALL = EvalParams(
    max_segments=60, probe_rows=40, probe_min_class_rows=1, translate_segments=1, translate_shots=1, prompts=1
)
# sentences the LID model labels en and fr with confidence, so no row of a set built from them is dropped
EN = [
    "The kernel provides a block device file for every RAID volume that is configured on the machine.",
    "Administrators should keep backups of the configuration files before they upgrade the system.",
    "The package manager resolves dependencies and downloads the required archives from the mirrors.",
    "This chapter explains how the graphical desktop environment can be installed and configured.",
    "The printer driver must be installed before the first document can be printed from the office suite.",
    "The firewall rules are loaded when the network interface comes up during the boot sequence.",
    "Users can change their password at any time with the command described in the next section.",
    "The mail server delivers incoming messages to the mailbox of each local user of the system.",
]
FR = [
    "Le noyau fournit un fichier de périphérique pour chaque volume RAID configuré sur la machine.",
    "Les administrateurs doivent conserver une copie des fichiers de configuration avant la mise à jour.",
    "Le gestionnaire de paquets résout les dépendances et télécharge les archives depuis les miroirs.",
    "Ce chapitre explique comment installer et configurer un environnement de bureau graphique.",
    "Le pilote de l'imprimante doit être installé avant d'imprimer le premier document depuis la suite.",
    "Les règles du pare-feu sont chargées lorsque l'interface réseau démarre pendant l'amorçage.",
    "Les utilisateurs peuvent changer leur mot de passe à tout moment avec la commande décrite plus loin.",
    "Le serveur de courrier distribue les messages entrants dans la boîte de chaque utilisateur local.",
]


@pytest.fixture(scope="module")
def run(trained_tiny, tmp_path_factory):
    """A copy of the trained tiny run (the evaluate units write into it)."""
    run_dir = tmp_path_factory.mktemp("retrieval") / "run"
    shutil.copytree(trained_tiny[0], run_dir)
    return run_dir, trained_tiny[3]


def set_metrics(run_dir, params: EvalParams) -> dict:
    """The set unit's metrics of every (model, set) unit planned for ``params``."""
    _, units, _ = evaluate.plan(RunDir.of(str(run_dir)), params)
    return {
        u.name: json.loads(Path(Location(evaluate.set_unit(u).uri).path, "metrics.json").read_text()) for u in units
    }


# ---------------------------------------------------------------- the baselines
def test_baselines_on_a_case_whose_answer_is_known(run):
    """Each row shares its rare words (and their characters) with its own translation only: both baselines find
    every row both ways; shifted by one row, no row meets its translation: 0."""
    _, tok = run
    a = ["qqq zzz", "kkk www", "jjj vvv", "xxx yyy"]
    b = ["zzz qqq!", "www kkk?", "vvv jjj.", "yyy xxx,"]
    shifted = b[1:] + b[:1]
    for x, y, expected in ((a, b, 1.0), (a, shifted, 0.0)):
        bag = L.sparse_retrieval_accuracy(L.token_counts(tok, x), L.token_counts(tok, y))
        chars = L.sparse_retrieval_accuracy(*L.char_ngram_tfidf(x, y))
        assert bag.tolist() == chars.tolist() == [expected, expected]


def reference_tfidf(a: list[str], b: list[str]) -> tuple[list[dict], list[dict]]:
    """Character 3-gram TF-IDF as scikit-learn defines it, one dict per text: lowercase, whitespace runs as one
    space, count x (ln((1 + N) / (1 + df)) + 1), L2-normalised; idf over both lists."""

    def grams(t: str) -> Counter:
        t = re.sub(r"\s\s+", " ", t.lower())
        return Counter(t[i : i + 3] for i in range(len(t) - 2))

    counts = [grams(t) for t in a + b]
    df = Counter(g for c in counts for g in c)
    vecs = []
    for c in counts:
        v = {g: n * (math.log((1 + len(counts)) / (1 + df[g])) + 1) for g, n in c.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        vecs.append({g: x / norm for g, x in v.items()})
    return vecs[: len(a)], vecs[len(a) :]


def reference_accuracy(va: list[dict], vb: list[dict]) -> list[float]:
    """acc@1 both ways of cosine nearest neighbours of dict vectors (ties: the lowest index)."""

    def cos(x: dict, y: dict) -> float:
        nx, ny = math.sqrt(sum(v * v for v in x.values())), math.sqrt(sum(v * v for v in y.values()))
        return sum(v * y.get(k, 0.0) for k, v in x.items()) / (nx * ny) if nx and ny else 0.0

    sims = [[cos(x, y) for y in vb] for x in va]
    fwd = [max(range(len(vb)), key=lambda j: round(sims[i][j], 12)) == i for i in range(len(va))]
    bwd = [max(range(len(va)), key=lambda i: round(sims[i][j], 12)) == j for j in range(len(vb))]
    return [sum(fwd) / len(fwd), sum(bwd) / len(bwd)]


@pytest.mark.parametrize("other", ["fr", "zh"])
def test_baselines_equal_a_plain_python_reference_on_a_bundled_set(run, other):
    _, tok = run
    df = pl.read_parquet(BUNDLED / "debian-handbook.eval.parquet").head(80)
    df = df.filter(pl.col("en").is_not_null() & pl.col(other).is_not_null() & (pl.col("en") != pl.col(other)))
    a, b = df["en"].to_list(), df[other].to_list()
    bags = [[Counter(e.ids) for e in tok.encode_batch(x, add_special_tokens=False)] for x in (a, b)]
    expected_bag = reference_accuracy(*bags)
    got_bag = L.sparse_retrieval_accuracy(L.token_counts(tok, a), L.token_counts(tok, b))
    assert got_bag.tolist() == pytest.approx(expected_bag, abs=1e-12)
    got_chars = L.sparse_retrieval_accuracy(*L.char_ngram_tfidf(a, b))
    assert got_chars.tolist() == pytest.approx(reference_accuracy(*reference_tfidf(a, b)), abs=1e-12)
    assert max(got_chars) > 5 / len(a)  # names, numbers and commands: lexical overlap is far above chance


def test_centring_removes_the_language_mean_and_keeps_empty_rows_empty():
    """Vectors of one language share an offset; centring on their mean leaves only what differs, unit length."""
    rng = np.random.default_rng(0)
    own = rng.normal(size=(2, 5, 8)).astype(np.float32)
    vectors = own + 10  # a large common offset: raw cosine between any two rows is near 1
    vectors[:, 4] = 0  # an empty text
    mean = M.language_mean(vectors)
    assert mean == pytest.approx(vectors[:, :4].mean(axis=1), abs=1e-5)
    out = M.centre(vectors, mean)
    expected = own[:, :4] - own[:, :4].mean(axis=1, keepdims=True)
    assert out[:, :4] == pytest.approx(expected / np.linalg.norm(expected, axis=2, keepdims=True), abs=1e-5)
    assert not out[:, 4].any()


# ---------------------------------------------------------------- the set unit
def test_a_randomly_initialised_model_does_not_beat_lexical_overlap(run, tmp_path):
    """An untrained model with the trained model's configuration and tokenizer, on the bundled handbook set: its
    best representation, chosen on the train part, stays below counting shared tokens or character 3-grams, which
    are themselves well above chance."""
    import torch

    from xlmflow.tasks.common.model import XlmGPT2Config, XlmGPT2LMHeadModel

    run_dir, _ = run
    folder = tmp_path / "random"
    torch.manual_seed(0)
    XlmGPT2LMHeadModel(XlmGPT2Config.from_pretrained(run_dir / "train")).save_pretrained(folder)
    shutil.copy(run_dir / "train" / "tokenizer.json", folder / "tokenizer.json")
    sets = tmp_path / "sets"
    sets.mkdir()
    for part in ("train", "eval"):
        shutil.copy(BUNDLED / f"debian-handbook.{part}.parquet", sets)
    (m,) = set_metrics(run_dir, SMALL.model_copy(update={"parallel": [str(sets)], "models": [str(folder)]})).values()
    r = m["retrieval"]
    assert r["layer_rule"] == "train_argmax" and r["n_pairs"] == 3  # en, fr, zh: the model's languages
    assert max(r["baselines"].values()) > 5 * r["chance"]
    assert r["beats_baselines"] is False and r["acc_at_1"] < max(r["baselines"].values())
    assert m["transfer"]["layer"] == r["layer"] and m["transfer"]["centred"] == r["centred"]


def test_the_layer_is_chosen_on_the_train_part_and_reported_on_the_eval_part(run, tmp_path, monkeypatch):
    """Embeddings given in place of the model's: on the train rows layer 1 pairs every row with its translation
    and layer 0 with the next row's; on the eval rows the other way round. The train part chooses layer 1 (raw:
    centred ties with it, and ties go to raw), so the reported acc@1 is layer 1's on the eval rows, 0, although
    layer 0 scores 1 there: a choice made on the eval rows would have reported 1."""
    run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)  # the faked units must not be cached where other tests look
    n = 4
    train = {"en": EN[:n], "fr": FR[:n]}
    held = {"en": EN[n:], "fr": FR[n:]}
    sets = tmp_path / "sets"
    sets.mkdir()
    pl.DataFrame(train).write_parquet(sets / "known.train.parquet")
    pl.DataFrame(held).write_parquet(sets / "known.eval.parquet")

    def embed(model, tok, texts, tag_id, lang_id, batch_size=32):
        out = np.zeros((2, len(texts), 2 * n), np.float32)
        for k, t in enumerate(texts):
            for offset, part, matched in ((0, train, 1), (n, held, 0)):  # the layer where fr meets its en row
                if t in part["en"]:
                    out[:, k, offset + part["en"].index(t)] = 1
                elif t in part["fr"]:
                    i = part["fr"].index(t)
                    out[matched, k, offset + i] = 1
                    out[1 - matched, k, offset + (i + 1) % n] = 1
        return out

    monkeypatch.setattr(M, "embed", embed)
    (m,) = set_metrics(copy, SMALL.model_copy(update={"parallel": [str(sets)]})).values()
    r = m["retrieval"]
    assert r["train_per_layer"] == {"raw": [0.0, 1.0], "centred": [0.0, 1.0]}
    assert r["per_layer"] == {"raw": [1.0, 0.0], "centred": [1.0, 0.0]}
    assert (r["layer"], r["centred"], r["layer_rule"], r["centring"]) == (1, False, "train_argmax", "train part")
    assert r["acc_at_1"] == 0.0 and r["embedding_acc_at_1"] == 1.0
    assert r["train_rows"] == {"en-fr": n} and r["pairs"]["en-fr"]["rows"] == n
