"""The code's layout: one package per stage under ``tasks/``, each holding its params and its own UI report;
upstream stages declared once; no function over 80 lines and no module over 400 in tasks/, flows/, storage/."""

import ast
import importlib
from pathlib import Path

import pytest

from xlmflow.flows.registry import STAGES
from xlmflow.storage.fingerprint import _presentation_only  # the very check code versions make

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("tasks", "flows", "storage")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400
NAMES = [s.name for s in STAGES]


def sources(*folders: str) -> list[Path]:
    return [f for folder in folders for f in sorted((ROOT / folder).rglob("*.py"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_module_over_400_lines():
    long = [
        f"{rel(f)}: {n} lines"
        for f in sources(*FOLDERS)
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, f"modules over {MAX_MODULE_LINES} lines: " + "; ".join(long)


def test_no_function_over_80_lines():
    long = []
    for f in sources(*FOLDERS):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{rel(f)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)


@pytest.mark.parametrize("name", NAMES)
def test_each_stage_package_holds_its_params_and_a_presentation_only_ui(name):
    package = ROOT / "tasks" / name
    assert (package / "__init__.py").is_file(), f"tasks/{name}/ is not a package"
    assert (package / "params.py").is_file(), f"tasks/{name}/params.py is missing"
    ui = package / "ui.py"
    assert ui.is_file(), f"tasks/{name}/ui.py is missing"
    assert _presentation_only(ast.parse(ui.read_text(encoding="utf-8"))), (
        f"tasks/{name}/ui.py does not declare PRESENTATION_ONLY = True at its top level"
    )


@pytest.mark.parametrize("stage", STAGES, ids=NAMES)
def test_each_stage_declares_what_it_reads_once(stage):
    module = importlib.import_module(f"xlmflow.tasks.{stage.name}")
    assert hasattr(module, "READS"), f"tasks/{stage.name} declares no READS"
    assert stage.reads == module.READS, f"flows/{stage.name}.py: Stage.reads is not tasks/{stage.name}'s READS"


def test_no_stage_named_by_a_literal_in_the_task_modules():
    found = []
    for f in sources("tasks"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "stage"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.append(f"{rel(f)}:{node.lineno} .stage({node.args[0].value!r})")
    found.sort()
    assert not found, "stages named by a string literal (use the stage's constants): " + "; ".join(found)
