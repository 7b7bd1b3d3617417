"""storage/: locations on any fsspec file system, atomic commits, manifests, fingerprints."""

import pyarrow as pa
import pytest

from xlmflow.storage import (
    Location,
    Manifest,
    ManifestError,
    PartWriter,
    RunDir,
    code_version,
    commit,
    committed,
    hash_json,
    load_output,
    read_manifest,
    read_table,
)
from xlmflow.storage import fingerprint as fpmod


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    import uuid

    return f"memory://xlmflow-test-{uuid.uuid4().hex}"


def _write(loc, fp="fp1", rows=10, fail=False):
    m = Manifest(stage="ingest", fingerprint=fp, code_version="c")
    with commit(loc, m) as aside:
        w = PartWriter(aside.path, pa.schema([("x", pa.int64())]))
        w.write(pa.table({"x": list(range(rows))}))
        w.close()
        if fail:
            raise RuntimeError("killed mid-write")
    return m


def test_commit_writes_manifest_with_checksums(root):
    loc = RunDir.of(root).unit("ingest", "u1")
    _write(loc)
    m = load_output(loc, "ingest")
    assert [f.path for f in m.files] == ["part-00000.parquet"]
    assert m.files[0].rows == 10 and m.files[0].bytes > 0 and len(m.files[0].sha256) == 64
    assert read_table(loc.child("part-00000.parquet")).num_rows == 10
    assert committed(loc, "fp1") is not None and committed(loc, "other") is None


def test_failed_write_keeps_previous_output_and_leaves_no_aside(root):
    loc = RunDir.of(root).unit("ingest", "u1")
    _write(loc, rows=3)
    with pytest.raises(RuntimeError):
        _write(loc, fp="fp2", rows=7, fail=True)
    assert committed(loc, "fp1").rows == 3
    assert [p for p in loc.fs.ls(loc.path, detail=False) if ".aside-" in p] == []


def test_output_without_manifest_is_not_an_output(root):
    loc = RunDir.of(root).unit("ingest", "u1")
    _write(loc)
    loc.fs.rm(loc.child("_manifest.json").path)
    assert read_manifest(loc) is None and committed(loc, "fp1") is None
    with pytest.raises(ManifestError, match="not a committed output"):
        load_output(loc, "ingest")


def test_corrupt_or_missing_file_is_a_miss_and_an_error_on_read(root):
    loc = RunDir.of(root).unit("ingest", "u1")
    _write(loc)
    part = loc.child("part-00000.parquet")
    data = bytearray(part.open().read())
    data[10] ^= 0xFF
    with part.open("wb") as f:
        f.write(bytes(data))
    assert committed(loc, "fp1") is None
    with pytest.raises(ManifestError, match="sha256 differs"):
        load_output(loc)
    loc.fs.rm(part.path)
    with pytest.raises(ManifestError, match="missing"):
        load_output(loc)


def test_recommit_removes_files_the_new_manifest_does_not_list(root):
    loc = RunDir.of(root).unit("ingest", "u1")
    m = Manifest(stage="ingest", fingerprint="a", code_version="c")
    with commit(loc, m) as aside:
        with aside.path("old.txt").open("wb") as f:
            f.write(b"x")
    with commit(loc, Manifest(stage="ingest", fingerprint="b", code_version="c")) as aside:
        with aside.path("new.txt").open("wb") as f:
            f.write(b"y")
    assert sorted(p.rsplit("/", 1)[-1] for p in loc.fs.ls(loc.path, detail=False)) == ["_manifest.json", "new.txt"]


def test_commit_is_byte_identical_when_repeated(tmp_path):
    a, b = Location.of(str(tmp_path / "a")), Location.of(str(tmp_path / "b"))
    _write(a), _write(b)
    assert a.child("_manifest.json").open().read() == b.child("_manifest.json").open().read()


def test_part_writer_rolls_over_by_size(tmp_path):
    loc = Location.of(str(tmp_path / "u"))
    with commit(loc, Manifest(stage="ingest", fingerprint="f", code_version="c")) as aside:
        w = PartWriter(aside.path, pa.schema([("x", pa.int64())]), max_bytes=1000)
        for _ in range(5):
            w.write(pa.table({"x": list(range(200))}))
        names = w.close()
    assert len(names) == 5 and load_output(loc).rows == 1000


def test_location_rejects_escaping_names(tmp_path):
    with pytest.raises(ValueError):
        Location.of(str(tmp_path)).child("../x")
    with pytest.raises(ValueError, match="not a stage name"):
        RunDir.of(str(tmp_path)).stage("../nope")


def test_hash_json_is_canonical():
    assert hash_json({"a": 1, "b": [1, 2]}) == hash_json({"b": [1, 2], "a": 1})
    assert hash_json({"a": 1}) != hash_json({"a": 2})


def test_code_version_covers_imported_modules(monkeypatch):
    before = code_version("xlmflow.tasks.ingest")
    real = fpmod._module_source.__wrapped__

    def edited(name):  # an edit to a module ingest imports (not ingest itself) must change the key
        src = real(name)
        return src + "\nEDITED = 1\n" if name == "xlmflow.storage.commit" else src

    fpmod._module_source.cache_clear()
    fpmod.code_version.cache_clear()  # a process reads its code once; this test edits it in between
    monkeypatch.setattr(fpmod, "_module_source", edited)
    assert code_version("xlmflow.tasks.ingest") != before
    monkeypatch.undo()
    fpmod._module_source.cache_clear()
    fpmod.code_version.cache_clear()
    assert code_version("xlmflow.tasks.ingest") == before
    assert code_version("xlmflow.tasks.ingest") != code_version("xlmflow.storage")


def test_code_version_covers_the_python_release(monkeypatch):
    """A new Python can change str.isalpha / unicodedata, which shape quality signals and alignment bytes."""
    import platform

    before = code_version("xlmflow.tasks.vocab")
    monkeypatch.setattr(platform, "python_version", lambda: "3.99.0")
    fpmod.library_versions.cache_clear()
    fpmod.code_version.cache_clear()
    assert fpmod.library_versions()["python"] == "3.99.0" and code_version("xlmflow.tasks.vocab") != before
    monkeypatch.undo()
    fpmod.library_versions.cache_clear()
    fpmod.code_version.cache_clear()
    assert code_version("xlmflow.tasks.vocab") == before


def test_cache_check_trusts_the_stat_memo_until_size_or_mtime_change(tmp_path, monkeypatch):
    import os

    from xlmflow.storage import manifest as manifest_module

    loc = Location.of(str(tmp_path / "out"))
    m = Manifest(stage="s", fingerprint="f", code_version="c")
    with commit(loc, m) as aside:
        with aside.path("big.bin").open("wb") as f:
            f.write(b"x" * 1000)
    old = 1_000_000_000_000_000_000
    os.utime(loc.child("big.bin").path, ns=(old, old))  # older than the clock's granularity
    assert committed(loc, "f") is not None and loc.child(manifest_module.STAT_MEMO).exists()
    hashed = []
    real = manifest_module.file_sha256
    monkeypatch.setattr(manifest_module, "file_sha256", lambda fs, p: hashed.append(p) or real(fs, p))
    assert committed(loc, "f") is not None and hashed == [], "an unchanged file is not hashed again"
    with open(loc.child("big.bin").path, "r+b") as f:  # same size, new bytes, new mtime
        f.write(b"y")
    assert committed(loc, "f") is None and hashed, "a changed mtime means a full check, which fails"
