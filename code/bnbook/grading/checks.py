"""The check machinery: questions, checks, a safe call of the student's function, comparisons.

A :class:`Question` is the function a student writes and the :class:`Check` s that grade it. A
check's ``run(call, rng)`` draws its input from ``rng``, calls the student's function through
``call`` (a :class:`StudentCall`, which runs it in the sandbox of :mod:`.sandbox`) and raises
:class:`CheckFailed` with the feedback the student sees. :func:`compare` does the usual
comparison: with the right answer, then with known-wrong variants computed on the same input, so
that a match names the mistake.

Imports only :mod:`.sandbox` from the package.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnbook.grading.sandbox import run_forked

__all__ = ["CheckFailed", "Check", "Question", "CheckResult", "QuestionResult", "StudentCall",
           "Variant", "as_array", "unpack", "compare"]

Array = np.ndarray
Variant = tuple[Any, str]  # (wrong output, what the student most likely did)


class CheckFailed(Exception):
    """Raised by a check (or by a student call) with the feedback the student sees."""


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
    """A question: the function the student writes and the checks that grade it.

    Attributes:
        qid: the id the notebook's ``check("q1")`` cell names.
        title: shown in the report.
        function: the name of the student's function in the notebook.
        checks: what grades it.
        forbid_library_norms: refuse functions that reach a library's normalisation layer
            (source scan and run-time traps); False where using torch's layers is the point.
    """

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
        res = run_forked(self.fn, tuple(args), dict(kwargs or {}), self.timeout, self.forbid,
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


# ---------------------------------------------------------------------------- comparisons


def as_array(out: Any, what: str) -> Array:
    """The student's output as a float array, or a failure naming the wrong type."""
    torch = sys.modules.get("torch")  # not imported: the output cannot be a tensor
    if torch is not None and isinstance(out, torch.Tensor):
        raise CheckFailed(f"{what} is a torch.Tensor; return a NumPy array.")
    if isinstance(out, np.ndarray | float | int | np.floating | list | tuple):
        arr = np.asarray(out, dtype=np.float64)
        return arr
    raise CheckFailed(f"{what} should be a NumPy array, got {type(out).__name__}.")


def unpack(out: Any, n: int, what: str) -> tuple[Any, ...]:
    """The student's output as a tuple of ``n`` values, or a failure saying what came back."""
    if not isinstance(out, tuple | list) or len(out) != n:
        got = f"a {type(out).__name__}" + (f" of length {len(out)}"
                                          if isinstance(out, tuple | list) else "")
        raise CheckFailed(f"{what} should return a tuple of {n} values, got {got}.")
    return tuple(out)


def compare(got: Any, ref: Array, variants: Sequence[Variant], what: str,
            atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Pass if ``got`` matches ``ref``; otherwise fail naming the variant it matches.

    Args:
        got: the student's output.
        ref: the right answer.
        variants: ``(wrong output, explanation)`` pairs, most specific first.
        what: the output's name in the message.
        atol: absolute tolerance.
        rtol: relative tolerance.
    """
    arr = as_array(got, what)
    ref = np.asarray(ref, dtype=np.float64)

    def close(a: Array, b: Array) -> bool:
        return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol))

    if close(arr, ref):
        return
    for wrong, why in variants:
        wrong = np.asarray(wrong, dtype=np.float64)
        if wrong.shape == arr.shape and np.all(np.isfinite(wrong)) and close(arr, wrong):
            raise CheckFailed(f"{what} is wrong: {why}")
    if arr.shape != ref.shape:
        raise CheckFailed(f"{what} has shape {arr.shape}; expected {ref.shape}.")
    if not np.all(np.isfinite(arr)):
        raise CheckFailed(f"{what} contains nan or inf (a division by zero? a constant channel "
                          "has variance 0, and only eps inside the square root keeps it finite).")
    err = np.abs(arr - ref)
    idx = np.unravel_index(int(np.argmax(err)), err.shape)
    where = tuple(int(i) for i in idx)
    raise CheckFailed(f"{what} is wrong: largest error {err[idx]:.3g} at index {where}"
                      f" (expected {ref[idx]:.6g}, got {arr[idx]:.6g}).")
