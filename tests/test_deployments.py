"""deployments/prefect.yaml is valid: `prefect deploy` creates every deployment with its schedule."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_deploy_creates_scheduled_deployments(prefect_api):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    subprocess.run(
        [*prefect, "work-pool", "create", "xlmflow-local", "--type", "process", "--overwrite"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [*prefect, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    with get_client(sync_client=True) as client:
        made = {d.name: d for d in client.read_deployments()}
    for d in spec["deployments"]:
        assert d["name"] in made, f"deployment {d['name']} not created"
        crons = [s.schedule.cron for s in made[d["name"]].schedules]
        assert crons == [s["cron"] for s in d.get("schedules", [])]
        assert made[d["name"]].parameters["run_dir"] == d["parameters"]["run_dir"]
    nightly = made["nightly"]
    limit = nightly.concurrency_limit or getattr(nightly.global_concurrency_limit, "limit", None)
    assert limit == 1, "the nightly pipeline runs one at a time"
