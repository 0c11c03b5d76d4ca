"""Batch Normalization in PyTorch from scratch, with a hand-written backward pass.

:func:`batch_norm` has the signature and the behaviour of ``torch.nn.functional.batch_norm``.
Its gradient is not obtained by autograd tracing primitives: :class:`BatchNormFunction` computes
it with the compact closed form derived in :mod:`bnbook.reference`.

Three choices make it fit for real use, not only for reading:

* the variance is computed in two passes (the mean, then the mean of squared deviations),
  never as ``E[x**2] - E[x]**2``, which cancels catastrophically when the mean is large
  against the spread (float32 data around 1e4 loses its variance entirely);
* float16 and bfloat16 inputs are normalised in float32 and only the result is rounded back;
* the per-channel vectors are shaped (1, C, 1, ...) and combined with fused element-wise ops
  (``torch.addcmul``), so each pass over the data is one kernel, whatever the memory layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["BatchNormFunction", "batch_norm"]

# Inputs in these dtypes are normalised in float32: with 8 (bfloat16) or 11 (float16)
# significant bits they cannot hold a sum over thousands of values.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _reduction_dims(ndim: int) -> tuple[int, ...]:
    """Every dim but the channel dim 1: (0,) for (N, C), (0, 2, 3) for (N, C, H, W)."""
    return (0, *range(2, ndim))


def _as_channel(v: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
    """View a (C,) vector as (1, C, 1, ...) in ``dtype``, so it broadcasts over the input."""
    return v.to(dtype).reshape((1, -1) + (1,) * (ndim - 2))


def _sum_of_squares(xc: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Per-channel sum of ``xc ** 2`` over ``dims``, kept as (1, C, 1, ...)."""
    if xc.ndim > 2:
        # vector_norm reads xc once and allocates no (N, C, *spatial) temporary.
        return torch.linalg.vector_norm(xc, 2, dim=dims, keepdim=True).square_()
    # For (N, C), torch 2.13's CPU vector_norm over the outer dim 0 is slow: on (4096, 256)
    # float32, one thread, it took ~8 ms where a square followed by a sum took ~1.5 ms.
    return xc.square().sum(dim=dims, keepdim=True)


class BatchNormFunction(torch.autograd.Function):
    """Batch normalisation with the compact backward pass written out.

    ``forward(input, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps)``.
    ``weight``, ``bias`` and the running statistics may be None. With ``use_batch_stats`` the
    batch's own statistics normalise it and, if given, the running statistics are updated in
    place; otherwise the running statistics normalise it. Gradients flow to ``input``,
    ``weight`` and ``bias``; double backward is not supported (``once_differentiable``).
    Call it through :func:`batch_norm`, which validates the arguments first.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        use_batch_stats: bool,
        momentum: float,
        eps: float,
    ) -> Tensor:
        cdtype = _compute_dtype(input.dtype)
        ndim = input.ndim
        dims = _reduction_dims(ndim)
        m = input.numel() // input.shape[1]
        x = input.to(cdtype)

        if use_batch_stats:
            mean = x.mean(dim=dims, keepdim=True)  # (1, C, 1, ...)
            # Two passes: the variance is the mean square of the CENTRED data, so a large mean
            # cannot swamp it. A fresh float32 copy of a half input is centred in place.
            xc = x.sub_(mean) if x is not input else x - mean  # (N, C, *spatial)
            var = _sum_of_squares(xc, dims) / m  # (1, C, 1, ...) biased, / m
            inv_std = torch.rsqrt(var + eps)  # (1, C, 1, ...)
            if running_mean is not None and running_var is not None:
                # PyTorch's convention: momentum weighs the new batch, and the stored variance
                # is the unbiased one (/ (m - 1)), although the batch is normalised with / m.
                running_mean.mul_(1.0 - momentum).add_(
                    mean.reshape(-1).to(running_mean.dtype), alpha=momentum
                )
                running_var.mul_(1.0 - momentum).add_(
                    var.reshape(-1).to(running_var.dtype), alpha=momentum * m / (m - 1)
                )
            # y = weight * x_hat + bias = xc * (weight * inv_std) + bias: the per-channel scale
            # is computed once and the output is one fused multiply-add over the data.
            # x_hat itself is never stored: backward rebuilds what it needs from xc.
            scale = inv_std if weight is None else inv_std * _as_channel(weight, ndim, cdtype)
            shift = _as_channel(bias, ndim, cdtype) if bias is not None else xc.new_zeros(())
            y = torch.addcmul(shift, xc, scale)
            ctx.save_for_backward(xc, inv_std, weight)
        else:
            assert running_mean is not None and running_var is not None
            # Fixed statistics make the layer affine per channel: y = x * scale + shift.
            # A copy: the buffer itself may be updated by a training step before this backward.
            mean = _as_channel(running_mean, ndim, cdtype).clone()  # (1, C, 1, ...)
            inv_std = torch.rsqrt(_as_channel(running_var, ndim, cdtype) + eps)  # (1, C, 1, ...)
            scale = inv_std if weight is None else inv_std * _as_channel(weight, ndim, cdtype)
            shift = -mean * scale
            if bias is not None:
                shift = shift + _as_channel(bias, ndim, cdtype)
            y = torch.addcmul(shift, x, scale)
            ctx.save_for_backward(input, inv_std, weight, mean)

        ctx.use_batch_stats = use_batch_stats
        ctx.m = m
        ctx.has_weight = weight is not None
        ctx.has_bias = bias is not None
        ctx.weight_dtype = weight.dtype if weight is not None else None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.cdtype = cdtype
        return y.to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        cdtype, m = ctx.cdtype, ctx.m
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        ndim = grad_output.ndim
        dims = _reduction_dims(ndim)
        dy = grad_output.to(cdtype)
        dx = dweight = dbias = None

        if ctx.use_batch_stats:
            xc, inv_std, weight = ctx.saved_tensors
            sum_dy = dy.sum(dim=dims, keepdim=True)  # (1, C, 1, ...)
            dy_xc = dy * xc  # (N, C, *spatial), reused below as dx's buffer
            # sum(dy * x_hat) = inv_std * sum(dy * xc), since x_hat = xc * inv_std.
            sum_dy_xhat = dy_xc.sum(dim=dims, keepdim=True).mul_(inv_std)  # (1, C, 1, ...)
            if need_dx:
                # dx = k * (m * dy - sum(dy) - x_hat * sum(dy * x_hat)), k = weight * inv_std / m,
                # evaluated as dx = (k * m) * dy + c1 * xc + c0 in two fused passes.
                k = inv_std / m
                if weight is not None:
                    k = k * _as_channel(weight, ndim, cdtype)
                c0 = -k * sum_dy
                c1 = -k * sum_dy_xhat * inv_std
                dx = torch.addcmul(c0, xc, c1, out=dy_xc)
                dx.addcmul_(dy, k * m)
        else:
            x, inv_std, weight, mean = ctx.saved_tensors
            sum_dy = dy.sum(dim=dims, keepdim=True) if need_db else None  # (1, C, 1, ...)
            if need_dw:
                x_hat = (x.to(cdtype) - mean).mul_(inv_std)  # (N, C, *spatial)
                sum_dy_xhat = (dy * x_hat).sum(dim=dims, keepdim=True)  # (1, C, 1, ...)
            if need_dx:
                # The statistics are constants here: y is affine in x, with slope weight*inv_std.
                k = inv_std if weight is None else inv_std * _as_channel(weight, ndim, cdtype)
                dx = dy * k

        if need_dx:
            dx = dx.to(grad_output.dtype)
        if need_dw and ctx.has_weight:
            dweight = sum_dy_xhat.reshape(-1).to(ctx.weight_dtype)
        if need_db and ctx.has_bias:
            dbias = sum_dy.reshape(-1).to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None, None, None, None


def _check_channel_vector(v: Tensor | None, name: str, num_channels: int) -> None:
    if v is None:
        return
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(v).__name__}")
    if v.shape != (num_channels,):
        raise ValueError(
            f"{name} must have shape ({num_channels},), one value per channel of the input, "
            f"got shape {tuple(v.shape)}"
        )
    if not v.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype, got {v.dtype}")


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Apply batch normalisation per channel; a drop-in for ``torch.nn.functional.batch_norm``.

    Statistics are taken per channel (dim 1) over every other dim. In training the batch's own
    mean and biased variance normalise it, and ``running_mean``/``running_var``, when given, are
    updated in place: ``new = (1 - momentum) * old + momentum * batch``, with the unbiased batch
    variance. Otherwise the running statistics normalise the input. Every argument is validated
    before any running statistic is touched.

    Args:
        input: shape (N, C) or (N, C, *spatial), floating point; any memory layout.
        running_mean: per-channel mean of shape (C,), or None (allowed only in training).
        running_var: per-channel variance of shape (C,), or None (allowed only in training).
        weight: the scale gamma, shape (C,), or None for 1.
        bias: the shift beta, shape (C,), or None for 0.
        training: use (and track) the batch statistics instead of the running ones.
        momentum: weight of the new batch in the running averages.
        eps: added to the variance before the square root; > 0 in training, >= 0 otherwise.

    Returns:
        The normalised tensor, shaped like ``input`` and in its dtype (float16/bfloat16 inputs
        are computed in float32).

    Raises:
        TypeError: if ``input`` is not a Tensor.
        ValueError: on a bad rank, dtype or shape, a missing running statistic in eval, a
            non-positive ``eps``, or a single value per channel in training.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if input.ndim < 2:
        raise ValueError(
            f"input must have shape (N, C) or (N, C, *spatial) (at least 2 dims), "
            f"got {input.ndim}D input of shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise ValueError(f"input must have a floating-point dtype, got {input.dtype}")
    num_channels = input.shape[1]
    for name, v in (
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ):
        _check_channel_vector(v, name, num_channels)
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_mean and running_var must be given together or both be None, got "
            f"running_mean={'None' if running_mean is None else 'a Tensor'}, "
            f"running_var={'None' if running_var is None else 'a Tensor'}"
        )
    if not training and running_mean is None:
        raise ValueError(
            "running_mean and running_var are required when training=False: "
            "they are the statistics the input is normalised with"
        )
    if training:
        if input.numel() // num_channels == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {input.size()}"
            )
        if not eps > 0.0:
            raise ValueError(f"eps must be positive during training, but got {eps}")
        if running_mean is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    elif not eps >= 0.0:
        raise ValueError(f"eps must be non-negative, but got {eps}")

    return BatchNormFunction.apply(
        input, weight, bias, running_mean, running_var, training, momentum, eps
    )
