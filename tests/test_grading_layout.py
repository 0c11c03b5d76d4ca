"""The grader's package reads one way, and finds its exercises by file name.

Layers, from the bottom: sandbox -> checks -> (references, report) -> backward -> one questions
module per exercise -> the questions registry -> grader -> cli -> the package -> __main__. A module
may import only modules of lower layers, so the checks of exercise N sit beside nothing else.
"""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

import bnbook.grading
import bnbook.grading.questions as registry
from bnbook.grading.checks import Question

PACKAGE = Path(bnbook.grading.__file__).parent
LAYERS = [
    ["sandbox"],
    ["checks"],
    ["references", "report"],
    ["backward"],
    ["questions.ex[0-9][0-9]_*"],
    ["questions"],
    ["grader"],
    ["cli"],
    [""],  # the package's __init__
    ["__main__"],
]


def _name(path: Path) -> str:
    """``questions/ex01_x.py`` -> ``questions.ex01_x``; an ``__init__.py`` names its package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(name: str) -> int:
    for i, patterns in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return i
    raise AssertionError(f"bnbook.grading.{name} has no layer: add it to LAYERS in this test")


def _imports(path: Path) -> set[str]:
    """The modules of bnbook.grading that a file imports, relative names ('' is the package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: write absolute imports (bnbook.grading...)"
            mods = [node.module or ""]
            # ``from bnbook.grading import questions`` imports a submodule, not the package.
            mods += [f"{node.module}.{a.name}" for a in node.names
                     if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        else:
            continue
        for mod in mods:
            if mod == "bnbook.grading" or mod.startswith("bnbook.grading."):
                found.add(mod.removeprefix("bnbook.grading").lstrip("."))
    if "" in found and any(m for m in found):  # a submodule import, not the package itself
        found.discard("")
    return found


def test_imports_run_one_way() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        me = _name(path)
        for other in _imports(path):
            assert _layer(other) < _layer(me), (
                f"bnbook.grading.{me} imports bnbook.grading.{other or '(the package)'}, "
                "which is not below it")


def test_old_two_module_grader_is_gone() -> None:
    assert not (PACKAGE.parent / "grading.py").exists()
    assert not (PACKAGE.parent / "exercise_checks.py").exists()


def test_importing_the_package_does_not_import_the_questions() -> None:
    # A fresh interpreter: the command line and `import bnbook.grading` load no exercise's
    # checks (nor torch); a notebook's Grader imports only its own exercise's module.
    code = ("import sys, bnbook\n"
            "had_torch = 'torch' in sys.modules  # bnbook itself may import it; grading need not\n"
            "import bnbook.grading as g\n"
            "assert not any('.questions.ex' in m for m in sys.modules), 'eager questions'\n"
            "assert had_torch or 'torch' not in sys.modules, 'torch imported'\n"
            "g.Grader('02_running_stats', namespace={})\n"
            "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if '.questions.ex' in m))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.split() == ["['ex02_running_stats']"]


# ---------------------------------------------------------------------------- discovery


def test_a_new_questions_module_is_found_by_its_name(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ex99_demo_exercise.py").write_text(
        "from bnbook.grading.checks import Check, Question\n"
        "checks = [Check('runs', 1, lambda call, rng: None)]\n"
        "QUESTIONS = [Question('q1', 'Demo', 'demo', checks)]\n")
    (tmp_path / "helpers_not_an_exercise.py").write_text("X = 1\n")
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    assert "99_demo_exercise" in registry.notebooks()
    assert "helpers_not_an_exercise" not in " ".join(registry.notebooks())
    qs = registry.questions("99_demo_exercise")
    assert [q.qid for q in qs] == ["q1"] and isinstance(qs[0], Question)
    sys.modules.pop("bnbook.grading.questions.ex99_demo_exercise", None)


@pytest.mark.parametrize(("body", "error", "match"), [
    ("X = 1\n", TypeError, "QUESTIONS must be a list"),
    ("QUESTIONS = []\n", ValueError, "non-empty with distinct qids"),
    ("from bnbook.grading.checks import Check, Question\n"
     "c = [Check('c', 1, lambda call, rng: None)]\n"
     "QUESTIONS = [Question('q1', 'A', 'a', c), Question('q1', 'B', 'b', c)]\n",
     ValueError, "distinct qids"),
    ("from bnbook.grading.checks import Question\n"
     "QUESTIONS = [Question('q1', 'A', 'a', [])]\n", ValueError, "at least one check"),
], ids=["no QUESTIONS", "empty", "repeated qid", "no checks"])
def test_a_malformed_questions_module_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               body: str, error: type, match: str) -> None:
    (tmp_path / "ex98_broken.py").write_text(body)
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    sys.modules.pop("bnbook.grading.questions.ex98_broken", None)
    try:
        with pytest.raises(error, match=match):
            registry.questions("98_broken")
    finally:
        sys.modules.pop("bnbook.grading.questions.ex98_broken", None)
