"""Translation pairs in pretraining: the shard stage tokenises the parallel sets' train parts (never their eval
parts) and flags the rows evaluation would drop; the loader packs pair blocks ``<lang:a> src <|endoftext|> <lang:b>
tgt <|endoftext|>`` at the configured share, each rank its own rows, and resumes them exactly."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from shard_fixtures import corpus, make_inputs

from xlmflow.storage import Location, RunDir, read_table
from xlmflow.storage.shards import PAIRS, list_pairs, list_shards, usable
from xlmflow.tasks.shard import ShardParams, commit_shards, shard_unit, stage_for
from xlmflow.tasks.shard import plan as plan_shards
from xlmflow.tasks.train.data import BlockLoader, BlockSpec

EN = [
    "The administrator installs the package on every machine of the network before the holidays.",
    "Open the settings dialog and choose the language you want to use for the whole document.",
    "Backups are copied every night to a second disk that is kept in another building.",
    "The mail server rejects messages whose sender cannot be verified by the domain records.",
    "Debian GNU/Linux 12",  # the same in both columns: an untranslated copy
    "Each user gets a home directory where personal files and settings are stored.",
    "The firewall blocks every incoming connection except the ones listed in its rules.",
    "As the guide puts it: nothing in the evaluation part may ever reach training, whatever the configuration says.",
]
FR = [
    "L'administrateur installe le paquet sur chaque machine du réseau avant les vacances.",
    "Ouvrez la boîte de dialogue des paramètres et choisissez la langue du document entier.",
    "",  # empty
    "This sentence was left in English by the translator and is not French at all.",  # wrong language
    "Debian GNU/Linux 12",
    "Chaque utilisateur reçoit un répertoire personnel où sont rangés ses fichiers et réglages.",
    "Le pare-feu bloque toutes les connexions entrantes sauf celles listées dans ses règles.",
    "Comme le dit le guide, rien de la partie évaluation ne doit jamais atteindre l'entraînement.",
]
ZH = [
    "管理员在假期之前把软件包安装到网络中的每一台机器上。",
    "打开设置对话框，选择整个文档要使用的语言。",
    "备份每天晚上复制到另一栋楼里的第二块磁盘上。",
    "邮件服务器拒绝发件人无法通过域名记录验证的邮件。",
    "Debian GNU/Linux 12",
    "每个用户都有一个存放个人文件和设置的主目录。",
    "防火墙阻止所有传入连接，规则中列出的除外。",
    "正如指南所说，评估部分的任何内容都不得进入训练。",
]
EVAL_ONLY = "Nothing in the evaluation part may ever reach training, whatever the configuration says."


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """A run with committed langid, vocab and shard stages, the shard stage with one set's pairs."""
    root = tmp_path_factory.mktemp("pairs")
    sets = root / "sets"
    sets.mkdir()
    pl.DataFrame({"id": list(range(len(EN))), "en": EN, "fr": FR, "zh": ZH}).write_parquet(sets / "toy.train.parquet")
    held_out = {"en": [EVAL_ONLY] * 3, "fr": ["Rien de la partie évaluation."] * 3, "zh": ["评估"] * 3}
    pl.DataFrame(held_out).write_parquet(sets / "toy.eval.parquet")
    run_dir = str(root / "run")
    tok = make_inputs(run_dir, corpus({"en": 60, "fr": 60, "zh": 30}))
    run = RunDir.of(run_dir)
    params = ShardParams(shard_docs=40, min_valid_docs=4, valid_fraction=0.05, parallel=[str(sets)])
    units = plan_shards(run, params)
    refs = [shard_unit(u) for u in units]
    commit_shards(stage_for(run, params, refs), refs)
    return run, tok, units


def test_train_parts_only_tokenised_with_evaluations_checks(paired):
    run, tok, units = paired
    assert [u.name for u in units if u.params["split"] == PAIRS] == ["pairs/toy"]
    (pairs,) = list_pairs(run.stage("shard"))
    assert pairs.path == "pairs/toy/pairs-toy.parquet" and pairs.rows == len(EN)
    table = read_table(Location(pairs.uri))
    # empty, wrong language, an untranslated copy; and the last English side shares an 11-unit n-gram with an eval
    # segment (held out, as a corpus document would be), while its French and Chinese sides still pair
    assert usable(table, "en", "fr").tolist() == [True, True, False, False, False, True, True, False]
    assert usable(table, "en", "zh").tolist() == [True, True, True, True, False, True, True, False]
    assert usable(table, "fr", "zh")[-1]
    first = table["fr"][0].as_py()
    assert tok.decode(first, skip_special_tokens=False) == "<lang:fr>" + FR[0] + "<|endoftext|>"
    everything = " ".join(tok.decode(ids.as_py()) for lang in ("en", "fr", "zh") for ids in table[lang])
    assert EN[1] in everything
    index = json.loads(run.stage("shard").child("shards.json").open("rb").read())
    assert index["pairs"][0]["usable_pairs"] == {"en-fr": 4, "en-zh": 6, "fr-zh": 5}
    assert index["pairs"][0]["eval_overlap"] == {"en": 1, "fr": 0, "zh": 0}


def _loader(run, share, rank=0, world=1, schedule="constant", steps=40):
    spec = BlockSpec(block_size=384, batch_size=8, seed=3, pair_share=share, pair_schedule=schedule, max_steps=steps)
    return BlockLoader(run.stage("shard"), "train", spec, rank, world, ["en", "fr", "zh"], None)


def test_pair_blocks_are_translations_at_the_share_and_resume_exactly(paired):
    run, tok, _ = paired
    loader = _loader(run, 0.5)
    batches = [loader.next_batch() for _ in range(10)]
    lang_ids = np.concatenate([b["lang_ids"] for b in batches])
    mixed = np.array([len(set(row)) > 1 for row in lang_ids])
    assert 0.3 < mixed.mean() < 0.7  # ~half the blocks are pair blocks (a pair block can be cut inside one side)
    ids = np.concatenate([b["input_ids"] for b in batches])[mixed][0]
    text = tok.decode(ids.tolist(), skip_special_tokens=False)
    sides = [s for s in text.split("<|endoftext|>") if s]
    assert sides[0].startswith("<lang:") and sides[1].startswith("<lang:") and sides[0][:9] != sides[1][:9]
    known = {f"<lang:{lang}>{t}" for lang, col in (("en", EN), ("fr", FR), ("zh", ZH)) for t in col}
    assert sides[0] in known and sides[1] in known and EVAL_ONLY not in text
    # each side's tokens carry its own language id (1 + its index in the loader's languages)
    row = np.concatenate([b["lang_ids"] for b in batches])[mixed][0]
    end = int(np.flatnonzero(ids == tok.token_to_id("<|endoftext|>"))[0])
    a, b = (["en", "fr", "zh"].index(side[6:8]) + 1 for side in sides[:2])
    assert set(row[: end + 1]) == {a} and row[end + 1] == b
    # a loader restored at step 4 gives batches 4.. again, pair blocks and language streams alike
    again = _loader(run, 0.5)
    state = loader.state_dict() | {"step": 4}
    again.load_state_dict(state)
    for want in batches[4:]:
        got = again.next_batch()
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_no_share_no_pair_blocks_and_the_late_schedule(paired):
    run, _, _ = paired
    plain, zero = _loader(run, 0.0), BlockLoader(run.stage("shard"), "train", BlockSpec(384, 8, seed=3), 0, 1, None)
    for _ in range(5):
        a, b = plain.next_batch(), zero.next_batch()
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert all(len(set(row)) == 1 for row in a["lang_ids"])
    late = BlockSpec(32, 8, pair_share=0.25, pair_schedule="late", max_steps=100)
    p = [late.pair_probability(s) for s in range(100)]
    assert p[0] < 0.01 and p[-1] > 0.49 and abs(np.mean(p) - 0.25) < 1e-9


def test_ranks_draw_pairs_from_disjoint_rows(paired):
    run, _, _ = paired
    rows = [set(_loader(run, 0.5, rank=r, world=2)._pairs.examples[:, 1].tolist()) for r in (0, 1)]
    assert rows[0] and rows[1] and not rows[0] & rows[1]


def test_training_takes_pair_blocks_where_the_shards_have_pairs(paired, train_inputs, tmp_path, caplog):
    import shutil

    from xlmflow.tasks import train

    run, _, _ = paired
    copy = tmp_path / "run"
    shutil.copytree(run.root.path, copy)
    tiny = {"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 128}
    params = train.TrainParams(model=tiny, align="none", max_steps=4, batch_size=2, eval_every=4, eval_blocks=1)
    unit = train.plan(RunDir.of(str(copy)), params.model_copy(update={"parallel_schedule": "late"}))
    assert unit.params["train"]["parallel_share"] == 0.2 and unit.params["train"]["parallel_schedule"] == "late"
    summary = json.loads(Location(train.train_unit(unit).uri).child("summary.json").open("rb").read())
    assert summary["steps"] == 4
    # a run whose shard stage has no pairs trains without them, and says so
    with caplog.at_level("WARNING"):
        bare = train.plan(RunDir.of(str(train_inputs[0])), params)
    assert bare.params["train"]["parallel_share"] == 0.0 and bare.params["train"]["parallel_schedule"] == "constant"
    assert "no translation pairs" in caplog.text


def test_validation_documents_never_become_pairs(tmp_path):
    """A parallel set cut from the corpus's own manuals (the demo's are): a side holding a validation document is
    held out, as one sharing an n-gram with an eval part is, so bits per byte on the validation split are not
    memorised through the pair blocks; a side that repeats a training document still pairs."""
    run_dir = str(tmp_path / "run")
    tok = make_inputs(run_dir, corpus({"en": 60, "fr": 60, "zh": 30}))
    run = RunDir.of(run_dir)
    plain = ShardParams(shard_docs=40, min_valid_docs=4, valid_fraction=0.05)

    def build(params):
        units = plan_shards(run, params)
        refs = [shard_unit(u) for u in units]
        commit_shards(stage_for(run, params, refs), refs)

    def longest(split, lang="en"):
        shards = list_shards(run.stage("shard"), split, [lang])
        docs = [tok.decode(ids.as_py()) for s in shards for ids in read_table(Location(s.uri))["input_ids"]]
        return max(docs, key=len)

    build(plain)
    trained, validation, chinese = longest("train"), longest("valid"), longest("valid", "zh")
    sets = tmp_path / "sets"
    sets.mkdir()
    # the fourth English side quotes a validation document of a language the set does not hold: held out too
    en = [EN[0], f"As the manual says: {validation}", trained, f"{EN[5]} Quote: {chinese}"]
    fr = [FR[0], FR[1], FR[5], FR[6]]
    pl.DataFrame({"id": [0, 1, 2, 3], "en": en, "fr": fr}).write_parquet(sets / "manual.train.parquet")
    build(plain.model_copy(update={"parallel": [str(sets)]}))
    (pairs,) = list_pairs(run.stage("shard"))
    assert usable(read_table(Location(pairs.uri)), "en", "fr").tolist() == [True, False, True, False]
    index = json.loads(run.stage("shard").child("shards.json").open("rb").read())
    assert index["pairs"][0]["valid_overlap"] == {"en": 2, "fr": 0}


def test_valid_overlap_by_ngram_and_by_whole_text():
    """``holdout_ngram`` units shared with a validation document hold a side out; with 0, only a whole copy does."""
    from xlmflow.tasks.shard.pairs import valid_overlap

    sides = {"en": pl.Series([EN[0], EN[1], EN[2]]), "fr": pl.Series([FR[0], FR[1], ""])}
    valid = [pl.Series([f"Nothing to see. {EN[1][:40]}"]), pl.Series([EN[2], "L'administrateur installe"])]
    by_ngram = valid_overlap(sides, iter(valid), 11)
    assert by_ngram["en"].tolist() == [False, True, True] and not by_ngram["fr"].any()
    whole = valid_overlap(sides, iter(valid), 0)
    assert whole["en"].tolist() == [False, False, True] and not whole["fr"].any()
