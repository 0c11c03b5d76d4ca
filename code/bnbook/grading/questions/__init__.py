"""One module of questions per exercise notebook, found by its file name.

``exercises/NN_name.ipynb`` is graded by ``bnbook/grading/questions/exNN_name.py``, which defines
``QUESTIONS: list[Question]``. Nothing here lists the exercises: a new exercise is a new module,
found by :func:`notebooks` and imported only when its notebook is graded (so grading exercise 1
does not build the questions of exercise 8).

Imports :mod:`..checks` from the package, and each question module on demand.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from bnbook.grading.checks import Question

__all__ = ["notebooks", "questions", "all_questions", "module_name"]

_MODULE = re.compile(r"ex(\d\d_[a-z0-9_]+)")


def notebooks() -> list[str]:
    """The notebook stems that have a questions module, sorted: ``["01_forward_train", ...]``."""
    found = (_MODULE.fullmatch(m.name) for m in pkgutil.iter_modules(__path__))
    return sorted(m.group(1) for m in found if m)


def module_name(notebook: str) -> str:
    """The questions module of a notebook stem: ``"01_x"`` -> ``"bnbook.grading.questions.ex01_x"``.
    """
    return f"{__name__}.ex{notebook}"


def questions(notebook: str) -> list[Question]:
    """The questions of one exercise notebook, checked for the shape the grader relies on.

    Args:
        notebook: the notebook's file stem, e.g. ``"01_forward_train"``.

    Returns:
        The module's ``QUESTIONS``, in notebook order.

    Raises:
        ValueError: for an unknown notebook, or a module whose ``QUESTIONS`` is empty, repeats a
            question id or has a question without points.
        TypeError: when ``QUESTIONS`` is missing or holds something other than ``Question`` s.
    """
    known = notebooks()
    if notebook not in known:
        raise ValueError(f"notebook must be one of {known}, got {notebook!r}")
    name = module_name(notebook)
    qs = getattr(importlib.import_module(name), "QUESTIONS", None)
    if not isinstance(qs, list) or not all(isinstance(q, Question) for q in qs):
        raise TypeError(f"{name}.QUESTIONS must be a list of bnbook.grading.checks.Question")
    qids = [q.qid for q in qs]
    if not qs or len(set(qids)) != len(qids):
        raise ValueError(f"{name}.QUESTIONS must be non-empty with distinct qids, got {qids}")
    if any(not q.checks or q.points <= 0 for q in qs):
        raise ValueError(f"{name}: every question needs at least one check and positive points")
    return qs


def all_questions() -> dict[str, list[Question]]:
    """Every notebook's questions, keyed by notebook stem (imports every questions module)."""
    return {nb: questions(nb) for nb in notebooks()}
