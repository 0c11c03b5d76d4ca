"""The small computations and training runs the chapters report.

Part I's live in this module; each later part has a module of its own in this package, and
:mod:`bnbook.experiments.digits` holds the one data split and training loop they all share.

Each function returns plain arrays, so a chapter can print them, assert on them and draw them,
and the tests can check them against an independent computation.

"Why normalize" uses two of them:

* :func:`saturation_stats` measures how much of a batch of pre-activations sits on the flat
  part of a sigmoid, and how much gradient the batch passes back, with and without the
  standardising step of Batch Normalization.
* :func:`runaway_bias` replays the thought experiment of Ioffe and Szegedy (2015, section 2):
  a bias followed by mean subtraction, trained by gradient descent that either ignores the
  mean's dependence on the bias ("naive") or differentiates through it ("aware").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from bnbook import reference

Array = NDArray[np.float64]

__all__ = [
    "FLAT_EDGE",
    "FLAT_FRACTION",
    "RunawayBiasRun",
    "runaway_bias",
    "saturation_batch",
    "saturation_stats",
    "sigmoid",
    "sigmoid_slope",
    "slope_through_depth",
]

# -- saturation --------------------------------------------------------------------------------

#: A pre-activation is on the sigmoid's *flat* part when its slope is below this fraction of the
#: largest slope, g'(0) = 1/4.
FLAT_FRACTION = 0.1

#: Where the flat part starts: g'(x) = 1 / (4 cosh²(x/2)), so g'(x) < 0.1·g'(0) exactly when
#: cosh²(x/2) > 10, that is |x| > 2·arccosh(√10) ≈ 3.64.
FLAT_EDGE = 2.0 * math.acosh(math.sqrt(1.0 / FLAT_FRACTION))


def sigmoid(x: ArrayLike) -> Array:
    """The logistic function g(x) = 1 / (1 + e^(-x)), computed without overflow.

    Args:
        x: any array of real numbers.

    Returns:
        g(x), elementwise, as float64.
    """
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_slope(x: ArrayLike) -> Array:
    """The sigmoid's derivative g'(x) = g(x)·(1 − g(x)).

    Args:
        x: any array of real numbers.

    Returns:
        g'(x), elementwise, as float64; its largest value is 1/4, at x = 0.
    """
    # g(1 - g) rewritten with e = e^(-|x|), which g'(x) = g'(-x) allows: 1 - g(x) would lose
    # every digit in the tail where g(x) rounds to 1.
    e = np.exp(-np.abs(np.asarray(x, dtype=np.float64)))
    return e / (1.0 + e) ** 2


def _check_finite(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _check_count(value: int, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}, got {value}")
    return int(value)


def saturation_batch(drift: float, m: int = 256, seed: int = 0) -> Array:
    """A batch of one pre-activation whose mean the layers below have pushed to ``drift``.

    The batch's own shape is fixed (standard normal draws, rescaled so that the batch mean is
    exactly 0 and its biased standard deviation exactly 1); only its position moves.

    Args:
        drift: the batch mean.
        m: the batch size, at least 2.
        seed: seed of the draws.

    Returns:
        The batch, shape (m,).
    """
    drift = _check_finite(drift, "drift")
    m = _check_count(m, "m", 2)
    z = np.random.default_rng(seed).normal(size=m)
    z = (z - z.mean()) / z.std()  # (m,): mean 0, biased std 1, exactly up to rounding
    return drift + z


def standardise(x: ArrayLike, eps: float = 1e-5) -> Array:
    """Batch Normalization of one feature with γ = 1, β = 0, over the whole batch.

    Args:
        x: the batch of one feature, shape (m,).
        eps: added to the (biased) batch variance before the square root.

    Returns:
        The normalised batch, shape (m,): :func:`bnbook.reference.batch_norm_forward` on it.
    """
    batch = np.asarray(x, dtype=np.float64)[:, None]  # (m, 1): m examples of one feature
    y, _ = reference.batch_norm_forward(batch, np.ones(1), np.zeros(1), eps)
    return y[:, 0]


def saturation_stats(
    drift: float, bn: bool, *, m: int = 256, seed: int = 0, eps: float = 1e-5
) -> tuple[float, float]:
    """How much of a drifted batch is on the sigmoid's flat part, and what slope it sees.

    The batch is :func:`saturation_batch`. With ``bn`` it is first standardised with its
    own mean and biased variance (Batch Normalization with γ = 1, β = 0).

    Args:
        drift: the batch mean the layers below produced.
        bn: whether Batch Normalization sits between the drifted batch and the sigmoid.
        m: the batch size.
        seed: seed of the batch.
        eps: added to the variance before the square root when ``bn`` is set.

    Returns:
        ``(fraction_flat, mean_slope)``: the fraction of the batch with
        g'(x) < FLAT_FRACTION·g'(0), and the batch's mean slope (1/m)·Σ g'(x_i), the
        gradient the sigmoid passes back per example when each example receives 1.
    """
    if not isinstance(bn, bool | np.bool_):
        raise TypeError(f"bn must be True or False, got {bn!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    x = saturation_batch(drift, m=m, seed=seed)
    if bn:
        x = standardise(x, eps)
    slope = sigmoid_slope(x)  # (m,)
    flat = slope < FLAT_FRACTION * sigmoid_slope(0.0)  # (m,) bool
    return float(flat.mean()), float(slope.mean())


def slope_through_depth(drift: float, bn: bool, layers: int, *, m: int = 256) -> float:
    """The gradient factor a stack of sigmoid layers applies, averaged over a batch.

    Each of ``layers`` layers receives its own batch (seeds 0, 1, ...), all drifted by the same
    amount; example i passes back the product over layers of g'(x_i). Weights are left out
    (all 1), so the number isolates what the sigmoids alone do to the gradient.

    Args:
        drift: the batch mean at every layer.
        bn: whether each layer's batch is standardised before its sigmoid.
        layers: how many sigmoid layers, at least 1.
        m: the batch size.

    Returns:
        (1/m)·Σ_i Π_l g'(x_{l,i}).
    """
    layers = _check_count(layers, "layers", 1)
    m = _check_count(m, "m", 2)
    product = np.ones(m)  # (m,)
    for seed in range(layers):
        x = saturation_batch(drift, m=m, seed=seed)
        if bn:
            x = standardise(x)
        product *= sigmoid_slope(x)  # (m,)
    return float(product.mean())


# -- the runaway bias --------------------------------------------------------------------------

_MODES = ("naive", "aware")


@dataclass(frozen=True)
class RunawayBiasRun:
    """The trajectory of one :func:`runaway_bias` run.

    Attributes:
        mode: ``"naive"`` (the mean is treated as a constant) or ``"aware"``.
        lr: the learning rate.
        u: the layer's fixed input, shape (m,).
        target: the regression target of x̂, shape (m,).
        bias: b before step 0, 1, ..., steps (so after steps 0, ..., steps − 1), shape (steps+1,).
        loss: the loss at each of those values of b, shape (steps + 1,).
        grad: the gradient on b that each step used, shape (steps,).
        x_hat: the normalised output x̂ at each value of b, shape (steps + 1, m).
    """

    mode: str
    lr: float
    u: Array
    target: Array
    bias: Array
    loss: Array
    grad: Array
    x_hat: Array


def runaway_bias(
    mode: str = "naive",
    *,
    steps: int = 100,
    lr: float = 0.1,
    m: int = 16,
    target_mean: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> RunawayBiasRun:
    """Train a bias that sits in front of a mean subtraction, and record what happens.

    The layer is x = u + b followed by x̂ = x − mean(x) over a batch of m fixed inputs
    u, and the loss is ℓ = ½·mean((x̂ − t)²) for a target t whose mean is
    ``target_mean``. Since x̂ always has mean 0, ∂ℓ/∂x̂ sums to −mean(t) ≠ 0: the loss
    asks for a shift that centring forbids. Plain gradient descent on b,
    b ← b − lr·∂ℓ/∂b, with ∂ℓ/∂b from torch autograd:

    * ``"naive"``: the mean is computed, then detached (``x - x.mean().detach()``), so
      the gradient treats it as a constant, as it would a normalization computed outside
      the training step.
    * ``"aware"``: the gradient flows through the mean (``x - x.mean()``), as it does
      through a Batch Normalization layer.

    Args:
        mode: ``"naive"`` or ``"aware"``.
        steps: how many gradient steps, at least 0.
        lr: the learning rate, > 0.
        m: the batch size, at least 2.
        target_mean: the mean of the target t (set exactly); with 0 nothing runs away.
        seed: seed of u and of the target's spread.
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        A :class:`RunawayBiasRun` with the trajectories as float64 NumPy arrays.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    steps = _check_count(steps, "steps", 0)
    lr = _check_finite(lr, "lr")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    m = _check_count(m, "m", 2)
    target_mean = _check_finite(target_mean, "target_mean")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")

    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(m, generator=gen, dtype=torch.float64)  # (m,)
    spread = torch.randn(m, generator=gen, dtype=torch.float64)  # (m,)
    target = target_mean + (spread - spread.mean())  # (m,): its mean is target_mean
    u, target = u.to(dtype), target.to(dtype)
    b = torch.zeros((), dtype=dtype, requires_grad=True)

    bias, loss, grad, x_hat = [], [], [], []
    for step in range(steps + 1):
        x = u + b  # (m,)
        mean = x.mean()  # (): over the batch
        if mode == "naive":
            mean = mean.detach()  # a constant to autograd: the dependence on b is dropped
        xh = x - mean  # (m,)
        value = 0.5 * ((xh - target) ** 2).mean()  # ()
        bias.append(b.item())
        loss.append(value.item())
        x_hat.append(xh.detach().to(torch.float64).numpy())
        if step == steps:
            break
        (g,) = torch.autograd.grad(value, b)
        grad.append(g.item())
        with torch.no_grad():
            b -= lr * g

    return RunawayBiasRun(
        mode=mode,
        lr=lr,
        u=u.to(torch.float64).numpy(),
        target=target.to(torch.float64).numpy(),
        bias=np.array(bias),
        loss=np.array(loss),
        grad=np.array(grad),
        x_hat=np.stack(x_hat),
    )
