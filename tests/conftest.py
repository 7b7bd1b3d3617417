"""Test set-up: Prefect's environment is fixed *before* prefect is imported anywhere.

Plain functions are tested directly; flow tests share one ``prefect_test_harness``
(a temporary API with its own database) started once per session.
"""

import os
import tempfile

_home = tempfile.mkdtemp(prefix="xlmflow-prefect-")
os.environ["PREFECT_HOME"] = _home
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "true"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "CRITICAL"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API for the whole session (started on first use only)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def run_dir(tmp_path):
    return str(tmp_path / "run")
