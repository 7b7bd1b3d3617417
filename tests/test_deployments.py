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


def test_prefect_yaml_is_what_xlmflow_deployments_writes(tmp_path):
    """The committed file is generated from the registry: adding a stage is its package, its flow, one registry
    line and `xlmflow deployments --run-dir runs/scheduled --output deployments/prefect.yaml`."""
    from xlmflow.flows.cli import main

    out = tmp_path / "prefect.yaml"
    assert main(["deployments", "--run-dir", "runs/scheduled", "--output", str(out)]) == 0
    committed = (ROOT / "deployments" / "prefect.yaml").read_text()
    assert out.read_text() == committed, "deployments/prefect.yaml is not current: regenerate it (command above)"
    spec = yaml.safe_load(committed)
    from xlmflow.flows.registry import STAGES

    assert [d["name"] for d in spec["deployments"]] == ["nightly", *(s.name for s in STAGES)]
    for s, d in zip(STAGES, spec["deployments"][1:]):
        assert all(r in d["description"] for r in s.reads), f"{s.name}: its description names what it reads"
