"""The exercise grader: blank notebooks score 0, reference solutions full marks, planted mistakes
get the feedback meant for them, misbehaving functions get zero, and the command line never
writes to a student's notebook."""

from __future__ import annotations

import ast
import contextlib
import io
import linecache
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
import torch

from bnbook.exercise_checks import QUESTIONS
from bnbook.grading import Grader, forbidden_names_in

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"
SOLUTIONS = ROOT / "tests" / "solutions"
sys.path.insert(0, str(SOLUTIONS))
from wrong import MISBEHAVING, WRONG  # noqa: E402

NOTEBOOKS = sorted(QUESTIONS)


def _register(source: str, tag: str) -> str:
    """Give exec'd source a file name inspect.getsource can read, as IPython does for cells."""
    filename = f"<student-{tag}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return filename


def _solution_sources(stem: str) -> dict[str, str]:
    """Each function of tests/solutions/s<stem>.py, by name, as source text."""
    text = (SOLUTIONS / f"s{stem}.py").read_text()
    tree = ast.parse(text)
    return {node.name: ast.get_source_segment(text, node) for node in tree.body
            if isinstance(node, ast.FunctionDef)}


def _filled(stem: str, solve: set[str] | None = None) -> nbformat.NotebookNode:
    """The blank notebook with the reference solution put into the answer cells of ``solve``."""
    nb = nbformat.read(EXERCISES / f"{stem}.ipynb", as_version=4)
    sources = _solution_sources(stem)
    for q in QUESTIONS[stem]:
        if solve is not None and q.qid not in solve:
            continue
        cells = [c for c in nb.cells if f"answer-{q.qid}" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{stem} {q.qid}: one answer cell expected"
        cells[0].source = sources[q.function]
    return nb


def _run_in_process(nb: nbformat.NotebookNode, tag: str) -> tuple[dict[str, Any], str]:
    """Execute the code cells top to bottom in one fresh namespace, as a kernel would.

    Returns the namespace and everything printed.
    """
    ns: dict[str, Any] = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                exec(compile(cell.source, _register(cell.source, f"{tag}-{i}"), "exec"), ns)
    return ns, out.getvalue()


def test_notebooks_match_their_questions() -> None:
    for stem in NOTEBOOKS:
        nb = nbformat.read(EXERCISES / f"{stem}.ipynb", as_version=4)
        assert nb.cells[0].source.startswith("# "), stem
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert f'Grader("{stem}")' in code[0]
        assert code[-1] == "score()"
        for q in QUESTIONS[stem]:
            assert f'check("{q.qid}")' in code, (stem, q.qid)
        for c in nb.cells:  # stored without outputs, and no solution in a student notebook
            assert c.get("outputs", []) == [] and c.get("execution_count") is None
            if "answer-" in " ".join(c.metadata.get("tags", [])):
                assert "NotImplementedError" in c.source


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_blank_notebook_runs_and_scores_zero(stem: str) -> None:
    ns, printed = _run_in_process(nbformat.read(EXERCISES / f"{stem}.ipynb", as_version=4),
                                  f"blank-{stem}")
    report = ns["grader"].report()
    assert report["earned"] == 0
    assert report["points"] == sum(q.points for q in QUESTIONS[stem]) > 0
    assert printed.count("not attempted yet") >= len(QUESTIONS[stem])
    assert re.search(rf"total\s+0 / {report['points']}", printed)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_filled_notebook_scores_full_marks(stem: str) -> None:
    ns, printed = _run_in_process(_filled(stem), f"filled-{stem}")
    report = ns["grader"].report()
    failures = [(q, c.message) for q, r in ns["grader"].results.items() for c in r.checks
                if c.earned < c.points]
    assert report["earned"] == report["points"], failures
    assert "FAIL" not in printed


@pytest.mark.parametrize("case", range(len(WRONG)),
                         ids=[f"{w[0][:2]}-{w[1]}-{w[3][:24]}" for w in WRONG])
def test_planted_mistake_gets_its_feedback(case: int) -> None:
    stem, qid, source, phrase = WRONG[case]
    ns: dict[str, Any] = {"np": np, "torch": torch}
    exec(compile(source, _register(source, f"wrong-{case}"), "exec"), ns)
    result = Grader(stem, namespace=ns, verbose=False).run_question(qid)
    messages = [c.message for c in result.checks if c.earned < c.points]
    assert result.earned < result.points
    assert any(phrase in m for m in messages), messages


@pytest.mark.parametrize("case", range(len(MISBEHAVING)), ids=[m[0] for m in MISBEHAVING])
def test_misbehaving_function_gets_zero_and_a_clear_message(case: int) -> None:
    label, source, phrase = MISBEHAVING[case]
    ns: dict[str, Any] = {"np": np, "torch": torch}
    exec(compile(source, _register(source, f"bad-{case}"), "exec"), ns)
    grader = Grader("01_forward_train", namespace=ns, timeout=0.5, verbose=False)
    result = grader.run_question("q2")
    assert result.earned == 0
    assert all(phrase in c.message for c in result.checks), [c.message for c in result.checks]
    assert "Traceback" not in " ".join(c.message for c in result.checks)


def test_raising_function_names_its_line() -> None:
    source = "def batch_stats(x):\n    m = x.mean(0)\n    return m, 1 / 0\n"
    ns: dict[str, Any] = {}
    exec(compile(source, _register(source, "zero"), "exec"), ns)
    result = Grader("01_forward_train", namespace=ns, verbose=False).run_question("q1")
    assert result.earned == 0
    assert "ZeroDivisionError" in result.checks[0].message
    assert "line 3: `return m, 1 / 0`" in result.checks[0].message


def test_missing_function_and_bad_arguments() -> None:
    grader = Grader("02_running_stats", namespace={"update_running_stats": 3}, verbose=False)
    assert "is not defined" in grader.run_question("q1").checks[0].message
    grader.score()
    assert grader.report()["earned"] == 0
    with pytest.raises(ValueError, match="notebook must be one of"):
        Grader("99_nothing", namespace={})
    with pytest.raises(ValueError, match="qid must be one of"):
        grader.run_question("q7")


def test_source_scan_ignores_comments_and_strings() -> None:
    source = ('def f(x):\n    # like F.batch_norm, but by hand\n    s = "nn.BatchNorm1d"\n'
              "    return x\n"
              "def g(x):\n    return torch.nn.functional.layer_norm(x, x.shape[-1:])\n")
    ns: dict[str, Any] = {"torch": torch}
    exec(compile(source, _register(source, "scan"), "exec"), ns)
    assert forbidden_names_in(ns["f"]) == []
    assert forbidden_names_in(ns["g"]) == ["layer_norm"]


def test_inputs_are_fresh_on_every_run(tmp_path: Path) -> None:
    # The student function runs in a child process; it leaves the input it saw in a file.
    log = tmp_path / "seen.txt"
    source = (f"def batch_stats(x):\n    open({str(log)!r}, 'a').write(repr(x.sum()) + '\\n')\n"
              "    return x.mean(0), x.var(0)\n")
    ns: dict[str, Any] = {}
    exec(compile(source, _register(source, "fresh"), "exec"), ns)
    grader = Grader("01_forward_train", namespace=ns, verbose=False)
    grader.run_question("q1")
    grader.run_question("q1")
    seen = log.read_text().split()
    assert len(seen) == 4 and len(set(seen)) == 4


def test_cli_grades_copies_and_prints_a_table(tmp_path: Path) -> None:
    # One notebook fully solved, one half solved, executed end to end in Jupyter kernels.
    full, half = tmp_path / "01_forward_train.ipynb", tmp_path / "02_running_stats.ipynb"
    nbformat.write(_filled("01_forward_train"), full)
    nbformat.write(_filled("02_running_stats", {"q1"}), half)
    before = {}
    for p in (full, half):
        os.utime(p, (1_600_000_000, 1_600_000_000))  # an old mtime, so a rewrite would show
        before[p] = (p.read_bytes(), p.stat().st_mtime_ns)
    proc = subprocess.run([sys.executable, "-m", "bnbook.grading", str(full), str(half)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for p in (full, half):
        assert (p.read_bytes(), p.stat().st_mtime_ns) == before[p]
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([full.name, half.name])
    table = proc.stdout
    pts = {q.qid: q.points for q in QUESTIONS["02_running_stats"]}
    total1 = sum(q.points for q in QUESTIONS["01_forward_train"])
    assert re.search(rf"01_forward_train\n(.*\n)*?\s+total\s+{total1} / {total1}", table), table
    assert re.search(rf"q1\s+Running statistics.*\s{pts['q1']} / {pts['q1']}", table), table
    assert re.search(rf"q2\s+momentum=None.*\s0 / {pts['q2']}", table), table
    both = total1 + sum(pts.values())
    assert re.search(rf"all notebooks\s+{total1 + pts['q1']} / {both}", table), table


def test_cli_rejects_a_missing_path(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bnbook.grading", str(tmp_path / "nope.txt")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a notebook or folder" in proc.stderr


def test_never_returning_function_is_stopped_quickly() -> None:
    import time

    source = "def batch_stats(x):\n    import time\n    time.sleep(60)\n"
    ns: dict[str, Any] = {}
    exec(compile(source, _register(source, "sleep"), "exec"), ns)
    t0 = time.monotonic()
    result = Grader("01_forward_train", namespace=ns, timeout=0.3,
                    verbose=False).run_question("q1")
    assert time.monotonic() - t0 < 5
    assert result.earned == 0 and "did not return within 0.3 s" in result.checks[0].message


def test_index_table_matches_the_questions() -> None:
    text = (EXERCISES / "index.md").read_text()
    # columns: notebook | covers | questions | points | read first
    rows = re.findall(r"^\| \[Exercise \d\]\((\w+)\.ipynb\) \| .* \| (\d+) \| (\d+) \| [^|]+ \|$",
                      text, flags=re.MULTILINE)
    assert [r[0] for r in rows] == NOTEBOOKS
    for stem, n_questions, points in rows:
        assert int(n_questions) == len(QUESTIONS[stem])
        assert int(points) == sum(q.points for q in QUESTIONS[stem])
