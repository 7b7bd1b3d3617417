"""No secret or whole environment lands in a run directory, its manifests and artifacts, or Prefect's
records of the run: a canary value in the environment must appear nowhere."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from test_kill import small_config


@pytest.mark.slow
def test_environment_canary_appears_in_no_output_log_or_artifact(tmp_path):
    canary = f"canary-{uuid.uuid4().hex}"
    home = tmp_path / "prefect-home"
    env = {
        **os.environ,
        "XLMFLOW_TEST_SECRET": canary,
        "HF_TOKEN": canary,
        "PREFECT_HOME": str(home),
        "XLMFLOW_PREFECT_HOME": str(home),
    }
    env.pop("PREFECT_API_URL", None)
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "xlmflow.flows.cli", "run", "--verbose", "--run-dir", str(run_dir)]
        + ["--config", small_config(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run_dir / "evaluate" / "_manifest.json").exists()
    assert canary not in r.stdout + r.stderr, "the canary reached the terminal log"
    searched = 0
    for root in (run_dir, home):  # every file: outputs, manifests, checkpoints, Prefect's database of runs
        for p in root.rglob("*"):
            if p.is_file():
                searched += 1
                assert canary.encode() not in p.read_bytes(), f"the canary is in {p}"
    dbs = list(home.rglob("*.db"))
    assert dbs and searched > 50, "Prefect's database (flow runs, task runs, logs, artifacts) was searched"
