"""The exercise checker: ``check("q1")`` in a notebook, ``python -m bnbook.grading`` in a terminal.

A notebook binds a :class:`Grader` to itself in its first cell::

    from bnbook.grading import Grader
    grader = Grader("01_forward_train")
    check, score = grader.check, grader.score

``check("q2")`` looks the student's function up in the notebook's globals, runs every check of
that question on inputs drawn fresh from ``os.urandom`` and prints one line per check; a failed
check names the likely mistake when the wrong output matches a known-wrong variant computed on the
same input. ``score()`` re-runs every question and prints the points.

Each call of a student function runs in a forked child process, so that a function that never
returns can be killed, an in-place change to its inputs can be seen (the child compares copies),
and calls to torch's own normalisation layers can be trapped without touching the notebook's
torch. The checks themselves live in :mod:`bnbook.exercise_checks`.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import json
import os
import pickle
import re
import select
import signal
import sys
import tempfile
import textwrap
import time
import tokenize
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CheckFailed", "Check", "Question", "Grader", "StudentCall", "grade_notebook", "main"]

DEFAULT_TIMEOUT_S = 3.0

# Names whose appearance in a student's function means it hands the work to a library layer.
_FORBIDDEN_SOURCE = re.compile(
    r"\b(batch_norm|layer_norm|group_norm|instance_norm|native_batch_norm|native_layer_norm|"
    r"native_group_norm|BatchNorm\w*|SyncBatchNorm|LayerNorm|GroupNorm|InstanceNorm\w*|"
    r"batch_norm_forward|batch_norm_backward\w*|batch_norm_inference|update_running_stats|"
    r"fuse_\w*bn\w*)\b"
)
# Callables trapped at run time while a student function runs (module, attribute names).
_FORBIDDEN_TORCH = (
    ("torch.nn.functional", ("batch_norm", "layer_norm", "group_norm", "instance_norm")),
    ("torch", ("batch_norm", "native_batch_norm", "layer_norm", "native_layer_norm",
               "group_norm", "native_group_norm", "instance_norm", "_native_batch_norm_legit",
               "_batch_norm_impl_index")),
    ("torch.nn.utils.fusion", ("fuse_conv_bn_weights", "fuse_linear_bn_weights",
                               "fuse_conv_bn_eval", "fuse_linear_bn_eval")),
)
_FORBIDDEN_MODULE_FORWARD = (
    ("torch.nn.modules.batchnorm", "_BatchNorm"),
    ("torch.nn.modules.normalization", "LayerNorm"),
    ("torch.nn.modules.normalization", "GroupNorm"),
    ("torch.nn.modules.instancenorm", "_InstanceNorm"),
)
_FORBIDDEN_BNBOOK = ("bnbook.reference", "bnbook.functional", "bnbook.norms", "bnbook.modules")

_REPORT_MARKER = "BNBOOK-GRADING-REPORT:"


class CheckFailed(Exception):
    """Raised by a check (or by a student call) with the feedback the student sees."""


class _ForbiddenCall(BaseException):  # noqa: N818 - a sentinel, not an error a student handles
    """Raised inside the child when the student's code reaches a trapped library layer.

    A BaseException, so that a student's ``except Exception`` cannot swallow it.
    """


_forbidden_hits: list[str] = []


def _forbidden(name: str) -> _ForbiddenCall:
    """Record and build the sentinel for a trapped call (called from patched code objects)."""
    _forbidden_hits.append(name)
    return _ForbiddenCall(name)


def _raiser(*args: Any, **kwargs: Any) -> Any:
    # Its code object replaces a library function's; it resolves everything through builtins
    # because it runs with that function's globals, and reads the trapped name from its frame.
    import sys as _sys

    raise __import__("bnbook.grading").grading._forbidden(_sys._getframe().f_code.co_qualname)


@dataclass
class Check:
    """One graded check of a question.

    Attributes:
        name: what the check tests, shown to the student.
        points: points it is worth.
        run: ``run(call, rng)``; ``call`` runs the student function (see :class:`StudentCall`);
            returns nothing on success and raises :class:`CheckFailed` with the feedback otherwise.
    """

    name: str
    points: int
    run: Callable[[StudentCall, np.random.Generator], None]


@dataclass
class Question:
    """A question: the function the student writes and the checks that grade it."""

    qid: str
    title: str
    function: str
    checks: list[Check]
    forbid_library_norms: bool = True

    @property
    def points(self) -> int:
        return sum(c.points for c in self.checks)


@dataclass
class CheckResult:
    name: str
    points: int
    earned: int
    message: str


@dataclass
class QuestionResult:
    qid: str
    title: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def earned(self) -> int:
        return sum(c.earned for c in self.checks)

    @property
    def points(self) -> int:
        return sum(c.points for c in self.checks)


def _copy_value(v: Any) -> Any:
    try:
        return copy.deepcopy(v)
    except Exception:  # an uncopyable argument cannot be compared afterwards; skip it
        return None


def _same_value(a: Any, b: Any) -> bool:
    if a is None:
        return True
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and bool(
            np.array_equal(a, b, equal_nan=True))
    if type(a).__module__.startswith("torch") and hasattr(a, "detach"):
        import torch

        return bool(torch.equal(a.detach(), b.detach())) if a.shape == b.shape else False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return True


def _install_traps() -> None:
    """Replace library normalisation layers with the sentinel raiser (child process only)."""
    for modname, names in _FORBIDDEN_TORCH:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for name in names:
            _trap_attr(mod, name, f"{modname}.{name}")
    for modname, clsname in _FORBIDDEN_MODULE_FORWARD:
        try:
            cls = getattr(importlib.import_module(modname), clsname)
        except (ImportError, AttributeError):
            continue
        _trap_attr(cls, "forward", f"torch.nn.{clsname.lstrip('_')}.forward")
    for modname in _FORBIDDEN_BNBOOK:
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        for name in dir(mod):
            obj = getattr(mod, name)
            if name.startswith("_") or getattr(obj, "__module__", None) != modname:
                continue
            if isinstance(obj, type):
                _trap_attr(obj, "forward", f"{modname}.{name}.forward")
            else:
                _trap_attr(mod, name, f"{modname}.{name}")


def _trap_attr(owner: Any, name: str, label: str) -> None:
    target = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if target is None or not callable(target):
        return
    code = getattr(target, "__code__", None)
    replacement = _raiser.__code__.replace(co_name=name, co_qualname=label)
    if code is not None and not code.co_freevars:
        # Swapping the code object also catches references the student took before the call,
        # e.g. ``from torch.nn.functional import batch_norm as bn``.
        try:
            target.__code__ = replacement
            return
        except (AttributeError, TypeError, ValueError):
            pass
    fn = lambda *a, **k: _raiser_named(label)
    try:
        setattr(owner, name, fn)
    except (AttributeError, TypeError):
        pass


def _raiser_named(label: str) -> Any:
    raise _forbidden(label)


def _student_frame(tb: Any, fn_name: str) -> str:
    """Where in the student's code an exception came from, as ' (line N: `code`)'."""
    frames = [f for f in traceback.extract_tb(tb) if Path(f.filename).name != "grading.py"]
    if not frames:
        return ""
    f = frames[-1]
    where = f"{f.name}, line {f.lineno}" if f.name != fn_name else f"line {f.lineno}"
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" ({where}:{code})"


def _child_call(fn: Callable[..., Any], args: tuple, kwargs: dict, forbid: bool,
                check_mutation: bool, after: Callable[..., Any] | None) -> dict[str, Any]:
    """Run the student function; everything it produced, as a picklable dict."""
    if "torch" in sys.modules:
        # torch's OpenMP pool does not survive fork; one thread keeps the child from hanging.
        sys.modules["torch"].set_num_threads(1)
    if forbid:
        _install_traps()
    before = [_copy_value(a) for a in args] if check_mutation else []
    kbefore = {k: _copy_value(v) for k, v in kwargs.items()} if check_mutation else {}
    name = getattr(fn, "__name__", "your function")
    try:
        out = fn(*args, **kwargs)
    except _ForbiddenCall as exc:
        return {"status": "forbidden", "what": str(exc)}
    except NotImplementedError:
        return {"status": "stub"}
    except BaseException as exc:  # noqa: BLE001 - anything the student raises is feedback
        if _forbidden_hits:
            return {"status": "forbidden", "what": _forbidden_hits[0]}
        msg = f"{type(exc).__name__}: {exc}"[:300]
        return {"status": "raised", "what": msg + _student_frame(exc.__traceback__, name)}
    if _forbidden_hits:  # the student caught the sentinel with a bare except
        return {"status": "forbidden", "what": _forbidden_hits[0]}
    mutated = []
    if check_mutation:
        import inspect

        try:
            params = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            params = []
        for i, (old, new) in enumerate(zip(before, args, strict=True)):
            if not _same_value(old, new):
                mutated.append(params[i] if i < len(params) else f"argument {i + 1}")
        mutated += [k for k, v in kbefore.items() if not _same_value(v, kwargs[k])]
    extra = after(*args, **kwargs) if after is not None else None
    return {"status": "ok", "out": out, "extra": extra, "mutated": mutated}


def _run_forked(fn: Callable[..., Any], args: tuple, kwargs: dict, timeout: float,
                forbid: bool, check_mutation: bool,
                after: Callable[..., Any] | None) -> dict[str, Any]:
    """Call ``fn`` in a forked child with a deadline; never raises for student behaviour."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        # A Jupyter kernel has threads; the child only runs the student's code and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            captured = io.StringIO()
            sys.stdout = sys.stderr = captured
            result = _child_call(fn, args, kwargs, forbid, check_mutation, after)
            result["printed"] = captured.getvalue()[-2000:]
            try:
                payload = pickle.dumps(result)
            except Exception as exc:  # noqa: BLE001
                payload = pickle.dumps({"status": "unpicklable", "what": str(exc)[:200]})
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    finished = timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 1 << 20)
            if not chunk:
                finished = True
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        if not finished:  # timed out, or the wait was interrupted: never leave it running
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if timed_out:
        return {"status": "timeout"}
    try:
        return pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - the child died (e.g. killed for memory)
        return {"status": "crashed"}


class StudentCall:
    """Calls one student function safely; what a check's ``run`` receives as ``call``.

    ``call(*args, **kwargs)`` returns the student's output, or raises :class:`CheckFailed`
    with a message if the function raised, timed out, mutated an input, or reached a library
    normalisation layer that the question forbids.
    """

    def __init__(self, fn: Callable[..., Any], name: str, timeout: float, forbid: bool) -> None:
        self.fn, self.name, self.timeout, self.forbid = fn, name, timeout, forbid
        self.printed: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(args, kwargs)[0]

    def call(self, args: Sequence[Any], kwargs: dict[str, Any] | None = None, *,
             check_mutation: bool = True,
             after: Callable[..., Any] | None = None) -> tuple[Any, Any]:
        """Run the function; return ``(output, after(*args, **kwargs) in the child)``."""
        res = _run_forked(self.fn, tuple(args), dict(kwargs or {}), self.timeout, self.forbid,
                          check_mutation, after)
        if res.get("printed"):
            self.printed.append(res["printed"])
        status = res["status"]
        if status == "ok":
            if res["mutated"]:
                names = ", ".join(f"`{m}`" for m in res["mutated"])
                raise CheckFailed(
                    f"{self.name} changed its input {names} in place. Callers keep using "
                    "their arrays after the call: build new arrays (`x = x - mean`, not "
                    "`x -= mean`).")
            return res["out"], res["extra"]
        messages = {
            "stub": f"not attempted yet: {self.name} still raises NotImplementedError.",
            "timeout": f"{self.name} did not return within {self.timeout:g} s "
                       "(an infinite loop, or waiting for input?).",
            "crashed": f"{self.name} crashed the process that ran it (out of memory?).",
            "unpicklable": f"{self.name} returned something that is not plain data "
                           f"({res.get('what', '')}); return NumPy arrays or numbers.",
            "raised": f"{self.name} raised {res.get('what', '')}",
            "forbidden": f"{self.name} calls {res.get('what', '')}. This exercise is about "
                         "writing the normalisation yourself: use NumPy operations, not a "
                         "library's layer.",
        }
        raise CheckFailed(messages.get(status, f"unexpected status {status}"))


def _code_tokens(source: str) -> str:
    """The source without comments and strings, so a mention in a comment is not a call."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type not in (tokenize.COMMENT, tokenize.STRING):
                out.append(tok.string)
    except (tokenize.TokenError, IndentationError):
        return source
    return " ".join(out)


def forbidden_names_in(fn: Callable[..., Any]) -> list[str]:
    """Library normalisation names that a function's source code uses.

    Args:
        fn: the student's function.

    Returns:
        The distinct forbidden names found, in order; empty when the source is unavailable.
    """
    import inspect

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return []
    found = _FORBIDDEN_SOURCE.findall(_code_tokens(source))
    own = getattr(fn, "__name__", "")
    return list(dict.fromkeys(n for n in found if n != own))


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
        timeout: seconds one call of a student function may take before it is stopped.
        verbose: print the per-check lines (``score`` prints only the table when False).
    """

    def __init__(self, notebook: str, namespace: dict[str, Any] | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, verbose: bool = True) -> None:
        from bnbook.exercise_checks import QUESTIONS

        if notebook not in QUESTIONS:
            raise ValueError(f"notebook must be one of {sorted(QUESTIONS)}, got {notebook!r}")
        if namespace is None:
            namespace = sys._getframe(1).f_globals
        for modname in _FORBIDDEN_BNBOOK:
            # Imported here so that every child process inherits them and can trap them.
            try:
                importlib.import_module(modname)
            except Exception:  # noqa: BLE001 - a module that fails to import cannot be called
                pass
        self.notebook = notebook
        self.questions: dict[str, Question] = {q.qid: q for q in QUESTIONS[notebook]}
        self.namespace = namespace
        self.timeout = float(timeout)
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


def _emit_report() -> None:
    """Print the newest grader's report after a silent re-grade (the CLI's appended cell)."""
    if not _active:
        print(_REPORT_MARKER + json.dumps({"error": "the notebook never created its Grader"}))
        return
    g = _active[-1]
    # The notebook's own score() cell has normally just graded everything; grade what it missed.
    for qid in g.questions:
        if qid not in g.results:
            g.run_question(qid)
    print(_REPORT_MARKER + json.dumps(g.report()))


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
        "import bnbook.grading as _bnbook_grading\n_bnbook_grading._emit_report()"))
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
            if line.startswith(_REPORT_MARKER):
                report = json.loads(line[len(_REPORT_MARKER):])
                report.setdefault("notebook", path.stem)
                return report
    return {"notebook": path.stem, "error": "the report cell printed nothing"}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bnbook.grading [folder or notebooks...]``: grade and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bnbook.grading", description=__doc__
                                     .splitlines()[0])
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
    reports = [grade_notebook(nb) for nb in notebooks]
    print(format_table(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
