"""Training batches over real committed shards: rank split, mixture, resume, labels, corruption, epochs."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from shard_fixtures import corpus, make_inputs

from xlmflow.storage import ManifestError, RunDir, load_output
from xlmflow.storage import shards as shard_store
from xlmflow.tasks.shard import EOS, ShardParams, commit_shards, plan, shard_unit, stage_for
from xlmflow.tasks.train.data import BlockLoader, BlockSpec, mixture, valid_blocks

SIZES = {"en": 300, "fr": 200, "zh": 120}
PARAMS = ShardParams(shard_docs=100, min_valid_docs=8, valid_fraction=0.05, row_group_tokens=400)
LANGS = sorted(SIZES)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("train_data") / "run")
    tok = make_inputs(run_dir, corpus(SIZES))
    run = RunDir.of(run_dir)
    refs = [shard_unit(u) for u in plan(run, PARAMS)]
    commit_shards(stage_for(run, PARAMS, refs), refs)
    stage = run.stage(shard_store.STAGE)  # the stage folder's name comes from the reader, not from this test
    tags = {lang: tok.token_to_id(f"<lang:{lang}>") for lang in LANGS}
    return stage, tok, tags, load_output(stage, shard_store.STAGE)


def train_docs(stage, lang):
    """Every train document of ``lang`` as a tuple of token ids, read straight from the shard files."""
    import pyarrow.parquet as pq

    return [
        tuple(ids)
        for s in shard_store.list_shards(stage, "train", [lang])
        for ids in pq.read_table(s.uri, columns=["input_ids"]).column(0).to_pylist()
    ]


def split_docs(tokens, eos):
    ends = np.flatnonzero(tokens == eos) + 1
    return [tuple(d.tolist()) for d in np.split(tokens, ends)[:-1]]


def test_fixture_has_several_train_shards_per_language(built):
    stage, *_ = built
    counts = Counter(s.lang for s in shard_store.list_shards(stage, "train"))
    assert counts == {"en": 3, "fr": 2, "zh": 2}


def test_two_ranks_read_disjoint_documents_covering_the_language_and_agree_on_mixture_and_steps(built):
    stage, tok, tags, _ = built
    eos = tok.token_to_id(EOS)
    for lang in LANGS:
        seen = Counter()
        for rank in range(2):
            loader = BlockLoader(stage, "train", BlockSpec(16, 1, seed=3), rank, 2, langs=[lang], tag_ids=tags)
            n = loader.tokens_available[lang]
            flat = np.concatenate([b["input_ids"][0] for b in loader.batches(-(-n // 16))])[:n]
            docs = split_docs(flat, eos)
            assert sum(map(len, docs)) == n and flat[0] == tags[lang]
            seen.update(docs)
        assert seen == Counter(train_docs(stage, lang))  # a partition: every document exactly once over the ranks
    ranks = [BlockLoader(stage, "train", BlockSpec(8, 4, seed=1), r, 2, tag_ids=tags) for r in range(2)]
    assert ranks[0].probs == ranks[1].probs and ranks[0].tokens_total == ranks[1].tokens_total
    assert ranks[0].tokens_available != ranks[1].tokens_available
    assert [len(list(r.batches(9))) for r in ranks] == [9, 9]
    ranks[1].next_batch()  # a rank that is ahead still stops at max_steps
    assert [len(list(r.batches(12))) for r in ranks] == [3, 2]


def test_mixture_is_tempered_corpus_share_and_blocks_follow_it(built):
    stage, _, tags, manifest = built
    n = manifest.stats["tokens"]["train"]
    total = n["en"] + n["fr"] + n["zh"]
    by_hand = {lang: (n[lang] / total) ** 0.3 for lang in LANGS}
    z = sum(by_hand.values())
    q = {lang: v / z for lang, v in by_hand.items()}
    assert mixture(n, 0.3) == pytest.approx(q, abs=1e-12)
    assert mixture(n, 0.0) == pytest.approx({lang: 1 / 3 for lang in LANGS})
    assert mixture(n, 1.0) == pytest.approx({lang: n[lang] / total for lang in LANGS})
    loader = BlockLoader(stage, "train", BlockSpec(4, 128, alpha=0.3, seed=5), tag_ids=tags)
    assert loader.tokens_total == n and loader.probs == pytest.approx(q)
    ids = np.concatenate([b["lang_ids"][:, 0] for b in loader.batches(40)])  # 5120 blocks: sd of a share < 0.007
    freq = {lang: float(np.mean(ids == i + 1)) for i, lang in enumerate(LANGS)}
    assert freq == pytest.approx(q, abs=0.03)
    assert abs(freq["zh"] - n["zh"] / total) > 0.05  # tempered, not the raw share


def test_resume_from_a_json_state_gives_the_same_batches_even_on_another_rank(built):
    stage, _, tags, _ = built
    spec = BlockSpec(block_size=24, batch_size=3, alpha=0.5, seed=11)
    a = [BlockLoader(stage, "train", spec, r, 2, tag_ids=tags, batch_rows=7) for r in range(2)]
    for stop in (7, 90):  # the second save point is past the end of zh's first epoch on both ranks
        for loader in a:
            while loader.step < stop:
                loader.next_batch()
        state = json.loads(json.dumps(a[0].state_dict()))  # accelerate saves the main process's state only
        for rank in range(2):
            b = BlockLoader(stage, "train", spec, rank, 2, tag_ids=tags, batch_rows=50)
            b.load_state_dict(state)
            assert b.tokens_seen == a[rank].tokens_seen and b.step == stop
            for _ in range(5):
                x, y = a[rank].next_batch(), b.next_batch()
                assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    assert min(loader.effective_epochs()["zh"] for loader in a) > 1.1
    fresh = BlockLoader(stage, "train", spec, 0, 2, tag_ids=tags)
    assert not np.array_equal(fresh.next_batch()["input_ids"], a[0].next_batch()["input_ids"])
    with pytest.raises(ValueError, match="does not match"):
        BlockLoader(stage, "train", spec, 0, 1, tag_ids=tags).load_state_dict(state)


def test_labels_mask_tags_only_and_lang_ids_name_the_block_language(built):
    stage, _, tags, _ = built
    loader = BlockLoader(stage, "train", BlockSpec(block_size=32, batch_size=8, seed=2))  # tags found in the data
    assert loader.tag_ids == tags and loader.langs == LANGS
    masked = 0
    for batch in loader.batches(10):
        ids, labels, lang_ids = batch["input_ids"], batch["labels"], batch["lang_ids"]
        assert ids.shape == labels.shape == lang_ids.shape == (8, 32)
        assert ids.dtype == labels.dtype == lang_ids.dtype == np.int64
        is_tag = np.isin(ids, list(tags.values()))
        assert (labels[is_tag] == -100).all() and np.array_equal(labels[~is_tag], ids[~is_tag])
        masked += int(is_tag.sum())
        for row, lang_row in zip(ids, lang_ids):
            assert (lang_row == lang_row[0]).all() and 1 <= lang_row[0] <= 3
            other = [t for lang, t in tags.items() if lang != LANGS[lang_row[0] - 1]]
            assert not np.isin(row, other).any()  # only the row's own language tag can appear
    assert masked > 0


def test_a_corrupted_shard_is_refused_naming_the_file(built, tmp_path):
    stage, *_ = built
    copy = tmp_path / "shards"
    shutil.copytree(stage.path, copy)
    victim = shard_store.list_shards(str(copy), "train", ["fr"])[1]
    path = Path(copy, victim.path)
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=rf"{victim.path}: sha256 differs"):
        BlockLoader(str(copy), "train", BlockSpec(8, 2))
    BlockLoader(str(copy), "train", BlockSpec(8, 2), langs=["en", "zh"])  # other languages are not read


def test_effective_epochs_pass_one_and_the_stream_wraps(built):
    stage, tok, tags, _ = built
    loader = BlockLoader(stage, "train", BlockSpec(64, 16, alpha=0.0, seed=4), 1, 2, tag_ids=tags)
    while loader.effective_epochs()["zh"] <= 1.2:
        loader.next_batch()
    ep = loader.effective_epochs()
    assert ep == {lang: loader.tokens_seen[lang] / loader.tokens_available[lang] for lang in LANGS}
    assert ep["zh"] > 1.2 and ep["en"] < ep["zh"]
    assert sum(loader.tokens_seen.values()) == loader.step * 16 * 64
    zh = BlockLoader(stage, "train", BlockSpec(16, 1, seed=0), langs=["zh"], tag_ids=tags)
    n = zh.tokens_available["zh"]
    flat = np.concatenate([b["input_ids"][0] for b in zh.batches(-(-4 * n // 16))])
    epochs = [split_docs(flat[e * n : (e + 1) * n], tok.token_to_id(EOS)) for e in range(4)]
    assert all(Counter(docs) == Counter(train_docs(stage, "zh")) for docs in epochs)  # each epoch: every doc once
    assert len({tuple(docs) for docs in epochs}) > 1  # shard order reshuffled per epoch (seed 0: by epoch 1)
    assert zh.effective_epochs()["zh"] >= 4.0
    with pytest.raises(ValueError, match=r"language 'zh' has \d+ train documents, too few for 200 ranks"):
        BlockLoader(stage, "train", BlockSpec(8, 2), 150, 200)  # en and fr have over 150 documents, zh fewer


def test_valid_blocks_pack_one_language_and_pad_the_tail(built):
    stage, tok, tags, manifest = built
    tokens = manifest.stats["tokens"]["valid"]["zh"]
    v = valid_blocks(stage, "zh", 50, 1000, tag_ids=tags, lang_id=3)
    n = -(-tokens // 50)
    assert v["input_ids"].shape == (n, 50) and (v["lang_ids"] == 3).all()
    flat, labels = v["input_ids"].ravel(), v["labels"].ravel()
    assert (labels[tokens:] == -100).all() and (flat[tokens:] == 0).all()
    assert (labels[:tokens][flat[:tokens] == tags["zh"]] == -100).all() and (labels[:tokens] == -100).sum() > 0
    assert len(split_docs(flat[:tokens], tok.token_to_id(EOS))) == manifest.stats["documents"]["valid"]["zh"]
    few = valid_blocks(stage, "zh", 50, 2)
    assert few["input_ids"].shape == (2, 50) and np.array_equal(few["labels"], v["labels"][:2])
