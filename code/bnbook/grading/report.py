"""Plain-text reports: one question's checks (``check("q1")``), and the table of points.

Imports only :mod:`.checks` from the package.
"""

from __future__ import annotations

import textwrap
from typing import Any

from bnbook.grading.checks import QuestionResult

__all__ = ["format_question", "format_table"]


def format_question(result: QuestionResult) -> str:
    """One question's results as plain text, a line per check."""
    lines = [f"{result.qid}  {result.title}: {result.earned}/{result.points} points"]
    for c in result.checks:
        mark = "PASS" if c.earned == c.points else "FAIL"
        lines.append(f"  {mark}  {c.name} ({c.earned}/{c.points})")
        if c.earned != c.points:
            for para in c.message.splitlines():
                lines.append(textwrap.fill(para.strip(), width=96, initial_indent=" " * 8,
                                           subsequent_indent=" " * 8))
    return "\n".join(lines)


def format_table(reports: list[dict[str, Any]]) -> str:
    """The per-question table of one or more notebooks' reports, with totals."""
    lines = []
    total = maximum = 0
    for rep in reports:
        lines.append(f"{rep['notebook']}")
        if "error" in rep:
            lines.append(f"  could not be graded: {rep['error']}")
        for row in rep.get("questions", []):
            lines.append(f"  {row['qid']:<4} {row['title']:<46} "
                         f"{row['earned']:>3} / {row['points']}")
        lines.append(f"  {'total':<51} {rep.get('earned', 0):>3} / {rep.get('points', 0)}")
        total += rep.get("earned", 0)
        maximum += rep.get("points", 0)
    if len(reports) > 1:
        lines.append(f"{'all notebooks':<53} {total:>3} / {maximum}")
    return "\n".join(lines)
