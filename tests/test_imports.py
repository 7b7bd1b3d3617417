"""The module graph of xlmflow has no cycles (imports inside functions count too)."""

import importlib.util
from pathlib import Path

from xlmflow.storage.fingerprint import _our_imports

ROOT = Path(__file__).resolve().parents[1]


def modules() -> list[str]:
    found = []
    for folder in ("flows", "tasks", "storage"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(("xlmflow", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return found


def graph() -> dict[str, set[str]]:
    names = set(modules())
    edges = {}
    for name in names:
        src = Path(importlib.util.find_spec(name).origin).read_text(encoding="utf-8")
        edges[name] = {m for m in _our_imports(name, src) if m in names and m != name and not name.startswith(m + ".")}
    return edges


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_imports():
    edges = graph()
    assert "xlmflow.tasks.common.tokens" in edges["xlmflow.tasks.vocab.alignment"]
    assert "xlmflow.tasks.common.parallel_sets" in edges["xlmflow.tasks.vocab.fairness"]
    assert len(modules()) > 20


def test_the_cli_and_code_versions_do_not_import_torch():
    """torch takes seconds to import: planning, cache checks and `xlmflow status` must not pay for it."""

    code = (
        "import sys, xlmflow.flows.cli, xlmflow.flows.registry\n"
        "from xlmflow.storage import code_version\n"
        "[code_version(f'xlmflow.tasks.{m}') for m in ('train', 'evaluate', 'langid', 'vocab')]\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    _python(code)


def test_a_training_process_imports_no_prefect():
    """Every training process (``python -m xlmflow.tasks.train.loop``) passes through ``xlmflow.tasks.train``;
    Prefect (~2 s of imports per process) belongs to the stage's side (:mod:`xlmflow.tasks.train.stage`) only."""

    code = (
        "import sys, xlmflow.tasks.train.loop\n"
        "assert 'prefect' not in sys.modules, 'prefect was imported'\n"
        "assert 'xlmflow.tasks.train.stage' not in sys.modules, 'the stage module was imported'\n"
        "from xlmflow.tasks import train\n"
        "assert train.STAGE == 'train' and 'prefect' in sys.modules\n"
    )
    _python(code)


def _python(code: str) -> None:
    """Run ``code`` in a fresh interpreter (imports counted from nothing); its assertions fail the test."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
