"""Test set-up: Prefect's environment is fixed *before* prefect is imported anywhere.

Each test process (each xdist worker) has its own ``PREFECT_HOME``. A run of the whole suite (``pytest`` with
no paths: command B, CI) starts one Prefect API server per test process when pytest configures
(tests/prefect_server.py) and names it in ``PREFECT_API_URL``: flow tests and every ``xlmflow`` command a test
starts report to it, instead of a temporary server per command. Tests named on the command line run as before
(``prefect_api``: a ``prefect_test_harness``; commands: a temporary server each), but for the kill test, whose
rounds share the ``prefect_server`` fixture's. ``XLMFLOW_TEST_SERVER=1`` / ``0`` forces the one or the other.
"""

import os
import sys
import tempfile

# Bytecode is cached, as on any machine without PYTHONDONTWRITEBYTECODE (these machines' images set it, and uv,
# unlike pip, compiles nothing at install): else every interpreter the suite starts (xdist workers, each command,
# each training process and kill round) compiles prefect, torch and transformers from source again, ~4 s of CPU.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

_home = tempfile.mkdtemp(prefix="xlmflow-prefect-")
os.environ["PREFECT_HOME"] = _home
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "true"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "CRITICAL"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one xdist worker per core: torch's OpenMP pool (one thread per core in each worker, and in each training
    # process a test starts) would put several spinning threads on each core, making generation tens of times
    # slower; the commands and training processes a test starts inherit this
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from prefect_server import PrefectServer, drain_prefect_workers  # noqa: E402

_server: PrefectServer | None = None  # this process's server, once started
_in_env = False  # PREFECT_API_URL names it for the whole session (set before prefect was imported)


def _whole_suite(config) -> bool:
    """No paths given (or the testpaths themselves): the suite, not a file or test someone is working on."""
    from pathlib import Path

    from _pytest.config import Config

    if config.args_source != Config.ArgsSource.ARGS:
        return True
    suite = {(config.rootpath / p).resolve() for p in config.getini("testpaths")}
    return {Path(a).resolve() for a in config.args} == suite


def _shared_server(config) -> bool:
    if config.getoption("collectonly", False) or os.environ.get("XLMFLOW_TEST_SERVER") == "0":
        return False
    if hasattr(config, "workerinput"):  # an xdist worker: the controller chose workers for the suite
        return True
    if config.getoption("dist", "no") != "no" and config.getoption("tx", None):
        return False  # an xdist controller: it only hands tests to its workers
    return _whole_suite(config) or os.environ.get("XLMFLOW_TEST_SERVER") == "1"


def pytest_configure(config):
    global _server, _in_env
    if _shared_server(config) and "prefect" not in sys.modules:
        # started now, waited for at the first test: it comes up while the test modules are imported
        _server = PrefectServer(_home)
        os.environ["PREFECT_API_URL"] = _server.start()
        _in_env = True


def pytest_unconfigure(config):
    if _server is not None:
        drain_prefect_workers()
        _server.stop()


@pytest.fixture(scope="session", autouse=True)
def _prefect_server_up():
    """Every test may start an ``xlmflow`` command: the session's server answers before the first test."""
    if _in_env:
        _server.wait()


@pytest.fixture(scope="session")
def prefect_server() -> str:
    """The API URL of this process's Prefect server (started now when the session did not start it)."""
    global _server
    if _server is None:
        _server = PrefectServer(_home)
        _server.start()
    _server.wait()
    return _server.api_url


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect API for the session's flows: the shared server, or a ``prefect_test_harness`` started now."""
    if _in_env:
        yield
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def run_dir(tmp_path):
    return str(tmp_path / "run")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """One small pipeline run (tests/small_run.py) for the tests that only read it: the canary and kill tests."""
    from small_run import run_small

    return run_small(tmp_path_factory.mktemp("small-run"))


@pytest.fixture(scope="session")
def train_inputs(tmp_path_factory):
    """tests/test_train.py's inputs (committed langid, vocab with its alignment table, and shard stages of a tiny
    corpus), built once: (run directory, tokenizer). Read it; copy it (shutil.copytree) to write."""
    from test_train import build_inputs

    root = tmp_path_factory.mktemp("train-inputs") / "run"
    return root, build_inputs(str(root))


@pytest.fixture(scope="session")
def trained_tiny(train_inputs, tmp_path_factory):
    """``train_inputs`` trained once with tests/test_train.py's PARAMS (one training process): (run directory,
    unit, committed ref, tokenizer). Read it; copy it (shutil.copytree) to write."""
    import shutil

    from test_train import PARAMS

    from xlmflow.storage import RunDir
    from xlmflow.tasks import train

    root, tok = train_inputs
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(root, run_dir)
    unit = train.plan(RunDir.of(str(run_dir)), PARAMS)
    return run_dir, unit, train.train_unit(unit), tok


# ---------------------------------------------------------------- pytest-xdist (`-n auto --dist loadfile`)
#: test modules that read a session fixture built on another module's worker (the canary test reads the kill
#: test's small run). Each pair is one unit of work, so the fixture is built once.
SAME_WORKER = {
    "tests/test_canary.py": "tests/test_kill.py",  # the small run (``small_run``)
    "tests/test_eval_bpb.py": "tests/test_eval_retrieval.py",  # a tiny trained model (``trained_tiny``)
}
#: the longest unit (the small run, then 20 kills): handed out first, so that it does not start last; then the
#: next longest (two days of a small pipeline and kills inside the second), so that it starts on the other worker
FIRST = "tests/test_kill.py"
SECOND = "tests/test_incremental.py"


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker more than the cores (three on two cores, at most four) for the whole suite: the
    tests wait on processes they start and on Prefect servers much of the time, and a third worker fills those
    waits (282 s against 330 s for the suite on this 2-core machine); tests named on the command line run in this
    process, as does everything on one core (each worker starts its own Prefect server)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist's own hook reads it
    if not _whole_suite(config):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cores < 2 else min(cores + 1, 4)


def pytest_make_parametrize_id(config, val, argname):
    """Every xdist worker must collect the same test ids, and gzip data's header holds the second it was made
    (tests/test_bad_inputs.py's gzip case): its id leaves the bytes out."""
    if isinstance(val, bytes) and val[:2] == b"\x1f\x8b":
        return f"{argname}-gzip"
    return None


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` (a test module is a unit of work, its module fixtures built once), with the modules of
    :data:`SAME_WORKER` joined. (``--dist loadgroup`` with ``xdist_group`` marks would say it per test, but it
    does not group on pytest 9.2: pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SAME_WORKER.get(module, module)

    return ModulesScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """On an xdist worker (the collection order is the order units are handed out, --no-loadscope-reorder):
    the :data:`FIRST` unit first, then :data:`SECOND`, the others in their order."""
    if hasattr(config, "workerinput"):
        first = {FIRST, *(m for m, other in SAME_WORKER.items() if other == FIRST)}
        items.sort(key=lambda i: (i.nodeid.split("::", 1)[0] not in first, i.nodeid.split("::", 1)[0] != SECOND))
