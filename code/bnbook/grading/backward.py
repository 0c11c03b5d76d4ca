"""The backward-pass questions shared by exercises 3, 4 and 5: dx, dweight, dbias of batch norm.

A student's dx is compared with torch autograd in float64 and with the known-wrong backward
passes (a missing path through the mean or the variance, weight left out, the unbiased variance).
Imports :mod:`.checks` and :mod:`.references` from the package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bnbook.grading.checks import (
    Array,
    Check,
    CheckFailed,
    Question,
    StudentCall,
    Variant,
    as_array,
    compare,
    unpack,
)
from bnbook.grading.references import batch, bn_axes, bn_grads_ref, chan, vec

__all__ = ["dx_variants", "sum_dx_feedback", "backward_question", "nc_shape"]


def dx_variants(dy: Array, x: Array, w: Array, eps: float) -> list[Variant]:
    """The dx of the usual wrong backward passes on this input, each with its feedback."""
    axes = bn_axes(x.ndim)
    wc = chan(w, x.ndim)
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    std = np.sqrt(var + eps)
    xh = (x - mean) / std
    m = x.size // w.size
    mdy = dy.mean(axes, keepdims=True)
    mdyx = (dy * xh).mean(axes, keepdims=True)
    unb = np.sqrt(var * m / (m - 1) + eps)
    xc = x - mean
    return [
        (wc * dy / std, "dx = weight * dy / std misses the paths through the mean and the "
                        "variance; the batch statistics depend on x too."),
        (wc / std * (dy - mdy), "the path through the variance is missing (the term "
                                "-x_hat * mean(dy * x_hat))."),
        (wc / std * (dy - xh * mdyx), "the path through the mean is missing: sum over the "
                                      "batch of dx must be 0."),
        ((dy - mdy - xh * mdyx) / std, "weight is missing from dx (dL/dx_hat = weight * dy)."),
        (wc / unb * (dy - mdy - xc * (dy * xc).sum(axes, keepdims=True) / ((m - 1) * unb ** 2)),
         "you used the unbiased variance; the forward pass normalises with the biased one."),
    ]


def sum_dx_feedback(dx: Array, x: Array) -> None:
    """Fail with the invariant the gradient breaks, if it breaks one."""
    axes = bn_axes(x.ndim)
    scale = np.abs(dx).sum(axes) + 1e-12
    s = np.abs(dx.sum(axes)) / scale
    if np.max(s) > 1e-6:
        raise CheckFailed(f"sum over the batch of dx is not 0 (relative {np.max(s):.2g}): adding "
                          "a constant to a channel does not change the output, so the gradient "
                          "along it must vanish; the path through the mean is missing or wrong.")


def backward_question(qid: str, title: str, fn: str, returns_all: bool,
                      shapes: Sequence[tuple[str, int, Callable]]) -> Question:
    """A backward question: the student returns dx (or (dx, dweight, dbias)).

    Args:
        qid: the question id.
        title: shown in the report.
        fn: the student's function, called as ``fn(dy, x, weight, eps)``.
        returns_all: True when it returns ``(dx, dweight, dbias)``, False for dx alone.
        shapes: ``(check name, points, shape_fn)`` per check. The name also chooses what the
            check grades: with "dweight" the parameter gradients, with "sum" the invariant
            sum of dx = 0 and then dx, otherwise dx; with "1e4" the batch's mean is 1e4.

    Returns:
        The question.
    """

    def make(shape_fn: Callable[[np.random.Generator], tuple[int, ...]], offset: float,
             part: str) -> Callable[[StudentCall, np.random.Generator], None]:
        def run(call: StudentCall, rng: np.random.Generator) -> None:
            shape = shape_fn(rng)
            x = batch(rng, shape, offset)
            w, _ = vec(rng, shape[1])
            dy = rng.normal(size=shape)
            dx_ref, dw_ref, db_ref = bn_grads_ref(dy, x, w, 1e-5)
            out = call(dy, x, w, 1e-5)
            if returns_all:
                dx, dw, db = unpack(out, 3, fn)
            else:
                dx, dw, db = out, None, None
            if part in ("dx", "invariants"):
                arr = as_array(dx, "dx")
                if part == "invariants" and arr.shape == x.shape:
                    sum_dx_feedback(arr, x)
                compare(dx, dx_ref, dx_variants(dy, x, w, 1e-5), "dx", atol=1e-6, rtol=1e-4)
            if part == "params":
                axes = bn_axes(x.ndim)
                xh = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)
                compare(db, db_ref, [(dy.mean(axes), "you averaged over the batch; the loss "
                                      "sums the gradients of all samples."),
                                     (dy.sum(0), "sum over N and every spatial axis.")], "dbias")
                compare(dw, dw_ref, [
                    ((dy * x).sum(axes), "you used x; dweight = sum of dy * x_hat."),
                    (db_ref, "dweight and dbias are swapped."),
                    ((dy * xh).mean(axes), "you averaged over the batch; sum instead."),
                    ((dy * xh).sum(0), "sum over N and every spatial axis.")], "dweight")
        return run

    checks = [Check(name, pts, make(shape_fn, 1e4 if "1e4" in name else 0.0,
                                    "params" if "dweight" in name else
                                    "invariants" if "sum" in name else "dx"))
              for name, pts, shape_fn in shapes]
    return Question(qid, title, fn, checks)


def nc_shape(lo: int, hi: int) -> Callable[[np.random.Generator], tuple[int, ...]]:
    """A random (N, C) shape with ``lo <= N < hi`` and 3 to 6 channels."""
    return lambda rng: (int(rng.integers(lo, hi)), int(rng.integers(3, 7)))
