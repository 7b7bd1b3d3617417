"""Storage owns partition paths: building and parsing ``key=value`` folders, and listing a stage's partitions."""

import pytest
from helpers import write_langid_stage

from xlmflow.storage import RunDir, load_output, partition, partition_value, partitions, read_table, split_path


def test_partition_paths_round_trip():
    path = partition("lang", "fr", "part-00000.parquet")
    assert path == "lang=fr/part-00000.parquet" and partition_value(path, "lang") == "fr"
    assert partition_value("clean/lang=zh/part-00001.parquet", "lang") == "zh"
    assert partition_value("clean/part-00001.parquet", "lang") is None
    assert partition_value("lang=fr", "lang") is None  # a file name is not a partition folder
    for bad in ("", "a/b", "x=y"):
        with pytest.raises(ValueError):
            partition("lang", bad)
    assert split_path("parts/unit/part-0.parquet", 2) == ["parts", "unit", "part-0.parquet"]
    with pytest.raises(ValueError, match="2 folders deep"):
        split_path("part-0.parquet", 2)


def test_partitions_of_a_committed_stage(run_dir):
    write_langid_stage(run_dir, {"en": ["hello", "world"], "fr": ["bonjour"]})
    m = load_output(RunDir.of(run_dir).stage("langid"), "langid")
    parts = partitions(m, "clean")
    assert sorted(parts) == ["en", "fr"] and [len(v) for v in parts.values()] == [1, 1]
    t = read_table(RunDir.of(run_dir).stage("langid").child(parts["fr"][0].path))
    assert t.column("text").to_pylist() == ["bonjour"]
