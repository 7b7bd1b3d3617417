"""The bundled demo's settings: the only place that names the demo corpus and its parallel sets.

Used when neither ``--config`` nor ``--source`` is given (``PipelineConfig.demo()``) and by a stage flow
called without parameters (``Stage.demo()``); ``data/`` ships as package data, so both work after
``pip install .`` too.
"""

from __future__ import annotations

from typing import Any

from xlmflow import PACKAGE_ROOT

DEMO_CORPUS = PACKAGE_ROOT / "data" / "demo"
DEMO_PARALLEL = PACKAGE_ROOT / "data" / "parallel"

DEMO: dict[str, Any] = {
    "parallel": [str(DEMO_PARALLEL)],
    "ingest": {
        "sources": [
            {"path": str(DEMO_CORPUS / "*.jsonl.zst"), "format": "jsonl", "text_field": "text", "lang_field": "lang"}
        ]
    },
}
