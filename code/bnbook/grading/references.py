"""Inputs and right answers shared by several exercises: random batches, torch float64 references.

Every check computes the right answer independently of the student: with torch in float64
(``torch.nn.functional``, ``torch.nn`` modules, autograd). :func:`norm_variants` computes the
outputs of the usual wrong normalisations on the same input, so that :func:`.checks.compare` can
name the mistake. Imports only :mod:`.checks` from the package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch reader knows

from bnbook.grading.checks import Array, Variant

__all__ = ["t64", "np64", "batch", "vec", "chan", "bn_axes", "norm_variants", "bn_train_ref",
           "grads_ref", "bn_grads_ref"]


def t64(a: Array) -> torch.Tensor:
    """An array as a float64 tensor: references are computed in double precision."""
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def np64(t: torch.Tensor) -> Array:
    """A tensor back as a float64 NumPy array, the type the student's output is compared in."""
    return t.detach().numpy().astype(np.float64)


def batch(rng: np.random.Generator, shape: tuple[int, ...], offset: float = 0.0) -> Array:
    """A batch whose channels differ in scale (1e-3 to 10) and offset, axis 1 the channels."""
    c = shape[1]
    scale = 10.0 ** rng.uniform(-3, 1, c)
    scale[rng.integers(c)] = 1e-3  # a small variance: eps inside vs outside the sqrt differ
    bshape = (1, c) + (1,) * (len(shape) - 2)
    return (rng.normal(size=shape) * scale.reshape(bshape)
            + (offset + rng.normal(0, 3, c)).reshape(bshape))


def vec(rng: np.random.Generator, c: int) -> tuple[Array, Array]:
    """A random ``(weight, bias)`` pair of shape (C,): weight around 1, bias around 0."""
    return rng.normal(1.0, 0.5, c), rng.normal(0.0, 1.0, c)


def chan(v: Array, ndim: int) -> Array:
    """A per-channel vector (C,) shaped (1, C, 1, ...) to broadcast over an ``ndim`` input."""
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def bn_axes(ndim: int) -> tuple[int, ...]:
    """The axes batch norm reduces over: every axis but the channels (axis 1)."""
    return (0,) + tuple(range(2, ndim))


def norm_variants(x: Array, w: Array, b: Array, eps: float, axes: tuple[int, ...],
                  extra: Sequence[Variant] = ()) -> list[Variant]:
    """Outputs of the usual wrong normalisations over ``axes`` (affine per channel of axis 1)."""
    wc, bc = chan(w, x.ndim), chan(b, x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    n = x.size // mean.size
    out: list[Variant] = list(extra)
    out.append((wc * (x - mean) / np.sqrt(var * n / max(n - 1, 1) + eps) + bc,
                "you normalised with the unbiased variance (divided by N - 1). Batch norm divides "
                "by N: the biased variance of the batch."))
    out.append((wc * (x - mean) / (np.sqrt(var) + eps) + bc,
                "eps is outside the square root: use (x - mean) / sqrt(var + eps), not "
                "(x - mean) / (sqrt(var) + eps)."))
    out.append((wc * (x - mean) / np.sqrt(var + 1e-5) + bc,
                "you ignored the eps argument and used 1e-5."))
    out.append(((x - mean) / np.sqrt(var + eps), "you forgot the scale and shift (weight, bias)."))
    out.append((bc * (x - mean) / np.sqrt(var + eps) + wc,
                "weight and bias are swapped: y = weight * x_hat + bias."))
    out.append((wc * (x - mean) / (var + eps) + bc,
                "you divided by the variance; divide by the standard deviation sqrt(var + eps)."))
    return out


# ---------------------------------------------------------------------------- torch references


def bn_train_ref(x: Array, w: Array, b: Array, eps: float) -> Array:
    """Batch norm in training mode, by torch in float64."""
    return np64(F.batch_norm(t64(x), None, None, t64(w), t64(b), training=True, eps=eps))


def grads_ref(fn: Callable[..., torch.Tensor], dy: Array, x: Array, w: Array, b: Array
              ) -> tuple[Array, Array, Array]:
    """(dx, dweight, dbias) of ``fn(x, weight, bias)`` for upstream gradient ``dy``, by autograd."""
    xt, wt, bt = (t64(a).requires_grad_() for a in (x, w, b))
    fn(xt, wt, bt).backward(t64(dy))
    return np64(xt.grad), np64(wt.grad), np64(bt.grad)


def bn_grads_ref(dy: Array, x: Array, w: Array, eps: float) -> tuple[Array, Array, Array]:
    """(dx, dweight, dbias) of training-mode batch norm, by torch autograd."""
    fn = lambda xt, wt, bt: F.batch_norm(xt, None, None, wt, bt, training=True, eps=eps)
    return grads_ref(fn, dy, x, w, np.zeros_like(w))
