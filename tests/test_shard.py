"""The shard stage as plain functions: contents, split, determinism, manifest totals, readers, bad input."""

from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_fixtures import corpus, make_inputs

from xlmflow.storage import ManifestError, RunDir, load_output, stable_hashes
from xlmflow.storage import shards as shard_store
from xlmflow.tasks.shard import EOS, ShardParams, commit_shards, plan, shard_unit, stage_for, token_type, tokenize

SIZES = {"en": 400, "fr": 250, "zh": 30}
MASK = (1 << 64) - 1


def reference_hash(text: str, seed: int) -> int:
    """The documented stable hash, one string at a time in plain Python (independent of the numpy code):
    the zero-padded 8-byte little-endian words, each keyed by its position through splitmix64's finaliser,
    summed, and the sum mixed with the length and seed."""

    def mix(h: int) -> int:
        h = (h + 0x9E3779B97F4A7C15) & MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK
        return h ^ (h >> 31)

    data = text.encode()
    total = 0
    for j, i in enumerate(range(0, len(data), 8)):
        word = int.from_bytes(data[i : i + 8].ljust(8, b"\0"), "little")
        total = (total + mix(word ^ mix(((seed & MASK) + j) & MASK))) & MASK
    return mix(mix((seed & MASK) ^ len(data)) ^ total) >> 1


PARAMS = ShardParams(shard_docs=150, min_valid_docs=8, valid_fraction=0.05, row_group_tokens=1500)


def run_stage(run_dir, params=PARAMS):
    run = RunDir.of(run_dir)
    units = plan(run, params)
    refs = [shard_unit(u) for u in units]
    commit_shards(stage_for(run, params, refs), refs)
    return load_output(run.stage("shard"), "shard")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("shard") / "run")
    docs = corpus(SIZES)
    tok = make_inputs(run_dir, docs)
    return run_dir, docs, tok, run_stage(run_dir)


def read_split(run_dir, split):
    files = shard_store.data_files(RunDir.of(run_dir).stage("shard"), split)
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_each_document_is_tag_tokens_eos_and_decodes_back(built):
    run_dir, docs, tok, _ = built
    table = pa.concat_tables([read_split(run_dir, "train"), read_split(run_dir, "valid")])
    assert table.schema.field("input_ids").type == pa.list_(pa.uint16())
    assert table.num_rows == sum(SIZES.values())
    eos = tok.token_to_id(EOS)
    by_id = {f"{lang}-{i}": (lang, t) for lang, texts in docs.items() for i, t in enumerate(texts)}
    for row in table.to_pylist():
        lang, text = by_id[row["doc_id"]]
        ids = row["input_ids"]
        assert row["lang"] == lang and row["n_tokens"] == len(ids)
        assert ids[0] == tok.token_to_id(f"<lang:{lang}>") and ids[-1] == eos and eos not in ids[:-1]
        assert tok.decode(ids[1:-1]) == text


def test_split_by_doc_id_hash_with_minimum_per_language(built):
    run_dir, docs, _, manifest = built
    valid = read_split(run_dir, "valid").to_pydict()
    train = read_split(run_dir, "train").to_pydict()
    assert not set(valid["doc_id"]) & set(train["doc_id"])
    counts = {lang: valid["lang"].count(lang) for lang in SIZES}
    assert counts["zh"] == PARAMS.min_valid_docs  # 5% of 30 is below the minimum
    assert counts["en"] >= PARAMS.min_valid_docs and counts["en"] < 0.15 * SIZES["en"]
    # the split is a function of (doc id, seed) alone for the fraction part; expected ids from the reference hash
    for lang in ("en", "fr"):
        ids = [f"{lang}-{i}" for i in range(SIZES[lang])]
        chosen = {d for d in ids if reference_hash(d, PARAMS.seed) < int(PARAMS.valid_fraction * (1 << 63))}
        assert chosen and chosen <= {d for d, lg in zip(valid["doc_id"], valid["lang"]) if lg == lang}
    # train shards hold shard_docs documents each, the last the rest; order is input order
    for lang in SIZES:
        rows = [f.rows for f in manifest.files if f.path.startswith(f"train/{lang}-")]
        assert all(r == PARAMS.shard_docs for r in rows[:-1]) and 0 < rows[-1] <= PARAMS.shard_docs
    en = [int(d.split("-")[1]) for d, lg in zip(train["doc_id"], train["lang"]) if lg == "en"]
    assert en == sorted(en)


def test_stable_hashes_equal_the_reference_implementation():
    ids = ["", "a", "doc-1", "12345678", "123456789", "é" * 9, "x" * 70, "中文文档"]
    assert stable_hashes(pa.array(ids), 7).tolist() == [reference_hash(t, 7) for t in ids]


def test_stable_hashes_are_stable_seeded_and_spread():
    ids = pa.array([f"doc-{i}" for i in range(20000)] + ["", "a" * 100])
    h = stable_hashes(ids, 0)
    assert h.dtype == np.int64 and (h >= 0).all() and len(set(h.tolist())) == len(h)
    assert np.array_equal(h[:5], stable_hashes(ids.slice(0, 5), 0))  # slices and batch boundaries do not matter
    assert not np.array_equal(h, stable_hashes(ids, 1))
    assert 0.04 < (h < (1 << 63) // 20).mean() < 0.06
    assert stable_hashes(pa.array(["abc"]), 7)[0] == stable_hashes(pa.chunked_array([["x", "abc"]]), 7)[1]
    # pinned: a different value would silently move documents between train and valid
    assert stable_hashes(pa.array(["abc", "", "doc-123456789-xyz"]), 0).tolist() == [
        3768790872726876990,
        6017775124710473527,
        5270578434255116688,
    ]


def test_stable_hashes_cost_follows_bytes_not_the_longest_string():
    """One 40 KB document among 4k short ones must cost about its share of the bytes, not 100x (a fold
    word by word over the batch costs batch size x longest string)."""
    import time

    short = pa.array([f"document number {i} " * 5 for i in range(4096)])
    with_long = pa.array([f"document number {i} " * 5 for i in range(4095)] + ["x" * 40_000])

    best = {"short": 1e9, "long": 1e9}
    for _ in range(15):  # interleaved, best of 15: a busy machine slows both alike
        for name, arr in (("short", short), ("long", with_long)):
            t = time.perf_counter()
            stable_hashes(arr, 0)
            best[name] = min(best[name], time.perf_counter() - t)
    ratio, bytes_ratio = best["long"] / best["short"], with_long.nbytes / short.nbytes
    # ~1.1x here; the word-by-word fold took ~100x
    assert ratio < 4 * bytes_ratio, f"{ratio:.1f}x the time for {bytes_ratio:.2f}x the bytes"
    # a batch larger than one hashing group gives what its slices give
    many = pa.array(["z" * 3000 + str(i) for i in range(5000)])
    assert np.array_equal(stable_hashes(many, 3)[2400:2600], stable_hashes(many.slice(2400, 200), 3))


def test_token_totals_match_manifest_index_and_files(built):
    run_dir, _, _, manifest = built
    stage = RunDir.of(run_dir).stage("shard")
    index = orjson.loads(Path(stage.path, "shards.json").read_bytes())
    assert index["tokenizer"]["sha256"] == load_output(RunDir.of(run_dir).stage("vocab")).file("tokenizer.json").sha256
    assert manifest.upstream["tokenizer/tokenizer.json"] == index["tokenizer"]["sha256"]
    for split in ("train", "valid"):
        table = read_split(run_dir, split)
        for lang in SIZES:
            mine = table.filter(pa.compute.equal(table["lang"], lang))
            tokens = sum(len(x) for x in mine["input_ids"].to_pylist())
            assert manifest.stats["tokens"][split][lang] == tokens == index["totals"][split][lang]["tokens"]
            assert manifest.stats["documents"][split][lang] == mine.num_rows
    files = {f.path: f for f in manifest.files}
    for s in index["shards"]:
        f = files[s["path"]]
        assert (s["rows"], s["bytes"], s["sha256"]) == (f.rows, f.bytes, f.sha256)
        pf = pq.ParquetFile(Path(stage.path, s["path"]))
        groups = [pf.read_row_group(i, columns=["n_tokens"])["n_tokens"].to_pylist() for i in range(pf.num_row_groups)]
        assert sum(map(sum, groups)) == s["tokens"]
        for g in groups[:-1]:  # a row group closes with the document that reaches row_group_tokens
            assert sum(g) >= PARAMS.row_group_tokens > sum(g) - g[-1]
    assert manifest.stats["tokens_total"] == sum(s["tokens"] for s in index["shards"])


def test_two_runs_give_identical_bytes_and_rerun_does_nothing(built, tmp_path):
    run_dir, docs, _, manifest = built
    other = str(tmp_path / "again")
    make_inputs(other, docs)
    again = run_stage(other)
    assert [(f.path, f.sha256) for f in again.files] == [(f.path, f.sha256) for f in manifest.files]
    assert again.fingerprint == manifest.fingerprint
    shard = Path(run_dir, "shard", manifest.files[1].path)
    before = shard.stat().st_mtime_ns
    run_stage(run_dir)
    assert shard.stat().st_mtime_ns == before
    changed = run_stage(other, PARAMS.model_copy(update={"seed": 1}))
    assert {f.sha256 for f in changed.files} != {f.sha256 for f in manifest.files}


def test_loads_with_datasets_and_polars(built, tmp_path):
    import datasets
    import polars as pl

    run_dir, _, _, manifest = built
    stage = RunDir.of(run_dir).stage("shard")
    files = {"train": shard_store.data_files(stage, "train"), "validation": shard_store.data_files(stage, "valid")}
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    for split, name in (("train", "train"), ("valid", "validation")):
        assert ds[name].num_rows == sum(manifest.stats["documents"][split].values())
        assert sum(ds[name]["n_tokens"]) == sum(manifest.stats["tokens"][split].values())
    assert ds["train"].features["input_ids"].feature.dtype == "uint16"
    lf = pl.scan_parquet(str(Path(stage.path, "train", "*", "*.parquet")))
    per_lang = dict(lf.group_by("lang").agg(pl.col("input_ids").list.len().sum()).collect().iter_rows())
    assert per_lang == manifest.stats["tokens"]["train"]


def test_reader_partitions_ranks_and_refuses_corrupt_shards(built, tmp_path):
    import shutil

    run_dir, _, _, manifest = built
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    stage = RunDir.of(str(copy)).stage("shard")
    all_train = shard_store.list_shards(stage, "train")
    for world in (1, 2, 3):
        parts = [shard_store.for_rank(all_train, r, world) for r in range(world)]
        paths = [s.path for p in parts for s in p]
        assert sorted(paths) == sorted(s.path for s in all_train) and len(set(paths)) == len(paths)
        assert all(parts) and parts == [shard_store.for_rank(all_train, r, world) for r in range(world)]
    rows = sum(b.num_rows for r in range(2) for b in shard_store.iter_batches(stage, "train", r, 2, batch_rows=64))
    assert rows == sum(manifest.stats["documents"]["train"].values())
    only_zh = list(shard_store.iter_batches(stage, "valid", langs=["zh"], columns=["lang"]))
    assert {x for b in only_zh for x in b.column("lang").to_pylist()} == {"zh"}
    with pytest.raises(ValueError, match="cannot feed"):
        shard_store.for_rank(all_train, 0, len(all_train) + 1)

    victim = Path(stage.path, all_train[0].path)
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=rf"{all_train[0].path}: sha256 differs"):
        list(shard_store.iter_batches(stage, "train"))
    victim.write_bytes(bytes(data[:-10]))
    with pytest.raises(ManifestError, match=rf"{all_train[0].path}: .*truncated"):
        shard_store.data_files(stage, "train")


def test_text_quoting_special_tokens_stays_text_and_empty_docs_are_dropped(tmp_path):
    docs = corpus({"en": 60, "fr": 30})
    docs["en"][3] = "a document that mentions <|endoftext|> and <lang:fr> in its text"
    docs["en"][4] = ""
    tok = make_inputs(str(tmp_path / "run"), docs)
    m = run_stage(str(tmp_path / "run"), ShardParams(min_valid_docs=2))
    table = pa.concat_tables([read_split(str(tmp_path / "run"), s) for s in ("train", "valid")])
    rows = {r["doc_id"]: r["input_ids"] for r in table.to_pylist()}
    ids = rows["en-3"]
    assert ids.count(tok.token_to_id(EOS)) == 1 and tok.token_to_id("<lang:fr>") not in ids
    assert tok.decode(ids[1:-1]) == docs["en"][3]
    assert "en-4" not in rows and m.stats["empty_dropped"] == 1


def test_language_without_tag_is_skipped_and_bad_input_names_the_file(tmp_path, caplog):
    run_dir = str(tmp_path / "run")
    make_inputs(run_dir, corpus({"en": 40, "fr": 20}), tag_langs=["en"])
    m = run_stage(run_dir, ShardParams(min_valid_docs=2))
    assert m.stats["languages"] == ["en"] and "fr" in caplog.text

    bad = str(tmp_path / "bad")
    make_inputs(bad, corpus({"en": 40}))
    commit_langid_part(bad, pa.table({"text": pa.array(["x"] * 40, pa.large_string()), "lang": ["en"] * 40}))
    with pytest.raises(ValueError, match=r"lang=en/part-00000.parquet: no column 'doc_id'"):
        plan(RunDir.of(bad), ShardParams())
    commit_langid_part(bad, pa.table({"doc_id": ["a", None], "text": pa.array(["x", "y"], pa.large_string())}))
    with pytest.raises(ValueError, match=r"lang=en/part-00000.parquet: row 1 has no doc_id"):
        plan(RunDir.of(bad), ShardParams())


def commit_langid_part(run_dir, table):
    """Recommit the langid stage with ``table`` as its only (English) part."""
    from xlmflow.storage import write_table
    from xlmflow.tasks.common.runtime import Unit, commit_stage, ensure, stage_unit

    run = RunDir.of(run_dir)
    unit = Unit(
        stage="langid",
        name="lang=en",
        out=run.unit("langid", "lang=en", group="clean").uri,
        code_version="test",
        params={"rows": table.to_pylist()},
    )
    ref = ensure(unit, lambda aside: write_table(aside.path("part-00000.parquet"), table))
    commit_stage(stage_unit(run.stage("langid").uri, "langid", [ref], "test", {}), [ref])


def test_token_type_and_tokenize_offsets():
    assert token_type(65536) == pa.uint16() and token_type(65537) == pa.uint32()
    from shard_fixtures import train_tokenizer

    docs = corpus({"en": 20})
    tok, _ = train_tokenizer(docs)
    texts = pa.array(docs["en"][:5] + [None], pa.large_string())
    ids, n = tokenize(tok, texts, 7, 0, pa.uint32())
    assert ids.type == pa.list_(pa.uint32()) and n.tolist()[-1] == 2
    for t, row, k in zip(docs["en"][:5], ids.to_pylist(), n.tolist()):
        assert row == [7] + tok.encode(t, add_special_tokens=False).ids + [0] and k == len(row)
