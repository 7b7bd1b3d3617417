"""The fixture later stages' tests build on is itself a valid committed stage."""

from helpers import write_langid_stage
from xlmflow.storage import RunDir, load_output, partitions, read_table


def test_langid_fixture_is_a_committed_partitioned_stage(run_dir):
    write_langid_stage(run_dir, {"en": ["hello", "world"], "fr": ["bonjour"]})
    m = load_output(RunDir.of(run_dir).stage("langid"), "langid")
    parts = partitions(m, "clean")
    assert sorted(parts) == ["en", "fr"] and m.stats["documents"] == 3
    t = read_table(RunDir.of(run_dir).stage("langid").child(parts["fr"][0].path))
    assert t.column("text").to_pylist() == ["bonjour"]
