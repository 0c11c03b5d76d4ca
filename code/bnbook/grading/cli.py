"""``python -m bnbook.grading [folder or notebooks...]``: grade copies of notebooks, print points.

Each notebook is read once, and a copy of it runs in a fresh Jupyter kernel in a temporary
folder, with one cell appended that prints the newest :class:`~.grader.Grader`'s report as a
marked JSON line. The student's file is never written.

The top of :mod:`bnbook.grading`: imports :mod:`.grader`, :mod:`.report` and :mod:`.sandbox`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnbook.grading.grader import latest
from bnbook.grading.report import format_table
from bnbook.grading.sandbox import GradingUnavailable, require_fork

__all__ = ["grade_notebook", "main", "emit_report", "REPORT_MARKER"]

REPORT_MARKER = "BNBOOK-GRADING-REPORT:"
_DESCRIPTION = ('The exercise checker: ``check("q1")`` in a notebook, ``python -m bnbook.grading`` '
                "in a terminal.")


def emit_report() -> None:
    """Print the newest grader's report after a silent re-grade (the CLI's appended cell)."""
    g = latest()
    if g is None:
        print(REPORT_MARKER + json.dumps({"error": "the notebook never created its Grader"}))
        return
    # The notebook's own score() cell has normally just graded everything; grade what it missed.
    for qid in g.questions:
        if qid not in g.results:
            g.run_question(qid)
    print(REPORT_MARKER + json.dumps(g.report()))


def grade_notebook(path: str | Path, timeout_per_cell: int = 120) -> dict[str, Any]:
    """Execute a copy of a notebook in a temporary directory and return its report.

    The student's file is only read, never written.

    Args:
        path: the exercise notebook.
        timeout_per_cell: seconds a cell may run before the execution is abandoned.

    Returns:
        The report dict of :meth:`Grader.report`, or one with an ``"error"`` key.
    """
    import nbformat
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    path = Path(path)
    data = path.read_bytes()  # read once; the copy is what runs
    nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import bnbook.grading.cli as _bnbook_grading_cli\n_bnbook_grading_cli.emit_report()"))
    with tempfile.TemporaryDirectory(prefix="bnbook-grade-") as tmp:
        copy_path = Path(tmp) / path.name
        copy_path.write_bytes(data)
        # Local sockets in the temp dir rather than TCP ports: private to this user, no warning.
        km = KernelManager(kernel_name="python3", transport="ipc",
                           ip=str(Path(tmp) / "kernel"))
        client = NotebookClient(nb, km=km, timeout=timeout_per_cell, allow_errors=True,
                                kernel_name="python3", resources={"metadata": {"path": tmp}})
        try:
            client.execute()
        except Exception as exc:  # noqa: BLE001 - a dead kernel is reported, not raised
            return {"notebook": path.stem, "error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            # nbclient leaves a kernel it did not start running: stop it here, or every graded
            # notebook keeps a kernel (with torch loaded) alive until the grader exits.
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    for out in nb.cells[-1].get("outputs", []):
        text = out.get("text", "")
        for line in text.splitlines():
            if line.startswith(REPORT_MARKER):
                report = json.loads(line[len(REPORT_MARKER):])
                report.setdefault("notebook", path.stem)
                return report
    return {"notebook": path.stem, "error": "the report cell printed nothing"}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bnbook.grading [folder or notebooks...]``: grade and print the table.

    Returns:
        0 when every notebook was graded (whatever its score); 2 for a bad path, no notebooks,
        or a platform without ``os.fork``.
    """
    parser = argparse.ArgumentParser(prog="python -m bnbook.grading", description=_DESCRIPTION)
    parser.add_argument("paths", nargs="*", default=["exercises"],
                        help="exercise notebooks, or folders of NN_*.ipynb (default: exercises)")
    args = parser.parse_args(argv)
    notebooks: list[Path] = []
    for p in map(Path, args.paths):
        if p.is_dir():
            notebooks += sorted(p.glob("[0-9][0-9]_*.ipynb"))
        elif p.suffix == ".ipynb" and p.is_file():
            notebooks.append(p)
        else:
            print(f"not a notebook or folder: {p}", file=sys.stderr)
            return 2
    if not notebooks:
        print("no exercise notebooks found", file=sys.stderr)
        return 2
    try:
        require_fork()
    except GradingUnavailable as exc:
        print(f"cannot grade: {exc}", file=sys.stderr)
        return 2
    reports = [grade_notebook(nb) for nb in notebooks]
    print(format_table(reports))
    return 0
