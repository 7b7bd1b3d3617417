"""The code part of cache keys: code counts, docstrings, comments, formatting and presentation do not.

Each test builds a synthetic package in a temporary folder (not the real tasks/ tree, whose layout
may change): a stage package whose ``__init__`` does not import its training loop, a shared package
with a presentation-only progress display and a module that shapes output.
"""

import importlib
import sys
import textwrap

import pytest

from xlmflow.storage import fingerprint as fpmod

FILES = {
    "__init__.py": "",
    "stage/__init__.py": '''
        """The stage: writes rows."""
        from cvpkg.common import progress
        from cvpkg.common.shape import shape


        def run(rows):
            """Run the stage."""
            progress.show(len(rows))
            return [shape(r) for r in rows]
        ''',
    "stage/loop.py": '''
        """The training loop, not imported by the stage's __init__."""
        from cvpkg.common.optim import RATE


        def step(x):
            """One step."""
            return x + RATE


        class Trainer:
            """Trains."""

            async def fit(self, xs):
                """Fits."""
                return [step(x) for x in xs]
        ''',
    "common/__init__.py": "",
    "common/shape.py": '''
        """Shapes output rows."""


        def shape(row):
            return row.strip()
        ''',
    "common/optim.py": '''
        """Imported only by the training loop."""
        RATE = 1
        ''',
    "common/progress.py": '''
        """Progress display for a person at a terminal."""
        from cvpkg.common import colours

        PRESENTATION_ONLY = True


        def show(n):
            print(f"{n} rows")
        ''',
    "common/colours.py": '''
        """Only the progress display imports this."""
        GREEN = "green"
        ''',
}


def _clear():
    for cached in (fpmod.code_version, fpmod._module_source, fpmod._locate, fpmod._find_spec):
        cached.cache_clear()
    importlib.invalidate_caches()


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """Writes the synthetic package ``cvpkg``; returns a function that rewrites one of its files."""
    root = tmp_path / "cvpkg"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "cvpkg" or m.startswith("cvpkg.")]:
        monkeypatch.delitem(sys.modules, name)
    _clear()

    def edit(rel, old, new):
        path = root / rel
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {rel}"
        path.write_text(text.replace(old, new), encoding="utf-8")
        _clear()  # a process reads its code once; these tests edit it in between

    yield edit
    _clear()


def version():
    return fpmod.code_version("cvpkg.stage")


def test_a_docstring_edit_keeps_the_version(pkg):
    before = version()
    pkg("stage/__init__.py", '"""The stage: writes rows."""', '"""The stage: writes rows, reworded."""')
    pkg("stage/loop.py", '"""One step."""', '"""One step.\n\n    Now documented at length.\n    """')
    pkg("stage/loop.py", '"""Fits."""', '"""Fits the model."""')
    pkg("stage/loop.py", '"""Trains."""\n', "")  # a class docstring dropped altogether
    pkg("common/shape.py", '"""Shapes output rows."""\n', "")  # a module docstring dropped
    pkg("common/shape.py", "return row.strip()", '"""Added."""\n    return row.strip()')  # one added
    assert version() == before


def test_comments_and_formatting_keep_the_version(pkg):
    before = version()
    pkg("stage/loop.py", "return x + RATE", "return (x +\n            RATE)  # one more")
    pkg("stage/__init__.py", "def run(rows):", "# the stage's entry point\ndef run(  rows, ):")
    pkg("common/shape.py", "\n\n\ndef shape", "\n# shaping\n\n\n\ndef shape")
    assert version() == before


def test_the_presentation_module_is_left_out_even_its_code(pkg):
    before = version()
    pkg("common/progress.py", 'print(f"{n} rows")', 'print(f"{n:,} rows done")\n    return n')
    pkg("common/progress.py", "def show(n):", "def bar(n):\n    return '#' * n\n\n\ndef show(n):")
    pkg("common/colours.py", 'GREEN = "green"', 'GREEN = "bright_green"')  # imported only by the display
    assert version() == before


def test_a_function_body_in_an_unimported_submodule_counts(pkg):
    before = version()
    pkg("stage/loop.py", "return x + RATE", "return x + 2 * RATE")
    assert version() != before


def test_a_change_in_an_imported_module_counts(pkg):
    before = version()
    pkg("common/shape.py", "return row.strip()", "return row.strip().lower()")
    assert version() != before


def test_a_module_imported_only_by_an_unimported_submodule_counts(pkg):
    before = version()
    pkg("common/optim.py", "RATE = 1", "RATE = 2")
    assert version() != before


def test_a_module_that_stops_being_presentation_counts(pkg):
    before = version()
    pkg("common/progress.py", "PRESENTATION_ONLY = True", "PRESENTATION_ONLY = False")
    assert version() != before


def test_a_new_submodule_counts(pkg, tmp_path):
    before = version()
    (tmp_path / "cvpkg/stage/extra.py").write_text("X = 1\n", encoding="utf-8")
    _clear()
    assert version() != before


def test_code_versions_import_nothing(pkg):
    version()
    assert not [m for m in sys.modules if m == "cvpkg" or m.startswith("cvpkg.")]


def test_canonical_code_ignores_docstrings_and_layout():
    a = 'def f(x):\n    """Doc."""\n    return x  # note\n'
    b = "def f(x):\n\n    return (x)\n"
    assert fpmod._code_hash(a) == fpmod._code_hash(b)
    assert fpmod._code_hash('def f():\n    """Only a docstring."""\n') == fpmod._code_hash("def f():\n    pass\n")
    assert fpmod._code_hash(a) != fpmod._code_hash(a.replace("return x", "return -x"))
    assert fpmod._code_hash("X = 'not a docstring'\n") != fpmod._code_hash("X = 'changed'\n")
    assert fpmod._code_hash("PRESENTATION_ONLY = True\n")[1]
    assert fpmod._code_hash("PRESENTATION_ONLY: bool = True\n")[1]
    assert not fpmod._code_hash("PRESENTATION_ONLY = False\n")[1]
    assert not fpmod._code_hash("def f():\n    PRESENTATION_ONLY = True\n")[1]


def test_the_real_stages_ignore_the_progress_display_and_ui_reports_and_see_their_code(monkeypatch):
    """On xlmflow itself: a code edit to the progress display or a stage's UI report, or a docstring edit to a
    stage module, leaves every stage's version as it was (``xlmflow status`` stays current); a body edit to
    a stage's own submodule changes that stage's version only."""
    from xlmflow.flows.registry import STAGES

    cached = fpmod._module_source

    def versions():
        cached.cache_clear()
        fpmod.code_version.cache_clear()
        return {s.name: fpmod.code_version(f"xlmflow.tasks.{s.name}") for s in STAGES}

    real = fpmod._module_source.__wrapped__
    before = versions()

    def edited(changes):
        def source(name):
            src = real(name)
            return changes[name](src) if src is not None and name in changes else src

        return source

    cosmetic = {
        "xlmflow.tasks.common.progress": lambda s: s + "\nBAR_WIDTH = 99\n",
        **{f"xlmflow.tasks.{s.name}.ui": (lambda s: s + "\nEXTRA = 1\n") for s in STAGES},
        "xlmflow.tasks.train.loop": lambda s: s.replace('"""', '"""Edited. ', 1),
    }
    monkeypatch.setattr(fpmod, "_module_source", edited(cosmetic))
    assert versions() == before
    monkeypatch.setattr(fpmod, "_module_source", edited({"xlmflow.tasks.train.loop": lambda s: s + "\nX = 1\n"}))
    after = versions()
    # the training loop's code is train's, and finetune's (its loop imports the step, loss and schedule), no other's
    assert {k for k in after if after[k] != before[k]} == {"train", "finetune"}
    monkeypatch.undo()
    versions()
