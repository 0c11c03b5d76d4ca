"""What the grading tests share: the exercises found on disk and ways to run planted answers.

An exercise is found by its files, never by a list: ``exercises/NN_name.ipynb``, its questions
module ``bnbook/grading/questions/exNN_name.py``, its reference solution ``sNN_name.py`` and its
planted mistakes ``wrong_NN_name.py`` (both in this folder).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import linecache
from pathlib import Path
from typing import Any

import nbformat

from bnbook.grading.questions import questions

ROOT = Path(__file__).resolve().parents[2]
EXERCISES = ROOT / "exercises"
SOLUTIONS = Path(__file__).resolve().parent
TIMEOUT_S = 120.0
"""Deadline of one student call in the tests: no loaded machine takes this long for a correct
answer, and a test about the deadline itself sets its own short one."""


def exercise_stems() -> list[str]:
    """The stems of the exercise notebooks on disk, ``NN_name``, sorted."""
    return sorted(p.stem for p in EXERCISES.glob("[0-9][0-9]_*.ipynb"))


def register(source: str, tag: str) -> str:
    """Give exec'd source a file name inspect.getsource can read, as IPython does for cells."""
    filename = f"<student-{tag}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return filename


def define(source: str, tag: str, **names: Any) -> dict[str, Any]:
    """Run a student's source in a fresh namespace (holding ``names``) and return it."""
    ns: dict[str, Any] = dict(names)
    exec(compile(source, register(source, tag), "exec"), ns)
    return ns


def solution_sources(stem: str) -> dict[str, str]:
    """Each function of ``s<stem>.py``, by name, as source text."""
    text = (SOLUTIONS / f"s{stem}.py").read_text()
    tree = ast.parse(text)
    return {node.name: ast.get_source_segment(text, node) for node in tree.body
            if isinstance(node, ast.FunctionDef)}


def wrong_cases(stem: str) -> list[tuple[str, str, str]]:
    """The planted mistakes of one exercise: ``(qid, source, phrase)`` from ``wrong_<stem>.py``."""
    path = SOLUTIONS / f"wrong_{stem}.py"
    spec = importlib.util.spec_from_file_location(f"wrong_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.WRONG)


def read_notebook(stem: str) -> nbformat.NotebookNode:
    return nbformat.read(EXERCISES / f"{stem}.ipynb", as_version=4)


def filled(stem: str, solve: set[str] | None = None) -> nbformat.NotebookNode:
    """The blank notebook with the reference solution put into the answer cells of ``solve``."""
    nb = read_notebook(stem)
    sources = solution_sources(stem)
    for q in questions(stem):
        if solve is not None and q.qid not in solve:
            continue
        cells = [c for c in nb.cells if f"answer-{q.qid}" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{stem} {q.qid}: one answer cell expected"
        cells[0].source = sources[q.function]
    return nb


def run_in_process(nb: nbformat.NotebookNode, tag: str) -> tuple[dict[str, Any], str]:
    """Execute the code cells top to bottom in one fresh namespace, as a kernel would.

    Returns:
        The namespace and everything printed.
    """
    ns: dict[str, Any] = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                exec(compile(cell.source, register(cell.source, f"{tag}-{i}"), "exec"), ns)
    return ns, out.getvalue()
