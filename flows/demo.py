"""The bundled demo's settings: the only place that names the demo corpus and its parallel sets.

Used only for a run directory that records no configuration yet, run with neither ``--config`` nor
``--source`` (``PipelineConfig.for_run``), or by a stage flow called without parameters on such a run
directory; ``data/`` ships as package data, so both work after ``pip install .`` too.
"""

from __future__ import annotations

from typing import Any

# ``package:`` paths resolve inside the installed package (storage.resolve): a deployment's run form shows
# these, not the absolute paths of the machine that deployed it
DEMO_CORPUS = "package:data/demo"
DEMO_PARALLEL = "package:data/parallel"

DEMO: dict[str, Any] = {
    "parallel": [DEMO_PARALLEL],
    "ingest": {
        "sources": [
            {"path": f"{DEMO_CORPUS}/*.jsonl.zst", "format": "jsonl", "text_field": "text", "lang_field": "lang"}
        ]
    },
    # a 4k vocabulary, not the default 16k: the demo's 2 x 128 model learns more in its CPU budget with it (a step
    # is ~3x cheaper; bench/sweep_demo.py, bench/RESULTS.md "Demo training")
    "vocab": {"vocab_size": 4000},
    # fine-tuning in about a minute on 2 cores: translation on short examples (most UI strings fit 64 tokens), one
    # classifier (the LibreOffice modules; the handbook's chapters are many and small), a small model's lr
    "finetune": {
        "max_steps": 200,
        "max_len": 64,
        "lr": 2e-3,
        "classify_steps": 150,
        "classify_sets": ["libreoffice-help"],
    },
}
