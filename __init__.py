"""xlmflow: raw multilingual text to an evaluated cross-lingual GPT-style model.

Importing the package sets Prefect's defaults *before* Prefect itself is imported,
so every entry point (CLI, tests, deployments) runs offline and quietly with no
server configured: an ephemeral API, analytics off, and a PREFECT_HOME the user
controls (``XLMFLOW_PREFECT_HOME`` or ``PREFECT_HOME``; default ``~/.xlmflow/prefect``).
A user who runs ``prefect server start`` and sets ``PREFECT_API_URL`` gets the UI;
nothing here overrides a value already set.
"""

import os as _os
from pathlib import Path as _Path

__version__ = "0.1.0"

#: Repository root in an editable install: where the bundled demo corpus lives.
PACKAGE_ROOT = _Path(__file__).resolve().parent


def _prefect_defaults() -> None:
    home = _os.environ.get("XLMFLOW_PREFECT_HOME") or _os.environ.get("PREFECT_HOME")
    _os.environ.setdefault("PREFECT_HOME", home or str(_Path.home() / ".xlmflow" / "prefect"))
    _os.makedirs(_os.path.expanduser(_os.environ["PREFECT_HOME"]), exist_ok=True)  # Prefect makes only the last level
    if not _os.environ.get("PREFECT_API_URL"):
        _os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
        # the temporary server's shutdown races its event recorder and prints tracebacks
        _os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    _os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _os.environ.setdefault("DO_NOT_TRACK", "1")
    _os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "true")


_prefect_defaults()
