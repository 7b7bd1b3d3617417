"""No secret or whole environment lands in a run directory, its manifests and artifacts, or Prefect's
records of the run: a canary value in the environment must appear nowhere."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_environment_canary_appears_in_no_output_log_or_artifact(small_run):
    """The session's small run (tests/small_run.py) ran as `xlmflow run --verbose` with the canary in
    XLMFLOW_TEST_SECRET and HF_TOKEN, no PREFECT_API_URL, and a PREFECT_HOME of its own."""
    run_dir, home, canary = small_run.run_dir, small_run.home, small_run.canary
    assert (run_dir / "evaluate" / "_manifest.json").exists()
    assert small_run.output.strip() and canary not in small_run.output, "the canary reached the terminal log"
    searched = 0
    for root in (run_dir, home):  # every file: outputs, manifests, checkpoints, Prefect's database of runs
        for p in root.rglob("*"):
            if p.is_file():
                searched += 1
                assert canary.encode() not in p.read_bytes(), f"the canary is in {p}"
    dbs = list(home.rglob("*.db"))
    assert dbs and searched > 50, "Prefect's database (flow runs, task runs, logs, artifacts) was searched"
