"""What the UI shows: chart markup, the summary's links and numbers."""

from xlmflow.storage import RunDir
from xlmflow.tasks.common import artifacts


def test_charts_have_a_visible_colour_and_a_numeric_step_axis():
    bar = artifacts.bars("docs", ["en", "fr"], [10, 5], "documents")
    assert "plotColorPalette" in bar and 'x-axis ["en", "fr"]' in bar and "bar [10, 5]" in bar
    line = artifacts.lines("loss", [1, 10, 20, 300], [9.7, 9.3, 8.8, 4.1], "nats/token")
    assert 'x-axis "step" 1 --> 300' in line and "line [9.7, 9.3, 8.8, 4.1]" in line


def test_summary_links_each_stage_artifact_and_formats_numbers(tmp_path):
    run = RunDir.of(str(tmp_path / "run"))
    heads = [
        {"stage": "ingest", "key": "ingest-run-abc", "documents": 317057},
        {"stage": "evaluate", "key": "evaluate-run-abc", "retrieval_acc_at_1": {"handbook": 0.014, "help": 0.011}},
    ]
    r = artifacts.summary(run, heads, {"ingest": "/v2/artifacts/artifact/123"})
    assert "[ingest](/v2/artifacts/artifact/123)" in r.markdown and "documents 317,057" in r.markdown
    assert "retrieval acc at 1 handbook 0.014, help 0.011" in r.markdown and "{" not in r.markdown
    assert "| evaluate |" in r.markdown  # no artifact found: named, not linked
