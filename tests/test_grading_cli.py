"""``python -m bnbook.grading``: it grades copies in Jupyter kernels, prints a table of points, and
never writes to a student's notebook."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from bnbook.grading.grader import TIMEOUT_ENV
from bnbook.grading.questions import questions

sys.path.insert(0, str(Path(__file__).resolve().parent / "solutions"))
from grading_harness import TIMEOUT_S, filled  # noqa: E402

# Two kernels start, import torch and grade: on a loaded 2-core machine that has taken over a
# minute; the bound only has to catch a hang.
CLI_BOUND_S = 900


def test_cli_grades_copies_and_prints_a_table(tmp_path: Path) -> None:
    # One notebook fully solved, one half solved, executed end to end in Jupyter kernels.
    full, half = tmp_path / "01_forward_train.ipynb", tmp_path / "02_running_stats.ipynb"
    nbformat.write(filled("01_forward_train"), full)
    nbformat.write(filled("02_running_stats", {"q1"}), half)
    before = {}
    for p in (full, half):
        os.utime(p, (1_600_000_000, 1_600_000_000))  # an old mtime, so a rewrite would show
        before[p] = (p.read_bytes(), p.stat().st_mtime_ns)
    env = dict(os.environ, **{TIMEOUT_ENV: str(TIMEOUT_S)})  # kernels inherit it
    proc = subprocess.run([sys.executable, "-m", "bnbook.grading", str(full), str(half)],
                          capture_output=True, text=True, timeout=CLI_BOUND_S, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    for p in (full, half):
        assert (p.read_bytes(), p.stat().st_mtime_ns) == before[p]
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([full.name, half.name])
    table = proc.stdout
    pts = {q.qid: q.points for q in questions("02_running_stats")}
    total1 = sum(q.points for q in questions("01_forward_train"))
    assert re.search(rf"01_forward_train\n(.*\n)*?\s+total\s+{total1} / {total1}", table), table
    assert re.search(rf"q1\s+Running statistics.*\s{pts['q1']} / {pts['q1']}", table), table
    assert re.search(rf"q2\s+momentum=None.*\s0 / {pts['q2']}", table), table
    both = total1 + sum(pts.values())
    assert re.search(rf"all notebooks\s+{total1 + pts['q1']} / {both}", table), table


@pytest.mark.parametrize("args", [["{tmp}/nope.txt"], ["{tmp}"]], ids=["missing", "empty folder"])
def test_cli_rejects_what_it_cannot_grade(tmp_path: Path, args: list[str]) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-m", "bnbook.grading", *argv],
                          capture_output=True, text=True, timeout=CLI_BOUND_S)
    assert proc.returncode == 2
    assert re.search(r"not a notebook or folder|no exercise notebooks found", proc.stderr)
