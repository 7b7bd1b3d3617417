"""Incremental runs (``xlmflow run --incremental``): day 1 runs on a small corpus; day 2 adds files to its source
folder. The data stages append, the vocabulary stays, training continues from day 1's model,
the report compares the two models, and a day 2 killed at random moments ends with the bytes of one never killed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from xlmflow import PACKAGE_ROOT

sys.path.insert(0, str(PACKAGE_ROOT / "bench"))
from kill_pipeline import files_of, kill_during, start  # noqa: E402
from small_run import CONFIG  # noqa: E402


def _demo_lines(name: str, lo: int, hi: int) -> list[str]:
    with zstandard.ZstdDecompressor().stream_reader((PACKAGE_ROOT / "data" / "demo" / name).open("rb")) as r:
        return io.TextIOWrapper(r, encoding="utf-8").readlines()[lo:hi]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def days(prefect_server, tmp_path_factory):
    """(day 1 run directory, day 2 run directory never killed, day 2's output, seconds it took, env, the day-1
    documents repeated on day 2). Day 1: the demo's first English and French documents under tests/small_run.py's
    configuration (a tiny model), run with ``--incremental``. Day 2's source folder gains more-fr.jsonl (new French
    documents, one day-1 document verbatim, one with a word added) and es.jsonl (a language the frozen vocabulary
    has no tag for)."""
    import time

    root = tmp_path_factory.mktemp("incremental")
    corpus = root / "corpus"
    corpus.mkdir()
    for lang in ("en", "fr"):
        (corpus / f"{lang}.jsonl").write_text("".join(_demo_lines(f"debian-handbook-{lang}.jsonl.zst", 0, 250)))
    config = root / "xlmflow.toml"
    config.write_text(CONFIG.format(corpus=corpus))
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    day1 = root / "day1"
    p = start(str(day1), str(config), env=env, flags=("--quiet", "--incremental"))
    first = p.communicate()[0]
    assert p.returncode == 0, first[-3000:]
    kept = pq.read_table(next((day1 / "langid" / "clean" / "lang=fr" / "inc=0001").glob("*.parquet"))).to_pylist()
    long = [r for r in kept if len(r["text"]) > 150][:2]
    repeats = {"exact": long[0], "near": long[1]}
    lines = _demo_lines("debian-handbook-fr.jsonl.zst", 250, 370)
    lines += [json.dumps({"text": long[0]["text"], "lang": "fr"}) + "\n"]
    lines += [json.dumps({"text": long[1]["text"] + " ok", "lang": "fr"}) + "\n"]
    (corpus / "more-fr.jsonl").write_text("".join(lines))
    (corpus / "es.jsonl").write_text("".join(_demo_lines("debian-handbook-es.jsonl.zst", 0, 150)))
    day2 = root / "day2"
    shutil.copytree(day1, day2, symlinks=True)
    t0 = time.monotonic()
    p = start(str(day2), None, env=env, flags=())
    out = p.communicate()[0]
    assert p.returncode == 0, out[-3000:]
    return day1, day2, out, time.monotonic() - t0, env, repeats


def test_day_two_appends_and_keeps_every_day_one_file(days):
    day1, day2, out, _, _, _ = days
    assert _sha(day1 / "vocab" / "tokenizer.json") == _sha(day2 / "vocab" / "tokenizer.json")
    before = files_of(str(day1))
    after = files_of(str(day2))
    day1_data = [k for k in before if k.startswith(("shard/train/", "shard/valid/", "langid/clean/"))]
    assert day1_data and all(after.get(k) == before[k] for k in day1_data), "a day-1 shard or clean file changed"
    ledger = json.loads((day2 / "langid" / "increments.json").read_text())
    assert [i["number"] for i in ledger["increments"]] == [1, 2]
    assert sorted(n.split("-")[0] for n in ledger["increments"][1]["inputs"]) == ["es.jsonl", "more"]
    index = json.loads((day2 / "shard" / "shards.json").read_text())
    new = [s for s in index["shards"] if s["increment"] == 2]
    assert new and {s["lang"] for s in new} <= {"fr", "en"}
    assert [i["number"] for i in index["increments"]] == [1, 2] and index["increments"][1]["tokens"]["train"]
    assert index["untagged"].get("es", 0) > 20, index["untagged"]  # counted apart, not sharded
    assert "no <lang:es> tag" in out, out[-2000:]


def test_a_day_two_document_repeating_a_kept_one_is_rejected_and_the_kept_one_stays(days):
    day1, day2, _, _, _, repeats = days
    rejected = pq.read_table(day2 / "langid" / "dedup" / "lang=fr" / "inc=0002" / "rejected.parquet").to_pylist()
    reasons = {r["dup_of"]: r["reason"] for r in rejected if r["dup_of"]}
    assert reasons.get(repeats["exact"]["doc_id"]) == "duplicate", rejected[:5]
    assert reasons.get(repeats["near"]["doc_id"]) == "near_duplicate", rejected[:5]
    clean, day1_kept = _ids(day2 / "langid" / "clean" / "lang=fr"), _ids(day1 / "langid" / "clean" / "lang=fr")
    assert day1_kept <= clean and repeats["exact"]["doc_id"] in clean


def _ids(folder: Path) -> set[str]:
    return {i for f in folder.rglob("*.parquet") for i in pq.read_table(f, columns=["doc_id"]).column(0).to_pylist()}


def test_training_continues_from_day_one_and_the_report_compares_the_models(days):
    day1, day2, out, _, _, _ = days
    m1 = json.loads((day1 / "train" / "_manifest.json").read_text())
    summary = json.loads((day2 / "train" / "summary.json").read_text())
    c = summary["continued_from"]
    assert c["from"] == m1["fingerprint"] and c["total_steps"] == m1["stats"]["steps"]
    assert summary["total_steps"] == m1["stats"]["steps"] + summary["steps"]
    assert f"continued from model {m1['fingerprint'][:12]}" in out and "AdamW state loaded" in out, out[-2000:]
    version = day2 / "versions" / "train" / f"v0001-{m1['fingerprint'][:12]}"
    assert _sha(version / "model.safetensors") == _sha(day1 / "train" / "model.safetensors")
    metrics = json.loads((day2 / "evaluate" / "metrics.json").read_text())
    night = metrics["previous_model"]
    assert night["version"] == version.name and set(night["bits_per_byte"]) >= {"en", "fr"}
    assert "## Against the previous model" in (day2 / "evaluate" / "report.md").read_text()


def test_status_says_frozen_and_a_rollback_restores_day_one(days, tmp_path, capsys):
    from xlmflow.flows.cli import main

    day1, day2, _, _, _, _ = days
    run = tmp_path / "run"
    shutil.copytree(day2, run, symlinks=True)
    assert main(["status", "--run-dir", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "vocab    frozen" in shown and "incremental: no new input files" in shown, shown
    assert main(["rollback", "--run-dir", str(run)]) == 0
    assert _sha(run / "train" / "model.safetensors") == _sha(day1 / "train" / "model.safetensors")
    assert main(["rollback", "--run-dir", str(run), "--list"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("v000")]
    assert len(listed) == 2 and listed[0].endswith("(current)"), listed


@pytest.mark.slow
def test_a_killed_day_two_resumes_to_the_same_bytes(days, tmp_path):
    """Killed (SIGKILL, the whole process group) as the new increment's dedup starts and while the
    continued training has a checkpoint (the stateful steps: the ledger, the kept version, the resumed continued
    training); the run after the kills ends with every file of the day 2 never killed, its kept version of day 1's
    model included; the runs stop after training (the evaluation of a resumed model is the 20-kill test's).
    bench/kill_pipeline.py's kill_during takes any marks and stages."""
    day1, day2, _, _, env, _ = days
    marks = ["langid/dedup/lang=fr/inc=0002", ".checkpoints/train/*/step-*"]
    result = kill_during(str(tmp_path), str(day1), str(day2), marks, env=env, until="train")  # the stateful part
    stages = [stage for _, stage in result["kills"]]
    assert stages[0] in ("langid", "vocab", "shard") and stages[1] == "train", result  # the first: racing the commit
    assert result["identical"] and result["files_compared"] > 50, result


def test_drop_removed_leaves_a_gone_files_documents_out_of_the_shards(days, tmp_path, prefect_api, capsys):
    """Day 2's more-fr.jsonl gone from the sources: the langid ledger lists it, and with ``--drop-removed`` the
    shards that held its documents are written again without them; every other shard file keeps its bytes, and
    shards.json and ``xlmflow status`` say what was left out."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from xlmflow.flows.cli import main

    run, corpus = tmp_path / "run", tmp_path / "corpus"
    shutil.copytree(days[1], run, symlinks=True)
    shutil.copytree(days[0].parent / "corpus", corpus, ignore=shutil.ignore_patterns("more-fr.jsonl"))
    (tmp_path / "xlmflow.toml").write_text(CONFIG.format(corpus=corpus))
    clean = pa.concat_tables(pq.read_table(f) for f in (run / "langid" / "clean").glob("lang=*/inc=0002/*.parquet"))
    from_gone = set(clean.filter(pc.equal(clean["source"], "more-fr.jsonl"))["doc_id"].to_pylist())
    shards = {k: v for k, v in files_of(str(run), stages=("shard",)).items() if k.endswith(".parquet")}
    stages = ["--only", "ingest", "--only", "langid", "--only", "shard"]
    args = ["--run-dir", str(run), "--config", str(tmp_path / "xlmflow.toml"), "--quiet"]
    assert main(["run", *args, *stages, "--drop-removed"]) == 0
    ledger = json.loads((run / "langid" / "increments.json").read_text())
    gone = next(n for n in ledger["increments"][1]["inputs"] if n.startswith("more-fr"))
    assert ledger["removed"] == [gone] and len(ledger["increments"]) == 2
    after = files_of(str(run), stages=("shard",))
    index = json.loads((run / "shard" / "shards.json").read_text())
    day2 = {f"shard/{s['path']}" for s in index["shards"] if s["increment"] == 2}  # its documents: fr and en
    changed = {k for k, sha in shards.items() if after.get(k) != sha}
    assert from_gone and changed and changed <= day2, (changed, day2)
    ids = [pq.read_table(run / "shard" / s["path"], columns=["doc_id"])[0].to_pylist() for s in index["shards"]]
    assert not from_gone & {i for part in ids for i in part}
    assert index["removed"] == {"inputs": [gone], "documents": len(from_gone)}, index.get("removed")
    capsys.readouterr()
    assert main(["status", "--run-dir", str(run)]) == 0
    assert f"gone from the sources (left out of the shards: drop_removed): {gone}" in capsys.readouterr().out


def test_an_input_gone_from_the_sources_is_reported_and_listed_in_the_ledger(tmp_path, caplog):
    from xlmflow.storage import Location
    from xlmflow.storage.increments import LEDGER, ledger_bytes
    from xlmflow.tasks.common.runtime import Input, Unit
    from xlmflow.tasks.langid import increments

    def unit(name: str, fp: str) -> Unit:
        docs = {"docs": {"part": Input(str(tmp_path / name), fp)}}
        return Unit(stage="langid", name=name, out=str(tmp_path / name), code_version="c", params={}, inputs=docs)

    a, b = unit("a.jsonl-0a0a0a0a", "1"), unit("b.jsonl-0b0b0b0b", "2")
    first = {"number": 1, "date": "2026-11-29", "inputs": increments.inputs_of([a, b]), "dedup": []}
    (tmp_path / LEDGER).write_bytes(ledger_bytes({"dedup": {}, "increments": [first]}))
    inc = increments.split(Location.of(str(tmp_path)), {}, [a], incremental=True)
    assert inc.removed == [b.name] and not inc.new
    assert increments.ledger(inc, [], Location.of(str(tmp_path)), None)["removed"] == [b.name]
    assert f"input {b.name} is gone from the sources" in caplog.text and "--drop-removed" in caplog.text
    kept = increments.split(Location.of(str(tmp_path)), {}, [a, b], incremental=True)
    assert "removed" not in increments.ledger(kept, [], Location.of(str(tmp_path)), None)
