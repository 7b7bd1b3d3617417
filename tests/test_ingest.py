"""Ingest as plain functions: every reader, normalisation, stable ids, every bad input."""

import gzip
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from xlmflow.storage import RunDir, load_output, read_table
from xlmflow.tasks.ingest import IngestParams, Source, ingest_unit, plan
from xlmflow.tasks.ingest.readers import InputError


def ingest(run_dir, *sources, bad_records="quarantine"):
    """Plan and run every unit without Prefect; returns (documents, quarantined) tables."""
    run = RunDir.of(run_dir)
    units = plan(run, IngestParams(sources=list(sources), bad_records=bad_records))
    docs, bad = [], []
    for u in units:
        ref = ingest_unit(u)
        m = load_output(RunDir.of(run_dir).unit("ingest", u.name), "ingest")
        assert ref.fingerprint == m.fingerprint
        for f in m.files:
            t = read_table(RunDir.of(run_dir).unit("ingest", u.name).child(f.path))
            (bad if f.path.startswith("quarantine") else docs).append(pl.from_arrow(t))
    return pl.concat(docs), pl.concat(bad)


def jsonl(path, records, opener=open):
    with opener(path, "wb") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode() + b"\n")
    return str(path)


# ---------------------------------------------------------------- readers
def test_text_one_document_per_line(tmp_path, run_dir):
    p = tmp_path / "a.txt"
    p.write_text("\ufeffBonjour le monde\n\nCafe\u0301 au lait\x07!\r\nsecond\tline\n", encoding="utf-8")
    docs, bad = ingest(run_dir, Source(path=str(p), lang="fr"))
    assert docs["text"].to_list() == ["Bonjour le monde", "Café au lait!", "second\tline"]
    assert docs["record"].to_list() == [1, 3, 4] and set(docs["claimed_lang"]) == {"fr"}
    assert docs["source"].unique().to_list() == ["a.txt"] and bad.height == 0


def test_text_paragraph_mode(tmp_path, run_dir):
    p = tmp_path / "b.txt"
    p.write_text("line one\nline two\n\n\npara two\n", encoding="utf-8")
    docs, _ = ingest(run_dir, Source(path=str(p), paragraphs=True))
    assert docs["text"].to_list() == ["line one\nline two", "para two"]
    assert docs["record"].to_list() == [1, 5]


@pytest.mark.parametrize(
    "suffix,opener", [(".jsonl", open), (".jsonl.gz", gzip.open), (".jsonl.zst", lambda p, m: zstandard.open(p, m))]
)
def test_jsonl_plain_and_compressed(tmp_path, run_dir, suffix, opener):
    p = jsonl(
        tmp_path / f"c{suffix}",
        [{"content": "Hallo Welt", "language": "de", "url": "u1"}, {"content": "Hola", "language": "es"}],
        opener,
    )
    docs, _ = ingest(run_dir, Source(path=p, text_field="content", lang_field="language"))
    assert docs["text"].to_list() == ["Hallo Welt", "Hola"]
    assert docs["claimed_lang"].to_list() == ["de", "es"]
    assert json.loads(docs["meta"][0]) == {"url": "u1"} and docs["meta"][1] is None


def test_parquet_with_configurable_column(tmp_path, run_dir):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["Привет", "мир"], "lang": ["ru", "ru"], "score": [1.5, 2.0]}), p)
    docs, _ = ingest(run_dir, Source(path=str(p), text_field="body"))
    assert docs["text"].to_list() == ["Привет", "мир"] and docs["claimed_lang"].to_list() == ["ru", "ru"]
    assert json.loads(docs["meta"][1]) == {"score": 2.0} and docs["record"].to_list() == [0, 1]


def test_datasets_saved_to_disk(tmp_path, run_dir):
    import datasets

    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["你好世界", "再见"], "lang": ["zh", "zh"]}),
            "test": datasets.Dataset.from_dict({"text": ["谢谢"], "lang": ["zh"]}),
        }
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    docs, _ = ingest(run_dir, Source(path=str(tmp_path / "ds")))
    assert sorted(docs["text"].to_list()) == sorted(["你好世界", "再见", "谢谢"])
    only_test, _ = ingest(run_dir + "2", Source(path=str(tmp_path / "ds"), split="test"))
    assert only_test["text"].to_list() == ["谢谢"]


def test_load_dataset_name_with_local_files(tmp_path, run_dir):
    """``hf:NAME`` goes through datasets.load_dataset (a hub name online); here a local data folder."""
    (tmp_path / "hub").mkdir()
    jsonl(tmp_path / "hub" / "train.jsonl", [{"text": "مرحبا بالعالم", "lang": "ar"}])
    docs, _ = ingest(run_dir, Source(path=f"hf:{tmp_path / 'hub'}", split="train"))
    assert docs["text"].to_list() == ["مرحبا بالعالم"] and docs["claimed_lang"].to_list() == ["ar"]


def test_fsspec_url_folder_and_glob(tmp_path, run_dir):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus/x/one.txt", b"uno\ndos\n")
    fs.pipe("/corpus/x/two.jsonl", b'{"text": "tres"}\n')
    fs.pipe("/corpus/x/README", b"not an input")
    docs, _ = ingest(run_dir, Source(path="memory://corpus/x"))
    assert sorted(docs["text"].to_list()) == ["dos", "tres", "uno"]
    globbed, _ = ingest(run_dir + "g", Source(path="memory://corpus/x/*.txt"))
    assert globbed["text"].to_list() == ["uno", "dos"]
    # and the run directory itself may live on another file system
    (tmp_path / "local.txt").write_text("uno\ndos\n")
    docs2, _ = ingest("memory://runs/r1", Source(path=f"file://{tmp_path}/local.txt"))
    assert docs2["text"].to_list() == ["uno", "dos"]


def test_doc_ids_are_stable_and_distinct(tmp_path, run_dir):
    p = jsonl(tmp_path / "e.jsonl", [{"text": t} for t in ["a", "b", "a"]])
    docs, _ = ingest(run_dir, Source(path=p))
    again, _ = ingest(run_dir + "b", Source(path=p))
    assert docs["doc_id"].n_unique() == 3 and docs["doc_id"].to_list() == again["doc_id"].to_list()


# ---------------------------------------------------------------- bad input
def test_missing_path_names_it(tmp_path, run_dir):
    with pytest.raises(InputError, match=r"nope\.jsonl.*no such file or folder"):
        ingest(run_dir, Source(path=str(tmp_path / "nope.jsonl")))


def test_glob_matching_nothing(tmp_path, run_dir):
    with pytest.raises(InputError, match="matched no readable input files"):
        ingest(run_dir, Source(path=str(tmp_path / "*.jsonl")))


def test_empty_file_is_an_error(tmp_path, run_dir):
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.jsonl: no documents found"):
        ingest(run_dir, Source(path=str(p)))


def test_invalid_utf8_text_is_quarantined_with_line(tmp_path, run_dir):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good line\nbad \xff\xfe line\nanother good\n")
    docs, bad = ingest(run_dir, Source(path=str(p)))
    assert docs["text"].to_list() == ["good line", "another good"]
    assert bad["record"].to_list() == [2] and "invalid UTF-8" in bad["reason"][0]
    with pytest.raises(InputError, match=r"bad\.txt: invalid UTF-8 at byte 4 of line 2.*quarantine"):
        ingest(run_dir + "s", Source(path=str(p)), bad_records="fail")


def test_malformed_json_line_is_quarantined_not_the_file(tmp_path, run_dir):
    p = jsonl(
        tmp_path / "m.jsonl",
        [{"text": "ok 1"}, '{"text": "unterminated', "[1, 2]", {"body": "no text"}, {"text": 5}, {"text": "ok 2"}],
    )
    docs, bad = ingest(run_dir, Source(path=p))
    assert docs["text"].to_list() == ["ok 1", "ok 2"]
    reasons = dict(zip(bad["record"].to_list(), bad["reason"].to_list()))
    assert set(reasons) == {2, 3, 4, 5}
    assert "malformed JSON" in reasons[2] and "expected a JSON object" in reasons[3]
    assert "'text' is missing" in reasons[4] and "not a string" in reasons[5]
    with pytest.raises(InputError, match=r"m\.jsonl: line 2: malformed JSON"):
        ingest(run_dir + "s", Source(path=p), bad_records="fail")


def test_invalid_utf8_in_jsonl(tmp_path, run_dir):
    p = tmp_path / "u.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    docs, bad = ingest(run_dir, Source(path=str(p)))
    assert docs["text"].to_list() == ["fine"] and bad["record"].to_list() == [2]
    assert "invalid UTF-8" in bad["reason"][0] and "caf" in bad["raw"][0]


def test_parquet_without_text_column_lists_columns(tmp_path, run_dir):
    p = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["x"]}), p)
    with pytest.raises(InputError, match=r"nocol\.parquet: no column 'text' \(columns: body\).*text_field"):
        ingest(run_dir, Source(path=str(p)))


def test_not_parquet_at_all(tmp_path, run_dir):
    p = tmp_path / "fake.parquet"
    p.write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match=r"fake\.parquet: not a readable Parquet file"):
        ingest(run_dir, Source(path=str(p)))


def test_null_text_in_parquet_is_quarantined(tmp_path, run_dir):
    p = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"]}), p)
    docs, bad = ingest(run_dir, Source(path=str(p)))
    assert docs["text"].to_list() == ["a", "c"] and bad["record"].to_list() == [1]


def test_moving_the_corpus_changes_no_fingerprint(tmp_path):
    """Keys hold content and names within a source, never absolute paths."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "en.txt").write_text("same\ntext\n", encoding="utf-8")
    here = plan(RunDir.of(str(tmp_path / "run")), IngestParams(sources=[Source(path=str(tmp_path / "a"))]))
    moved = plan(RunDir.of(str(tmp_path / "run")), IngestParams(sources=[Source(path=str(tmp_path / "b"))]))
    assert [u.fingerprint for u in here] == [u.fingerprint for u in moved]
    assert [u.name for u in here] == [u.name for u in moved]


def test_same_file_name_in_two_sources_gets_distinct_units_and_ids(tmp_path, run_dir):
    for d, text in (("a", "first"), ("b", "second")):
        (tmp_path / d).mkdir()
        (tmp_path / d / "en.txt").write_text(text + "\n", encoding="utf-8")
    docs, _ = ingest(run_dir, Source(path=str(tmp_path / "a")), Source(path=str(tmp_path / "b")))
    assert sorted(docs["text"].to_list()) == ["first", "second"] and docs["doc_id"].n_unique() == 2
    with pytest.raises(InputError, match="named by two sources"):
        ingest(run_dir + "x", Source(path=str(tmp_path / "a")), Source(path=str(tmp_path / "a" / "en.txt")))


# ---------------------------------------------------------------- ids, bounded quarantine, hub revisions
def test_dataset_dict_splits_get_distinct_doc_ids(tmp_path, run_dir):
    """Row 0 of "train" and row 0 of "test" are different records: numbering goes on across splits."""
    import datasets

    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["un", "deux", "trois"]}),
            "test": datasets.Dataset.from_dict({"text": ["quatre", "cinq"]}),
        }
    ).save_to_disk(str(tmp_path / "ds"))
    docs, _ = ingest(run_dir, Source(path=str(tmp_path / "ds")))
    assert docs.height == 5 and docs["doc_id"].n_unique() == 5
    assert sorted(docs["record"].to_list()) == [0, 1, 2, 3, 4]


def test_record_numbers_that_do_not_rise_are_a_clear_error():
    import numpy as np

    from xlmflow.tasks.ingest import check_rising

    assert check_rising(np.array([3, 4, 9]), 2, "x.txt") == 9
    with pytest.raises(RuntimeError, match=r"x\.txt: record numbers do not rise .*doc ids would repeat"):
        check_rising(np.array([0, 1]), 1, "x.txt")
    with pytest.raises(RuntimeError, match="do not rise"):
        check_rising(np.array([5, 5]), -1, "x.txt")


def test_bad_records_are_handed_on_in_bounded_batches(tmp_path, run_dir, monkeypatch):
    """A file of bad records streams through: no batch holds more than BAD_ROWS of them."""
    import io

    from xlmflow.tasks.ingest import readers

    monkeypatch.setattr(readers, "BAD_ROWS", 10)
    data = b"".join(b"{not json %d\n" % i for i in range(95)) + b'{"text": "the only good one"}\n'
    got = list(readers.read_jsonl(io.BytesIO(data), "x.jsonl", "text", "lang", 8192))
    assert [len(b.bad) for b in got] == [10] * 9 + [5] and all(len(b.text) == 0 for b in got[:-1])
    assert got[-1].text == ["the only good one"]
    p = tmp_path / "mostly-bad.jsonl"
    p.write_bytes(data)
    docs, bad = ingest(run_dir, Source(path=str(p)))
    assert docs["text"].to_list() == ["the only good one"] and bad["record"].to_list() == list(range(1, 96))


class FakeHub:
    """huggingface_hub.HfApi stand-in: dataset_info(name).sha is the current commit; counts the calls."""

    sha = "a" * 40
    calls = 0

    def dataset_info(self, name, timeout=None):
        FakeHub.calls += 1
        return type("Info", (), {"sha": FakeHub.sha})()


def test_hub_dataset_without_revision_is_keyed_by_its_current_commit(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    run = RunDir.of(str(tmp_path / "run"))
    source = Source(path="hf:someone/corpus", split="train")
    FakeHub.sha = "a" * 40
    (first,) = plan(run, IngestParams(sources=[source]))
    assert first.params["revision"] == "a" * 40, "the commit read is recorded in the unit's params"
    FakeHub.sha = "b" * 40  # a new upstream version
    (second,) = plan(run, IngestParams(sources=[source]))
    assert second.fingerprint != first.fingerprint and second.params["revision"] == "b" * 40
    calls = FakeHub.calls
    pinned = Source(path="hf:someone/corpus", split="train", revision="v1.0")
    (a,) = plan(run, IngestParams(sources=[pinned]))
    FakeHub.sha = "c" * 40
    (b,) = plan(run, IngestParams(sources=[pinned]))
    assert FakeHub.calls == calls, "an explicit revision is used as is"
    assert a.params["revision"] == "v1.0"
    assert a.fingerprint == b.fingerprint


def test_hub_dataset_offline_without_revision_asks_to_pin_one(tmp_path):
    """Tests run with HF_HUB_OFFLINE=1: the current commit cannot be known."""
    with pytest.raises(InputError, match=r"hf:someone/corpus: cannot resolve .*current commit.*pin revision"):
        plan(RunDir.of(str(tmp_path / "run")), IngestParams(sources=[Source(path="hf:someone/corpus")]))
    (unit,) = plan(
        RunDir.of(str(tmp_path / "run")), IngestParams(sources=[Source(path="hf:someone/corpus", revision="main")])
    )
    assert unit.params["revision"] == "main"
