"""Crashes: SIGKILL the whole pipeline at 20 random moments, crash between a stage's units and its manifest,
crash while a checkpoint is written, a full disk. Each time the next run finishes with the bytes of a run
never interrupted."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from xlmflow import PACKAGE_ROOT

sys.path.insert(0, str(PACKAGE_ROOT / "bench"))
from kill_pipeline import files_of, kill_and_compare  # noqa: E402


@pytest.mark.slow
def test_twenty_random_kills_resume_to_the_same_bytes(small_run, prefect_server, tmp_path):
    """The session's small run (tests/small_run.py) is the run never killed: its bytes, its stage times. Every
    round's run reports to the session's Prefect server (started once, not per round), forked from a process
    that imported the CLI once (bench/kill_pipeline.py: ForkServer); the last run starts as a new process."""
    clean = (str(small_run.run_dir), small_run.took)
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    result = kill_and_compare(str(tmp_path / "work"), small_run.config, kills=20, seed=1, clean=clean, env=env)
    assert result["kills"] >= 20 and result["identical"], result
    assert result["files_compared"] > 50
    assert len(result["kills_per_stage"]) >= 3, f"kills spread over stages: {result['kills_per_stage']}"
    # the demo's documents, but a user's configuration: the demo's eval sets are not held out
    stats = json.loads((small_run.run_dir / "langid" / "stats.json").read_text())
    held_out = {"eval_holdout", "eval_overlap"} & set(stats["rejected_by_reason"])
    assert stats["documents"]["clean"] > 300 and not held_out, stats


# ---------------------------------------------------------------- crashes at chosen points
def _corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir(exist_ok=True)
    for lang in ("en", "fr"):
        shutil.copy(PACKAGE_ROOT / "data" / "demo" / f"debian-handbook-{lang}.jsonl.zst", d)
    return d


def _ingest_all(run_dir: str, corpus: Path, commit: bool = True) -> None:
    from xlmflow.storage import RunDir
    from xlmflow.tasks import ingest

    run = RunDir.of(run_dir)
    params = ingest.IngestParams(sources=[ingest.Source(path=str(corpus))])
    refs = [ingest.ingest_unit(u) for u in ingest.plan(run, params)]
    if commit:
        ingest.commit_stage(ingest.stage_for(run, params, refs), refs)


def _committed_files(run_dir: str, stage: str) -> list:
    from xlmflow.storage import RunDir, load_output

    return [(f.path, f.sha256, f.rows) for f in load_output(RunDir.of(run_dir).stage(stage), stage).files]


def test_crash_between_units_and_stage_manifest_and_inside_a_commit(tmp_path):
    corpus = _corpus(tmp_path)
    clean, crashed = str(tmp_path / "clean"), str(tmp_path / "crashed")
    _ingest_all(clean, corpus)
    _ingest_all(crashed, corpus, commit=False)  # every unit committed, then the process died
    stage = Path(crashed, "ingest")
    assert not (stage / "_manifest.json").exists()
    # and a commit killed half-way: an aside folder with a partial file, no manifest
    unit = next(p for p in (stage / "parts").iterdir())
    junk = unit / ".aside-deadbeef0000"
    junk.mkdir()
    (junk / "part-00000.parquet").write_bytes(b"PAR1 half a file")
    _ingest_all(crashed, corpus)
    assert _committed_files(crashed, "ingest") == _committed_files(clean, "ingest")
    assert files_of(crashed) == files_of(clean) and not junk.exists()


class FullDisk:
    """An fsspec memory file system that fails writes with ENOSPC once ``budget`` bytes are written."""

    budget = 0
    written = 0


def _full_fs():
    import errno

    from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

    class FullFS(MemoryFileSystem):
        protocol = "fullfs"
        store: dict = {}
        pseudo_dirs = [""]

        def _open(self, path, mode="rb", **kwargs):
            f = super()._open(path, mode, **kwargs)
            if "w" in mode or "a" in mode or "x" in mode:
                write = f.write

                def limited(data, write=write):
                    FullDisk.written += len(data)
                    if FullDisk.written > FullDisk.budget:
                        raise OSError(errno.ENOSPC, "No space left on device (simulated)", path)
                    return write(data)

                f.write = limited
            return f

    assert issubclass(FullFS, MemoryFileSystem) and MemoryFile
    return FullFS


def test_disk_full_fails_clearly_and_the_next_run_completes(tmp_path):
    import fsspec

    fsspec.register_implementation("fullfs", _full_fs(), clobber=True)
    corpus = _corpus(tmp_path)
    clean = str(tmp_path / "clean")
    _ingest_all(clean, corpus)
    total = sum(f[2] is not None for f in _committed_files(clean, "ingest"))
    assert total
    FullDisk.budget, FullDisk.written = 200_000, 0  # less than the stage writes
    with pytest.raises(OSError, match="No space left"):
        _ingest_all("fullfs://run", corpus)
    fs = fsspec.filesystem("fullfs")
    manifests = [p for p in fs.find("/run") if p.endswith("_manifest.json")]
    for m in manifests:  # whatever was committed before the disk filled is whole
        folder = m.rsplit("/", 1)[0]
        from xlmflow.storage import Location, committed, read_manifest

        assert committed(
            Location(f"fullfs://{folder.lstrip('/')}"),
            read_manifest(Location(f"fullfs://{folder.lstrip('/')}")).fingerprint,
        )
    assert not fs.exists("/run/ingest/_manifest.json")
    FullDisk.budget = 1 << 40  # space freed: the next run completes with the bytes of a clean run
    _ingest_all("fullfs://run", corpus)
    assert _committed_files("fullfs://run", "ingest") == _committed_files(clean, "ingest")


def test_a_checkpoint_cut_short_is_never_resumed(tmp_path):
    """Killed while a checkpoint is written: ``step-N.tmp`` (written aside, renamed when whole) and a folder
    without its state file are passed over; training resumes from the last whole checkpoint of its own
    configuration. (The random kills above also land in checkpoint writes: checkpoint_every = 2.)"""
    from xlmflow.tasks.train.loop import STATE, latest_checkpoint

    whole = tmp_path / "step-0000002"
    whole.mkdir()
    (whole / STATE).write_text(json.dumps({"fingerprint": "mine"}))
    (tmp_path / "step-0000004.tmp").mkdir()
    (tmp_path / "step-0000004.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / "step-0000006").mkdir()  # no state: not whole
    assert latest_checkpoint(tmp_path, "mine") == whole
