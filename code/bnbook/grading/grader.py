"""The checker a notebook binds to itself: ``Grader("01_forward_train")``, ``check``, ``score``.

Imports the registry of questions, the checks, the report and the sandbox: everything below it
in :mod:`bnbook.grading`, and nothing above (the command line of :mod:`.cli`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

import bnbook.grading.questions as registry
from bnbook.grading.checks import CheckFailed, CheckResult, Question, QuestionResult, StudentCall
from bnbook.grading.report import format_question, format_table
from bnbook.grading.sandbox import forbidden_names_in, import_forbidden_modules, require_fork

__all__ = ["Grader", "DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "default_timeout"]

DEFAULT_TIMEOUT_S = 3.0
"""Seconds one call of a student function may take (wall clock) before it is stopped."""
TIMEOUT_ENV = "BNBOOK_GRADING_TIMEOUT"
"""Environment variable that overrides :data:`DEFAULT_TIMEOUT_S`, e.g. on a slow machine."""


def default_timeout() -> float:
    """The deadline of one call: ``$BNBOOK_GRADING_TIMEOUT`` if set, else 3 s.

    Raises:
        ValueError: when the variable is set to anything but a positive number of seconds.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def _fresh_rng() -> np.random.Generator:
    # Fresh every run, so an answer cannot be a table of memorised outputs.
    return np.random.default_rng(int.from_bytes(os.urandom(8), "little") ^ time.time_ns())


_active: list[Grader] = []


class Grader:
    """The checker bound to one exercise notebook.

    Args:
        notebook: the notebook's stem, e.g. ``"01_forward_train"``; selects its questions.
        namespace: where the student's functions live; defaults to the caller's globals (the
            notebook's), read afresh at every check so that redefined functions are seen.
        timeout: seconds one call of a student function may take before it is stopped;
            default :func:`default_timeout` (3 s unless ``$BNBOOK_GRADING_TIMEOUT`` says more).
        verbose: print the per-check lines (``score`` prints only the table when False).

    Raises:
        ValueError: for a notebook without a questions module.
        GradingUnavailable: on a platform without ``os.fork`` (the grader needs it).
    """

    def __init__(self, notebook: str, namespace: dict[str, Any] | None = None,
                 timeout: float | None = None, verbose: bool = True) -> None:
        qs = registry.questions(notebook)
        require_fork()
        if namespace is None:
            namespace = sys._getframe(1).f_globals
        # Imported here so that every child process inherits them and can trap them.
        import_forbidden_modules()
        self.notebook = notebook
        self.questions: dict[str, Question] = {q.qid: q for q in qs}
        self.namespace = namespace
        self.timeout = float(default_timeout() if timeout is None else timeout)
        self.verbose = verbose
        self.results: dict[str, QuestionResult] = {}
        _active.append(self)

    def run_question(self, qid: str) -> QuestionResult:
        """Grade one question without printing.

        Args:
            qid: the question id, e.g. ``"q1"``.

        Returns:
            The per-check results.
        """
        if qid not in self.questions:
            raise ValueError(f"qid must be one of {list(self.questions)}, got {qid!r}")
        q = self.questions[qid]
        result = QuestionResult(qid, q.title)
        fn = self.namespace.get(q.function)
        refusal = None
        if fn is None or not callable(fn):
            refusal = f"`{q.function}` is not defined: run the cell that defines it first."
        elif q.forbid_library_norms and (names := forbidden_names_in(fn)):
            refusal = (f"{q.function} uses {', '.join(names)}. This exercise is about writing "
                       "the normalisation yourself: use NumPy operations, not a library's layer.")
        for chk in q.checks:
            if refusal is not None:
                result.checks.append(CheckResult(chk.name, chk.points, 0, refusal))
                continue
            call = StudentCall(fn, q.function, self.timeout, q.forbid_library_norms)
            try:
                chk.run(call, _fresh_rng())
                earned, message = chk.points, "correct"
            except CheckFailed as exc:
                earned, message = 0, str(exc)
            except Exception as exc:  # noqa: BLE001 - a grader must never crash the notebook
                earned, message = 0, (f"could not be checked ({type(exc).__name__}: {exc}); "
                                      "look at the type and shape your function returns.")
            if call.printed and earned == 0:
                message += "\nyour function printed: " + call.printed[-1].strip()[-300:]
            result.checks.append(CheckResult(chk.name, chk.points, earned, message))
        self.results[qid] = result
        return result

    def check(self, qid: str) -> None:
        """Grade one question and print a line per check (results stay in ``self.results``).

        Args:
            qid: the question id, e.g. ``"q1"``.
        """
        result = self.run_question(qid)
        if self.verbose:
            print(format_question(result))

    def score(self) -> None:
        """Re-grade every question and print the table of points (data: :meth:`report`)."""
        for qid in self.questions:
            self.run_question(qid)
        if self.verbose:
            print(format_table([self.report()]))

    def report(self) -> dict[str, Any]:
        """The latest results as a plain dict (questions never graded count zero).

        Returns:
            ``{"notebook", "questions": [{"qid", "title", "earned", "points"}], "earned",
            "points"}``.
        """
        rows = []
        for qid, q in self.questions.items():
            r = self.results.get(qid)
            rows.append({"qid": qid, "title": q.title, "points": q.points,
                         "earned": r.earned if r else 0})
        return {"notebook": self.notebook, "questions": rows,
                "earned": sum(r["earned"] for r in rows), "points": sum(r["points"] for r in rows)}

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(f"Grader({self.notebook!r}, {len(self.questions)} questions)")


def latest() -> Grader | None:
    """The grader the running notebook created last (what the command line reports on)."""
    return _active[-1] if _active else None
