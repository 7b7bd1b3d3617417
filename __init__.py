"""xlmflow: raw multilingual text to an evaluated cross-lingual GPT-style model.

Importing the package sets Prefect's defaults *before* Prefect itself is imported,
so every entry point (CLI, tests, deployments) runs offline and quietly with no
server configured: an ephemeral API, analytics off, and a PREFECT_HOME the user
controls (``XLMFLOW_PREFECT_HOME`` or ``PREFECT_HOME``; default ``~/.xlmflow/prefect``).
A user who runs ``prefect server start`` and sets ``PREFECT_API_URL`` gets the UI;
nothing here overrides a value already set.

It also makes transformers' Auto classes know xlmflow's model (``xlmflow-gpt2``), so
``AutoModelForCausalLM.from_pretrained("runs/demo/train")`` works after ``import xlmflow``.
That needs torch, which takes seconds to import, so it happens only when transformers'
auto-model module is first imported (at once if it already is): ``import xlmflow`` stays fast.
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys
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
        # a first run creates the database (migrations): on a busy small machine that takes more than 20 s
        _os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        # the temporary server's shutdown races its event recorder and prints tracebacks
        _os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    _os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _os.environ.setdefault("DO_NOT_TRACK", "1")
    _os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "true")


_prefect_defaults()

_AUTO_MODELS = "transformers.models.auto.modeling_auto"


def _register_models() -> None:
    # importing the module registers its classes, at its end (also when it is what triggered this import)
    try:
        import xlmflow.tasks.common.model  # noqa: F401
    except ImportError:
        # the auto-model module loaded in the middle of a transformers import the model module needs
        # (``from transformers import GPT2Config`` first): no registration now, and never a broken
        # transformers import; xlmflow's own loaders call ``model.register()`` themselves
        pass


class _RegisterOnImport:
    """A meta-path finder that runs :func:`_register_models` right after transformers' auto-model module loads.

    It leaves ``sys.meta_path`` only once that module has loaded: an import of it that fails part-way (as
    ``from transformers import GPT2Config`` can make it) must not cost the registration of the next one."""

    def __init__(self) -> None:
        self.looking = False

    def find_spec(self, name, path=None, target=None):
        if name != _AUTO_MODELS or self.looking:
            return None
        self.looking = True  # find_spec below walks sys.meta_path again, this finder included
        try:
            spec = _importlib_util.find_spec(name)
        finally:
            self.looking = False
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if self in _sys.meta_path:
                _sys.meta_path.remove(self)
            _register_models()

        spec.loader.exec_module = exec_module
        return spec


if _AUTO_MODELS in _sys.modules:
    _register_models()
elif not any(isinstance(f, _RegisterOnImport) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _RegisterOnImport())
