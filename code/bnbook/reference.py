"""Batch Normalization in NumPy, written to be read.

This is the version of the layer a learner reads first. Every function works on inputs of shape
(N, C) or (N, C, *spatial) and normalises each channel ``c`` over every other axis, so one
channel's statistics are taken over ``m = N * prod(spatial)`` numbers.

Names follow PyTorch; the Greek letters of the paper map onto them as
``gamma -> weight``, ``beta -> bias``, ``mu -> mean``, ``sigma**2 -> var``,
``x_hat -> x_hat`` and ``1 / sqrt(sigma**2 + eps) -> inv_std``.

Two backward passes are given on purpose. :func:`batch_norm_backward_staged` walks the
computation graph of the forward pass one node at a time, so every local derivative is visible;
:func:`batch_norm_backward` is the closed form those steps simplify to. They agree to rounding,
and the tests check both against finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.floating]

__all__ = [
    "BatchNormCache",
    "batch_norm_backward",
    "batch_norm_backward_staged",
    "batch_norm_forward",
    "batch_norm_inference",
    "update_running_stats",
]


@dataclass(frozen=True)
class BatchNormCache:
    """What the forward pass keeps for the backward pass.

    The per-channel statistics are stored with singleton axes everywhere but axis 1
    (shape ``(1, C, 1, ...)``), so that they broadcast against the input without reshaping.
    Use ``.ravel()`` on them to get a plain ``(C,)`` vector.

    Attributes:
        x: the input, shape (N, C, *spatial).
        x_centered: ``x - mean``, the node ``xc`` of the computation graph.
        x_hat: the normalised input ``xc * inv_std``.
        mean: per-channel batch mean, shape (1, C, 1, ...).
        var: per-channel biased batch variance (divided by m), shape (1, C, 1, ...).
        inv_std: ``1 / sqrt(var + eps)``, shape (1, C, 1, ...).
        weight: the scale (gamma), shape (1, C, 1, ...).
        eps: the constant added to the variance.
        axes: the reduction axes, every axis but 1.
        m: how many numbers each channel's statistics are taken over.
    """

    x: Array
    x_centered: Array
    x_hat: Array
    mean: Array
    var: Array
    inv_std: Array
    weight: Array
    eps: float
    axes: tuple[int, ...]
    m: int


def _reduction_axes(ndim: int) -> tuple[int, ...]:
    """Every axis but the channel axis 1: (0,) for (N, C), (0, 2, 3) for (N, C, H, W)."""
    return (0, *range(2, ndim))


def _as_channel(v: Array, ndim: int) -> Array:
    """Reshape a (C,) vector to (1, C, 1, ...) so that it broadcasts against an ndim-D input."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _check_input(x: ArrayLike, name: str = "x") -> Array:
    """Return ``x`` as a floating array of rank >= 2, or raise a ValueError naming it."""
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, C) or (N, C, *spatial) (rank >= 2), "
            f"got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _check_channel_vector(v: ArrayLike, name: str, num_channels: int) -> Array:
    """Return ``v`` as an array of shape (C,), or raise a ValueError naming it."""
    arr = np.asarray(v)
    if arr.shape != (num_channels,):
        raise ValueError(
            f"{name} must have shape ({num_channels},), one value per channel, "
            f"got shape {arr.shape}"
        )
    return arr


def _check_eps(eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got {eps}")


def batch_norm_forward(
    x: ArrayLike, weight: ArrayLike, bias: ArrayLike, eps: float = 1e-5
) -> tuple[Array, BatchNormCache]:
    """Normalise each channel with its batch statistics, then scale and shift it.

    Args:
        x: input of shape (N, C) or (N, C, *spatial).
        weight: the scale gamma, shape (C,).
        bias: the shift beta, shape (C,).
        eps: added to the variance before the square root; must be > 0.

    Returns:
        ``(y, cache)``: the output, shaped like ``x``, and the :class:`BatchNormCache` both
        backward passes need.
    """
    x = _check_input(x, "x")
    num_channels = x.shape[1]
    w = _as_channel(_check_channel_vector(weight, "weight", num_channels), x.ndim)
    b = _as_channel(_check_channel_vector(bias, "bias", num_channels), x.ndim)
    _check_eps(eps)
    axes = _reduction_axes(x.ndim)
    m = x.size // num_channels

    # The four steps. keepdims=True keeps the statistics at shape (1, C, 1, ...).
    mean = x.mean(axis=axes, keepdims=True)  # 1. (1, C, 1, ...)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)  # 2. (1, C, 1, ...) biased: / m
    x_hat = (x - mean) / np.sqrt(var + eps)  # 3. (N, C, *spatial)
    y = w * x_hat + b  # 4. (N, C, *spatial)

    x_centered = x - mean
    cache = BatchNormCache(
        x=x,
        x_centered=x_centered,
        x_hat=x_hat,
        mean=mean,
        var=var,
        inv_std=1.0 / np.sqrt(var + eps),
        weight=w,
        eps=float(eps),
        axes=axes,
        m=m,
    )
    return y, cache


def _check_grad(dy: ArrayLike, cache: BatchNormCache) -> Array:
    """Return ``dy`` as an array, or raise if it is not shaped like the forward output."""
    dy = np.asarray(dy)
    if dy.shape != cache.x.shape:
        raise ValueError(
            f"dy must have the shape of the forward output {cache.x.shape}, got {dy.shape}"
        )
    return dy


def batch_norm_backward_staged(
    dy: ArrayLike, cache: BatchNormCache
) -> tuple[Array, Array, Array]:
    """Backpropagate through the computation graph of the forward pass, one node at a time.

    The forward pass, read as a graph from the input to the output::

        mean = mean(x)          x feeds two nodes: mean and xc
        xc   = x - mean
        var  = mean(xc ** 2)    xc feeds two nodes: var and x_hat
        istd = 1 / sqrt(var + eps)
        x_hat = xc * istd
        y    = weight * x_hat + bias

    Walking it backwards, each line below multiplies the incoming gradient by one local
    derivative. Where a node feeds two consumers, its gradient is the sum of both paths (``+=``).

    Args:
        dy: upstream gradient dL/dy, shaped like the forward output.
        cache: what :func:`batch_norm_forward` returned.

    Returns:
        ``(dx, dweight, dbias)``: dL/dx shaped like the input, dL/dweight and dL/dbias of shape
        (C,).
    """
    dy = _check_grad(dy, cache)
    axes, m = cache.axes, cache.m
    xc, x_hat, istd, var, eps = cache.x_centered, cache.x_hat, cache.inv_std, cache.var, cache.eps

    # y = weight * x_hat + bias
    dbias = dy.sum(axis=axes)  # (C,)                          dy/dbias = 1
    dweight = (dy * x_hat).sum(axis=axes)  # (C,)               dy/dweight = x_hat
    dx_hat = dy * cache.weight  #                               dy/dx_hat = weight
    # x_hat = xc * istd
    dxc = dx_hat * istd  #                                      dx_hat/dxc = istd (first path)
    distd = (dx_hat * xc).sum(axis=axes, keepdims=True)  # (1, C, 1, ...)   dx_hat/distd = xc
    # istd = (var + eps) ** -0.5
    dvar = distd * -0.5 * (var + eps) ** -1.5  #                distd/dvar = -1/2 (var+eps)^-3/2
    # var = mean(xc ** 2)
    dxc += dvar * 2.0 * xc / m  #                               dvar/dxc = 2 xc / m (second path)
    # xc = x - mean
    dx = dxc.copy()  #                                          dxc/dx = 1 (first path)
    dmean = -dxc.sum(axis=axes, keepdims=True)  # (1, C, 1, ...)   dxc/dmean = -1
    # mean = mean(x)
    dx += dmean / m  #                                          dmean/dx = 1/m (second path)
    return dx, dweight, dbias


def batch_norm_backward(dy: ArrayLike, cache: BatchNormCache) -> tuple[Array, Array, Array]:
    """Backpropagate with the closed form the staged pass simplifies to.

    Per channel, with ``m`` values and sums over the reduction axes::

        dx = (weight * inv_std / m) * (m * dy - sum(dy) - x_hat * sum(dy * x_hat))

    Args:
        dy: upstream gradient dL/dy, shaped like the forward output.
        cache: what :func:`batch_norm_forward` returned.

    Returns:
        ``(dx, dweight, dbias)``: dL/dx shaped like the input, dL/dweight and dL/dbias of shape
        (C,).
    """
    dy = _check_grad(dy, cache)
    axes, m, x_hat = cache.axes, cache.m, cache.x_hat

    sum_dy = dy.sum(axis=axes, keepdims=True)  # (1, C, 1, ...)
    sum_dy_xhat = (dy * x_hat).sum(axis=axes, keepdims=True)  # (1, C, 1, ...)
    dx = (cache.weight * cache.inv_std / m) * (m * dy - sum_dy - x_hat * sum_dy_xhat)
    return dx, sum_dy_xhat.ravel(), sum_dy.ravel()


def batch_norm_inference(
    x: ArrayLike,
    running_mean: ArrayLike,
    running_var: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike,
    eps: float = 1e-5,
) -> Array:
    """Normalise with stored statistics instead of the batch's, as a layer does in eval mode.

    Every sample is then transformed independently of the rest of its batch.

    Args:
        x: input of shape (N, C) or (N, C, *spatial).
        running_mean: per-channel mean to subtract, shape (C,).
        running_var: per-channel variance to divide by, shape (C,).
        weight: the scale gamma, shape (C,).
        bias: the shift beta, shape (C,).
        eps: added to the variance before the square root; must be > 0.

    Returns:
        The output, shaped like ``x``.
    """
    x = _check_input(x, "x")
    num_channels = x.shape[1]
    mean = _as_channel(_check_channel_vector(running_mean, "running_mean", num_channels), x.ndim)
    var = _as_channel(_check_channel_vector(running_var, "running_var", num_channels), x.ndim)
    w = _as_channel(_check_channel_vector(weight, "weight", num_channels), x.ndim)
    b = _as_channel(_check_channel_vector(bias, "bias", num_channels), x.ndim)
    _check_eps(eps)
    return w * (x - mean) / np.sqrt(var + eps) + b


def update_running_stats(
    running_mean: ArrayLike, running_var: ArrayLike, x: ArrayLike, momentum: float = 0.1
) -> tuple[Array, Array]:
    """One step of the exponential moving average a layer keeps in training, PyTorch's way.

    ``new = (1 - momentum) * old + momentum * batch``: here ``momentum`` weighs the NEW batch
    (Keras and TensorFlow use the opposite convention). The variance stored is the unbiased
    batch variance (divided by m - 1), although normalising uses the biased one.

    Args:
        running_mean: the current running mean, shape (C,).
        running_var: the current running variance, shape (C,).
        x: the batch, shape (N, C) or (N, C, *spatial); needs m > 1 values per channel.
        momentum: weight of the new batch, in [0, 1].

    Returns:
        ``(new_mean, new_var)``, new arrays of shape (C,); the inputs are not modified.
    """
    x = _check_input(x, "x")
    num_channels = x.shape[1]
    old_mean = _check_channel_vector(running_mean, "running_mean", num_channels)
    old_var = _check_channel_vector(running_var, "running_var", num_channels)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    axes = _reduction_axes(x.ndim)
    m = x.size // num_channels
    if m < 2:
        raise ValueError(
            f"x must hold more than 1 value per channel to estimate a variance, "
            f"got shape {x.shape}"
        )
    batch_mean = x.mean(axis=axes)  # (C,)
    batch_var = x.var(axis=axes, ddof=1)  # (C,) unbiased: / (m - 1)
    new_mean = (1.0 - momentum) * old_mean + momentum * batch_mean
    new_var = (1.0 - momentum) * old_var + momentum * batch_var
    return new_mean, new_var
