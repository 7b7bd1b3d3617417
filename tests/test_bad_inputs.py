"""A catalogue of bad inputs, one test per kind: each ends in one clear error naming the file (and the
record or line) and what to do, or in the record quarantined with its reason counted in the stage stats.

Plain task functions throughout (no Prefect), except the CLI test, which checks what a user sees.
"""

import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from helpers import write_langid_stage
from shard_fixtures import corpus
from test_ingest import jsonl

from xlmflow.flows.config import PipelineConfig
from xlmflow.storage import ManifestError, RunDir, load_output, read_manifest, read_table
from xlmflow.storage import shards as shard_store
from xlmflow.tasks import shard, train, vocab
from xlmflow.tasks.common.parallel_sets import read_set
from xlmflow.tasks.ingest import IngestParams, Source, ingest_unit, plan, readers
from xlmflow.tasks.ingest.readers import InputError
from xlmflow.tasks.train import loop as train_loop

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00\x90\x91h6"


def run_ingest(run_dir, *sources, **params):
    """Plan and run every unit: (documents, quarantined records, summed stats)."""
    run = RunDir.of(run_dir)
    docs, bad, stats = [], [], {"documents": 0, "quarantined": 0}
    for u in plan(run, IngestParams(sources=list(sources), **params)):
        ingest_unit(u)
        loc = run.unit("ingest", u.name)
        m = load_output(loc, "ingest")
        stats = {k: stats[k] + m.stats[k] for k in stats}
        for f in m.files:
            rows = read_table(loc.child(f.path)).to_pylist()
            (bad if f.path.startswith("quarantine") else docs).extend(rows)
    return docs, bad, stats


# ---------------------------------------------------------------- files and folders
def test_nonexistent_path(tmp_path, run_dir):
    with pytest.raises(InputError, match=r"nope\.txt'?: no such file or folder; check the path"):
        run_ingest(run_dir, Source(path=str(tmp_path / "nope.txt")))


def test_permission_denied_is_simulated_and_named(tmp_path, run_dir, monkeypatch):
    """Tests run as root, where chmod 000 stops nothing: opening the file raises PermissionError instead."""
    import fsspec.implementations.local as local

    from xlmflow.storage import fingerprint

    p = tmp_path / "secret.txt"
    p.write_text("hello\n")

    def denied(path, *args, **kwargs):
        if str(path).endswith("secret.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(fingerprint, "open", denied, raising=False)  # the content hash when planning
    real_open = local.LocalFileSystem._open
    monkeypatch.setattr(
        local.LocalFileSystem,
        "_open",
        lambda self, path, *a, **kw: (
            denied(path) if str(path).endswith("secret.txt") else real_open(self, path, *a, **kw)
        ),
    )
    with pytest.raises(InputError, match=r"secret\.txt: cannot be read .*Permission denied.*check its permissions"):
        run_ingest(run_dir, Source(path=str(p)))
    monkeypatch.undo()
    units = plan(RunDir.of(run_dir), IngestParams(sources=[Source(path=str(p))]))
    monkeypatch.setattr(local.LocalFileSystem, "_open", lambda self, path, *a, **kw: denied(path))
    with pytest.raises(InputError, match=r"secret\.txt: cannot be read .*check its permissions"):
        ingest_unit(units[0])  # readable when planned, not any more when read


def test_folder_with_no_matching_files(tmp_path, run_dir):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README").write_text("not an input")
    (tmp_path / "docs" / "notes.md").write_text("# nor this")
    with pytest.raises(InputError, match=r"docs'?: matched no readable input files \(.*\.jsonl.*\.txt"):
        run_ingest(run_dir, Source(path=str(tmp_path / "docs")))


@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl", "blank.txt"])
def test_empty_file(tmp_path, run_dir, name):
    p = tmp_path / name
    p.write_bytes(b"\n\n  \n" if name.startswith("blank") else b"")
    with pytest.raises(InputError, match=re.escape(name) + ": no documents found; check the format"):
        run_ingest(run_dir, Source(path=str(p)))


# ---------------------------------------------------------------- encodings and binary data
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_invalid_utf8_is_quarantined_with_its_line(tmp_path, run_dir, suffix):
    p = tmp_path / f"latin1{suffix}"
    good, bad_line = ("fine", "caf\xe9") if suffix == ".txt" else ('{"text": "fine"}', '{"text": "caf\xe9"}')
    p.write_bytes(f"{good}\n{bad_line}\n{good}\n".encode("latin-1"))
    docs, bad, stats = run_ingest(run_dir, Source(path=str(p)))
    assert [d["text"] for d in docs] == ["fine", "fine"]
    assert stats["quarantined"] == 1 and bad[0]["record"] == 2 and "invalid UTF-8" in bad[0]["reason"]
    assert "line 2" in bad[0]["reason"] and "caf" in bad[0]["raw"]


@pytest.mark.parametrize(
    "encoding,message",
    [("utf-16", "byte order mark"), ("utf-16-be", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "byte order mark")],
)
def test_utf16_text_asks_for_utf8(tmp_path, run_dir, encoding, message):
    p = tmp_path / "windows.txt"
    text = "Bonjour le monde\nSecond line of the file\n" * 5
    p.write_bytes(text.encode(encoding))  # utf-16 and utf-32 write a BOM, utf-16-be/-le none
    with pytest.raises(InputError, match=rf"windows\.txt: .*{message}.*convert it to UTF-8"):
        run_ingest(run_dir, Source(path=str(p)))


@pytest.mark.parametrize(
    "what,data,message",
    [
        ("png", PNG + bytes(range(256)) * 8, "a PNG image, not UTF-8 text"),
        ("random", random.Random(0).randbytes(20_000), "looks like binary data"),
        ("gzip", gzip.compress(b"hello world\n" * 100), r"gzip-compressed data \(name it \.gz\)"),
        ("nuls", b"abc\x00\x00\x00\x00defgh\x00\x00\x00" * 100, "looks like binary data .*NUL bytes"),
    ],
)
def test_binary_file_named_txt_is_refused(tmp_path, run_dir, what, data, message):
    p = tmp_path / f"{what}.txt"
    p.write_bytes(data)
    with pytest.raises(InputError, match=rf"{what}\.txt: .*{message}"):
        run_ingest(run_dir, Source(path=str(p)))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet"])
def test_nul_bytes_in_text_are_quarantined(tmp_path, run_dir, suffix):
    texts = ["clean one", "dirty\x00text", "clean two"]
    p = tmp_path / f"nul{suffix}"
    if suffix == ".txt":
        p.write_bytes("\n".join(texts).encode() + b"\n")
    elif suffix == ".jsonl":
        jsonl(p, [{"text": t} for t in texts])  # the JSON escape \u0000
    else:
        pq.write_table(pa.table({"text": texts}), p)
    docs, bad, stats = run_ingest(run_dir, Source(path=str(p)))
    assert [d["text"] for d in docs] == ["clean one", "clean two"]
    unit = "row 1" if suffix == ".parquet" else "line 2"
    assert stats["quarantined"] == 1 and bad[0]["reason"].startswith(f"{unit}: the text holds NUL bytes")


# ---------------------------------------------------------------- compressed files
def test_truncated_gzip(tmp_path, run_dir):
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"text": "some words here"}\n' * 5000)[:300])
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz: unreadable .*truncated"):
        run_ingest(run_dir, Source(path=str(p)))


def test_truncated_zstd(tmp_path, run_dir):
    """fsspec's zstandard reader ends quietly inside a frame; ours says the file is truncated."""
    data = b"".join(json.dumps({"text": f"line {i} " * 8}).encode() + b"\n" for i in range(20_000))
    whole = zstandard.ZstdCompressor().compress(data)
    p = tmp_path / "cut.jsonl.zst"
    p.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut\.jsonl\.zst: unreadable \(the zstd stream ends inside a frame"):
        run_ingest(run_dir, Source(path=str(p)))
    (tmp_path / "two-frames.jsonl.zst").write_bytes(whole + zstandard.ZstdCompressor().compress(b'{"text": "x"}\n'))
    docs, _, _ = run_ingest(run_dir + "2", Source(path=str(tmp_path / "two-frames.jsonl.zst")))
    assert len(docs) == 20_001, "a complete multi-frame file is read whole"


# ---------------------------------------------------------------- records
def test_malformed_json_line_is_quarantined(tmp_path, run_dir):
    p = jsonl(tmp_path / "m.jsonl", [{"text": "ok"}, '{"text": "unterminated', "[1, 2]", {"text": "ok too"}])
    docs, bad, stats = run_ingest(run_dir, Source(path=p))
    assert len(docs) == 2 and stats["quarantined"] == 2
    assert bad[0]["reason"].startswith("line 2: malformed JSON") and "expected a JSON object" in bad[1]["reason"]
    with pytest.raises(InputError, match=r"m\.jsonl: line 2: malformed JSON.*bad_records='quarantine'"):
        run_ingest(run_dir + "s", Source(path=p), bad_records="fail")


def test_json_without_the_text_field(tmp_path, run_dir):
    some = jsonl(tmp_path / "some.jsonl", [{"text": "ok"}, {"body": "elsewhere", "id": 3}])
    docs, bad, stats = run_ingest(run_dir, Source(path=some))
    assert len(docs) == 1 and stats["quarantined"] == 1
    assert bad[0]["reason"] == (
        "line 2: field 'text' is missing (keys: body, id); set text_field to the field holding the text"
    )
    every = jsonl(tmp_path / "every.jsonl", [{"body": f"doc {i}"} for i in range(5)])
    with pytest.raises(InputError, match=r"every\.jsonl: none of its 5 records could be read \(first: line 1: field"):
        run_ingest(run_dir + "e", Source(path=every))


def test_parquet_without_the_text_column(tmp_path, run_dir):
    p = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"body": ["x"], "lang": ["en"]}), p)
    with pytest.raises(InputError, match=r"cols\.parquet: no column 'text' \(columns: body, lang\).*--text-field"):
        run_ingest(run_dir, Source(path=str(p)))


def test_text_column_of_the_wrong_type(tmp_path, run_dir):
    p = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), p)
    with pytest.raises(InputError, match=r"ints\.parquet: column 'text' is int64, not text; pick the column"):
        run_ingest(run_dir, Source(path=str(p)))
    j = jsonl(tmp_path / "ints.jsonl", [{"text": "fine"}, {"text": 5}, {"text": ["a", "list"]}])
    _, bad, stats = run_ingest(run_dir + "j", Source(path=j))
    assert stats["quarantined"] == 2 and "'text' is a int, not a string" in bad[0]["reason"]


def test_50_mb_single_line_is_one_document(tmp_path, run_dir):
    p = tmp_path / "huge.txt"
    line = ("word " * 10_000_000).encode()  # 50 MB, no newline: read in blocks, joined once
    p.write_bytes(b"short one\n" + line)
    docs, _, stats = run_ingest(run_dir, Source(path=str(p)))
    assert stats["documents"] == 2 and len(docs[1]["text"]) == len(line) and docs[1]["record"] == 2


def test_overlong_line_is_quarantined_unread(tmp_path, run_dir, monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1 << 20)
    monkeypatch.setattr(readers, "BLOCK_BYTES", 1 << 18)
    p = tmp_path / "long.jsonl"
    p.write_bytes(b'{"text": "before"}\n{"text": "' + b"x" * (3 << 20) + b'"}\n{"text": "after"}\n')
    docs, bad, stats = run_ingest(run_dir, Source(path=str(p)))
    assert [d["text"] for d in docs] == ["before", "after"] and [d["record"] for d in docs] == [1, 3]
    assert stats["quarantined"] == 1 and bad[0]["reason"].startswith("line 2: longer than 1 MB, not read; split")


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "section,message",
    [
        ({"langid": {"keep_langs": ["en", "xx"]}}, r"langid\.keep_langs: 'xx' is not an ISO 639-1 language code"),
        ({"langid": {"keep_langs": ["english"]}}, r"langid\.keep_langs: 'english' is not a language code"),
        ({"langid": {"thresholds": {"EN": 0.3}}}, r"langid\.thresholds: 'EN' is not a language code"),
        ({"ingest": {"sources": [{"path": "x", "lang": "french"}]}}, r"ingest\.sources\[0\]\.lang = 'french'"),
    ],
)
def test_unknown_language_code_in_config(section, message):
    with pytest.raises(ValueError, match=rf"^config: {message}"):
        PipelineConfig.model_validate(section)


def test_language_codes_the_lid_model_uses_are_accepted():
    cfg = PipelineConfig.model_validate(
        {"langid": {"keep_langs": ["en", "sh", "ceb", "als", "eng_Latn"], "thresholds": {"yue": 0.4}}}
    )
    assert cfg.langid.keep_langs == ["en", "sh", "ceb", "als", "eng_Latn"]


@pytest.mark.parametrize(
    "section,message",
    [
        ({"vocab": {"vocab_size": -5}}, r"vocab\.vocab_size = -5: Input should be greater than or equal to 300"),
        ({"shard": {"valid_fraction": 2.0}}, r"shard\.valid_fraction = 2\.0: Input should be less than or equal"),
        ({"train": {"max_steps": 0}}, r"train\.max_steps = 0: Input should be greater than or equal to 1"),
        ({"train": {"beta2": 1.5}}, r"train\.beta2 = 1\.5: Input should be less than 1"),
        ({"langid": {"threshold": 1.5}}, r"langid\.threshold = 1\.5: a probability, between 0 and 1"),
        ({"langid": {"thresholds": {"hr": -0.1}}}, r"langid\.thresholds\.hr = -0\.1: a probability"),
        ({"ingest": {"part_mb": 0}}, r"ingest\.part_mb = 0: Input should be greater than or equal to 1"),
    ],
)
def test_negative_or_absurd_values(section, message):
    with pytest.raises(ValueError, match=rf"^config: {message}"):
        PipelineConfig.model_validate(section)


def test_unknown_key_in_a_config_file(tmp_path):
    p = tmp_path / "xlmflow.toml"
    p.write_text('[langid]\nkeep_lang = ["en"]\n')
    with pytest.raises(
        ValueError, match=r"xlmflow\.toml: unknown key 'langid\.keep_lang'; check its spelling.*keep_langs"
    ):
        PipelineConfig.load(p)
    p.write_text("[lang_id]\nthreshold = 0.3\n")
    with pytest.raises(
        ValueError,
        match=r"xlmflow\.toml: unknown key 'lang_id'.*\(known here: evaluate, finetune, incremental, ingest, langid",
    ):
        PipelineConfig.load(p)
    p.write_text("[langid\nthreshold = 0.3\n")
    with pytest.raises(ValueError, match=r"xlmflow\.toml: not valid TOML \(.*line 1.*\); fix the file"):
        PipelineConfig.load(p)


def test_ragged_parallel_tsv_names_file_and_line(tmp_path):
    from xlmflow.storage import Location

    p = tmp_path / "pairs.tsv"
    p.write_text("id\ten\tfr\n1\thello\tbonjour\n2\tworld\n3\tthree\ttrois\n")
    with pytest.raises(ValueError, match=r"pairs\.tsv: unreadable: line 3 has 2 tab-separated fields, the header has"):
        read_set(Location.of(str(p)))


# ---------------------------------------------------------------- committed stages changed behind our back
@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Committed langid, vocab (the real stage) and shard stages, copied by each test that changes them."""
    root = tmp_path_factory.mktemp("stages") / "run"
    write_langid_stage(str(root), corpus({"en": 60, "fr": 40}))
    run = RunDir.of(str(root))
    vocab.build_vocab(vocab.plan(run, VOCAB))
    refs = [shard.shard_unit(u) for u in shard.plan(run, SHARD)]
    shard.commit_shards(shard.stage_for(run, SHARD, refs), refs)
    return root


VOCAB = vocab.VocabParams(vocab_size=300, report_docs=20, align_min_df=2)
SHARD = shard.ShardParams(shard_docs=30, min_valid_docs=4, valid_fraction=0.1, row_group_tokens=500)


@pytest.fixture
def copied(stages, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(stages, run_dir)
    return run_dir


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_stage_manifest(copied):
    manifest = copied / "shard" / "_manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])  # a manifest cut short
    with pytest.raises(ManifestError, match=r"shard/_manifest\.json: unreadable manifest .*delete the folder"):
        read_manifest(RunDir.of(str(copied)).stage("shard"))
    with pytest.raises(ManifestError, match=r"shard/_manifest\.json: unreadable manifest"):
        train.plan(RunDir.of(str(copied)), train.TrainParams())
    run = RunDir.of(str(copied))  # the next shard run treats it as no output and commits the stage again
    refs = [shard.shard_unit(u) for u in shard.plan(run, SHARD)]
    shard.commit_shards(shard.stage_for(run, SHARD, refs), refs)
    assert load_output(run.stage("shard"), "shard").stage == "shard"


def test_shard_whose_checksum_no_longer_matches(copied):
    run = RunDir.of(str(copied))
    first = sorted((copied / "shard" / "train").rglob("*.parquet"))[0]
    before = first.read_bytes()
    flip_last_byte(first)
    with pytest.raises(ManifestError, match=rf"{first.name}: sha256 differs .*rerun the shard stage"):
        shard_store.data_files(run.stage("shard"), "train")
    with pytest.raises(ManifestError, match=rf"{first.name}: sha256 differs|Rerun the shard stage"):
        train.plan(run, train.TrainParams())
    refs = [shard.shard_unit(u) for u in shard.plan(run, SHARD)]  # the next shard run rebuilds it
    shard.commit_shards(shard.stage_for(run, SHARD, refs), refs)
    assert first.read_bytes() == before and shard_store.data_files(run.stage("shard"), "train")


def test_edited_tokenizer_is_noticed_and_rebuilt(copied):
    run = RunDir.of(str(copied))
    tok = copied / "vocab" / "tokenizer.json"
    before = tok.read_bytes()
    tok.write_bytes(before.replace(b'"<pad>"', b'"<PAD>"', 1))
    for later in (lambda: shard.plan(run, SHARD), lambda: train.plan(run, train.TrainParams())):
        with pytest.raises(ManifestError, match=r"vocab: output does not match its manifest: .*tokenizer\.json"):
            later()  # shard and train never use the edited file
    vocab.build_vocab(vocab.plan(run, VOCAB))  # the next vocab run: the stage is not intact, so it is rebuilt
    assert tok.read_bytes() == before and load_output(run.stage("vocab"), "vocab")


def test_checkpoint_of_another_configuration_is_never_resumed(copied, capsys):
    from test_train import PARAMS

    run = RunDir.of(str(copied))
    a = PARAMS.model_copy(update={"max_steps": 4, "checkpoint_every": 2, "eval_every": 4, "align": "none"})
    b = a.model_copy(update={"lr": 1e-3})
    spec_a, spec_b = train.spec_of(train.plan(run, a)), train.spec_of(train.plan(run, b))
    assert spec_a["checkpoints"] != spec_b["checkpoints"], "a changed configuration has its own checkpoint folder"
    train_loop.run(spec_a)
    planted = Path(spec_b["checkpoints"]) / "step-0000002"
    shutil.copytree(Path(spec_a["checkpoints"]) / "step-0000002", planted)  # copied by hand, or a prefix clash
    capsys.readouterr()
    train_loop.run(spec_b)
    out = capsys.readouterr().out
    assert f"not resuming from {planted}: it was written by configuration {spec_a['fingerprint'][:16]}" in out
    assert "resumed from" not in out and "steps 0 -> 4" in out


# ---------------------------------------------------------------- what the user sees
@pytest.mark.parametrize("case", ["missing-source", "config-typo"])
def test_cli_prints_one_line_and_exits_1(tmp_path, case):
    args = ["ingest", "--run-dir", str(tmp_path / "run")]
    if case == "missing-source":
        args += ["--source", str(tmp_path / "missing.jsonl")]
        expected = "missing.jsonl': no such file or folder; check the path"
    else:
        (tmp_path / "c.toml").write_text("[ingest]\nbad_record = 'fail'\n")
        args += ["--config", str(tmp_path / "c.toml")]
        expected = "c.toml: unknown key 'ingest.bad_record'"
    proc = subprocess.run(
        [sys.executable, "-m", "xlmflow.flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in lines if line.startswith("xlmflow ingest: error: ")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
