"""Finite-difference gradient checks: how the book tests a hand-written backward pass.

A backward pass computes a vector-Jacobian product: given the upstream gradient ``dy`` of a
function ``y = fn(x)``, it returns ``dx = d/dx sum(fn(x) * dy)``. :func:`numerical_vjp` estimates
the same quantity with central differences, one input element at a time, and :func:`gradcheck`
compares the two.

Two choices make such a check worth trusting:

* **float64 only.** A central difference divides the rounding error of the loss by the step
  ``h``; in float32 that error (~1e-7 of the loss) swamps any useful ``h``.
* **a random upstream gradient by default.** Calling ``y.sum().backward()`` means ``dy = 1``,
  and for a layer like batch normalization the true ``dx`` is then (almost) zero: a wrong backward
  that also returns zero passes. A random ``dy`` exercises every direction of the Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]

__all__ = ["GradCheckResult", "gradcheck", "numerical_vjp", "relative_error"]

# Mixed into the seed of the default upstream gradient (see gradcheck's ``seed``).
_DY_SALT = 0x9E3779B9


def _as_float64(a: ArrayLike, name: str) -> Array:
    """Return ``a`` as a float64 array, or raise a ValueError naming it."""
    arr = np.asarray(a)
    if arr.dtype != np.float64:
        raise ValueError(
            f"{name} must be float64 for a finite-difference check (in lower precision the "
            f"rounding error of the loss, divided by h, swamps the gradient), got {arr.dtype}"
        )
    return arr


def numerical_vjp(
    fn: Callable[[Array], ArrayLike], x: ArrayLike, dy: ArrayLike, h: float = 1e-6
) -> Array:
    """Estimate ``d/dx sum(fn(x) * dy)`` by central differences, one element of x at a time.

    Each element costs two calls of ``fn``: ``(L(x + h e_i) - L(x - h e_i)) / (2 h)`` with
    ``L(x) = sum(fn(x) * dy)``. The error of the estimate is O(h**2) from truncation plus
    O(rounding(L) / h); with float64 and ``h = 1e-6`` both are around 1e-10 for well-scaled
    functions.

    Args:
        fn: the function to differentiate; receives a float64 array shaped like ``x`` and
            must not keep a reference to it (the same buffer is perturbed in place).
        x: the point, float64, any shape.
        dy: the upstream gradient, float64, shaped like ``fn(x)``.
        h: the step, > 0.

    Returns:
        The estimate of dL/dx, shaped like ``x``.
    """
    x = _as_float64(x, "x")
    dy = _as_float64(dy, "dy")
    if not h > 0:
        raise ValueError(f"h must be > 0, got {h}")
    y0 = np.asarray(fn(x.copy()))
    if y0.shape != dy.shape:
        raise ValueError(f"dy must have the shape of fn(x) {y0.shape}, got {dy.shape}")

    point = x.copy()  # perturbed in place, one element at a time; the caller's x is untouched
    grad = np.empty_like(point)
    for idx in np.ndindex(point.shape):
        original = point[idx]
        point[idx] = original + h
        up = float(np.sum(np.asarray(fn(point)) * dy))
        point[idx] = original - h
        down = float(np.sum(np.asarray(fn(point)) * dy))
        point[idx] = original
        grad[idx] = (up - down) / (2.0 * h)
    return grad


def relative_error(a: ArrayLike, b: ArrayLike) -> float:
    """``||a - b|| / (||a|| + ||b||)`` (Euclidean norms over all elements), in [0, 1].

    Zero means equal; 1 means unrelated in the worst way (``b = -a``, or one of them is zero while
    the other is not). When both are exactly zero the error is 0. Beware of gradients that
    are zero in exact arithmetic: then both arguments are rounding noise and the ratio is
    noise over noise, which can land anywhere in [0, 1].

    Args:
        a: one gradient.
        b: the other, same shape.

    Returns:
        The relative error as a Python float.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    scale = float(np.linalg.norm(a) + np.linalg.norm(b))
    if scale == 0.0:
        return 0.0
    return float(np.linalg.norm(a - b)) / scale


@dataclass(frozen=True)
class GradCheckResult:
    """What :func:`gradcheck` compared.

    Attributes:
        analytic: the backward pass's dx.
        numeric: the central-difference estimate of dx.
        dy: the upstream gradient both used.
        max_abs_error: ``max |analytic - numeric|``.
        relative_error: :func:`relative_error` of the two.
    """

    analytic: Array
    numeric: Array
    dy: Array
    max_abs_error: float
    relative_error: float

    def passed(self, rtol: float = 1e-6) -> bool:
        """True when the relative error is at most ``rtol``."""
        return self.relative_error <= rtol


def gradcheck(
    fn: Callable[[Array], ArrayLike],
    vjp: Callable[[Array, Array], ArrayLike],
    x: ArrayLike,
    dy: ArrayLike | None = None,
    *,
    seed: int = 0,
    h: float = 1e-6,
) -> GradCheckResult:
    """Compare a hand-written backward pass with central differences.

    Args:
        fn: the forward function ``y = fn(x)``.
        vjp: the backward pass under test: ``vjp(x, dy)`` returns dL/dx for ``L = sum(y * dy)``.
        x: the point, float64.
        dy: the upstream gradient, float64 and shaped like ``fn(x)``; by default a standard
            normal draw seeded by ``seed``.
        seed: seeds the default ``dy``. The stream is salted, so that it differs from
            ``numpy.random.default_rng(seed)``: data drawn with the same seed would otherwise
            make ``dy`` a scaled copy of ``x``, which for batch normalization is one of the
            directions whose true gradient is (almost) zero.
        h: the finite-difference step.

    Returns:
        A :class:`GradCheckResult` holding both gradients and their errors.
    """
    x = _as_float64(x, "x")
    if dy is None:
        shape = np.shape(fn(x.copy()))
        dy = np.random.default_rng((seed, _DY_SALT)).standard_normal(shape)
    dy = _as_float64(dy, "dy")
    numeric = numerical_vjp(fn, x, dy, h)
    analytic = np.asarray(vjp(x.copy(), dy.copy()), dtype=np.float64)
    if analytic.shape != x.shape:
        raise ValueError(f"vjp must return an array shaped like x {x.shape}, got {analytic.shape}")
    return GradCheckResult(
        analytic=analytic,
        numeric=numeric,
        dy=dy,
        max_abs_error=float(np.max(np.abs(analytic - numeric))),
        relative_error=relative_error(analytic, numeric),
    )
