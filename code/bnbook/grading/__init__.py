"""The exercise checker: ``check("q1")`` in a notebook, ``python -m bnbook.grading`` in a terminal.

A notebook binds a :class:`Grader` to itself in its first cell::

    from bnbook.grading import Grader
    grader = Grader("01_forward_train")
    check, score = grader.check, grader.score

``check("q2")`` looks the student's function up in the notebook's globals, runs every check of
that question on inputs drawn fresh from ``os.urandom`` and prints one line per check; a failed
check names the likely mistake when the wrong output matches a known-wrong variant computed on the
same input. ``score()`` re-runs every question and prints the points.

The package reads one way, each module importing only modules listed after it:

* :mod:`.cli` — ``grade_notebook`` and ``main``: run copies of notebooks in Jupyter kernels;
* :mod:`.grader` — :class:`Grader`, bound to one notebook;
* :mod:`.questions` — the registry, and one module ``exNN_name`` per notebook
  ``exercises/NN_name.ipynb`` holding that exercise's checks and nothing else;
* :mod:`.backward` and :mod:`.references` — checks and torch float64 references shared by
  several exercises;
* :mod:`.report` — the printed lines and tables;
* :mod:`.checks` — :class:`Question`, :class:`Check`, :class:`StudentCall`, ``compare``;
* :mod:`.sandbox` — the forked call with its deadline, trapped library norms and mutation
  detection. Grading needs ``os.fork``: without it (Windows) :class:`GradingUnavailable` says so.
"""

from bnbook.grading.checks import Check, CheckFailed, Question, StudentCall
from bnbook.grading.cli import grade_notebook, main
from bnbook.grading.grader import Grader
from bnbook.grading.report import format_question, format_table
from bnbook.grading.sandbox import GradingUnavailable, forbidden_names_in

__all__ = ["CheckFailed", "Check", "Question", "Grader", "StudentCall", "GradingUnavailable",
           "forbidden_names_in", "format_question", "format_table", "grade_notebook", "main"]
