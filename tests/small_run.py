"""The small pipeline run shared by the tests that only read it (the ``small_run`` fixture, tests/conftest.py).

The demo's documents (the first :data:`DOCS_PER_LANGUAGE` of three languages) under a user's configuration
and a tiny model. It runs once per session as ``xlmflow run --verbose`` with a secret in the environment,
``PREFECT_API_URL`` unset and a ``PREFECT_HOME`` of its own (so its temporary Prefect server and that
server's database are its own): tests/test_canary.py searches everything it wrote for the secret, and
tests/test_kill.py compares its killed and resumed runs with it, byte for byte.
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from xlmflow import PACKAGE_ROOT

sys.path.insert(0, str(PACKAGE_ROOT / "bench"))
from kill_pipeline import timed_run  # noqa: E402

LANGUAGES = ("en", "fr", "de")
DOCS_PER_LANGUAGE = 400  # of the demo's 3032: over 300 clean documents in all, a second or two per data stage

CONFIG = """
[[ingest.sources]]
path = "{corpus}"
[vocab]
vocab_size = 1000
[shard]
shard_docs = 200
[train]
max_steps = 8
batch_size = 4
eval_every = 4
eval_blocks = 2
checkpoint_every = 2
model = {{ n_layer = 1, n_head = 2, n_embd = 32, n_positions = 64 }}
[evaluate]
max_docs = 20
max_segments = 50
probe_rows = 50
prompts = 1
gen_tokens = 4
translate_segments = 2
"""


def small_config(folder: Path) -> str:
    """The corpus (``folder/corpus``: the first documents of the demo's files, still .jsonl.zst) and the TOML
    configuration (``folder/xlmflow.toml``); returns the configuration's path."""
    import zstandard

    corpus = Path(folder, "corpus")
    corpus.mkdir(parents=True)
    for lang in LANGUAGES:
        demo = PACKAGE_ROOT / "data" / "demo" / f"debian-handbook-{lang}.jsonl.zst"
        with zstandard.ZstdDecompressor().stream_reader(demo.open("rb")) as r:
            lines = io.TextIOWrapper(r, encoding="utf-8").readlines()[:DOCS_PER_LANGUAGE]
        (corpus / demo.name).write_bytes(zstandard.ZstdCompressor().compress("".join(lines).encode()))
    config = Path(folder, "xlmflow.toml")
    config.write_text(CONFIG.format(corpus=corpus))
    return str(config)


@dataclass
class SmallRun:
    config: str  # the TOML file the run read
    run_dir: Path  # a finished run, never interrupted
    home: Path  # its PREFECT_HOME: its temporary server's database of flow runs, task runs, logs
    canary: str  # the secret its environment held
    output: str  # what it printed (stdout and stderr)
    took: dict[str, float]  # seconds per stage


def run_small(folder: Path) -> SmallRun:
    config = small_config(folder)
    canary = f"canary-{uuid.uuid4().hex}"
    home = folder / "prefect-home"
    env = {
        **os.environ,
        "XLMFLOW_TEST_SECRET": canary,
        "HF_TOKEN": canary,
        "PREFECT_HOME": str(home),
        "XLMFLOW_PREFECT_HOME": str(home),
    }
    env.pop("PREFECT_API_URL", None)  # as a user without a server: a temporary one, its database in `home`
    with open(folder / "output.txt", "w+", encoding="utf-8") as out:
        took = timed_run(str(folder / "run"), config, env=env, flags=("--verbose",), out=out)
        out.seek(0)
        output = out.read()
    return SmallRun(config, folder / "run", home, canary, output, took)
