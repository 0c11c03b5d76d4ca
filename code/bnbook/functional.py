"""Batch Normalization in PyTorch from scratch, with a hand-written backward pass.

:func:`batch_norm` has the signature and the behaviour of ``torch.nn.functional.batch_norm``.
Its gradient is not obtained by autograd tracing primitives: :class:`BatchNormFunction` computes
it with the compact closed form derived in :mod:`bnbook.reference`, and its forward-mode
derivative (``jvp``) is written out too.

What makes it fit for real use, not only for reading:

* every kind of differentiation torch's own layer supports: the backward is built from
  differentiable torch ops, so a second derivative (a gradient penalty, a Hessian-vector
  product, ``torch.autograd.functional.hessian``) differentiates *through* it; the ``jvp``
  serves forward mode (``torch.autograd.forward_ad``, ``torch.func.jvp``); and the function
  follows the ``forward`` + ``setup_context`` form with a generated vmap rule, so
  ``torch.func.vmap``, ``torch.func.grad`` and ``is_grads_batched=True`` work;
* the statistics are accurate in float32 at any batch size: they are taken block by block
  (blocks of rows of about 2 MiB), each block's mean and sum of squared deviations from it by
  ``torch.mean`` and ``torch.sum`` (cascaded, pairwise sums on the CPU), and the blocks merged
  with Chan's rule, so the rounding error grows like log(m), not like m (at 16 x 224 x 224
  values per channel the output is within 1.3e-7 of float64; a sum of squares accumulated in
  order, as ``torch.linalg.vector_norm`` does, was off by 1.8e-4). The one-pass
  ``E[x**2] - E[x]**2`` is never used: it cancels when the mean is large against the spread
  (float32 data around 1e4 loses its variance entirely). The blocks also keep the temporaries
  small: on the CPU a fresh full-size temporary costs a page fault per 4 KiB;
* float16 and bfloat16 inputs are normalised in float32 and only the result is rounded back;
* an empty batch gives an empty output, zero parameter gradients and untouched running
  statistics, as torch does;
* one validation (:func:`bnbook.validation.check_batch_norm_args`), the same as the Triton and
  CUDA backends', runs before anything is read or written.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# _compute_dtype: float16/bfloat16 inputs are normalised in float32, by every normaliser alike.
from bnbook.normalization import (
    _compute_dtype,
    batch_renorm,
    group_norm,
    instance_norm,
    layer_norm,
    rms_norm,
)
from bnbook.validation import (
    BatchNormArgumentError,
    check_batch_norm_args,
    is_transform_wrapped,
)

# The other normalisers share one core of their own (bnbook.normalization); they are
# re-exported here so that bnbook.functional mirrors torch.nn.functional's names.
__all__ = [
    "BatchNormArgumentError",
    "BatchNormFunction",
    "batch_norm",
    "batch_renorm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
]

def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``; ``t`` itself when it already is (``Tensor.to`` costs a call)."""
    return t if t.dtype == dtype else t.to(dtype)


def _reduction_dims(ndim: int) -> tuple[int, ...]:
    """Every dim but the channel dim 1: (0,) for (N, C), (0, 2, 3) for (N, C, H, W)."""
    return (0, *range(2, ndim))


def _as_channel(v: Tensor, ndim: int) -> Tensor:
    """View a (C,) vector as (1, C, 1, ...), so it broadcasts over an ``ndim``-D input."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _count(x: Tensor) -> int:
    """m, the number of values each channel's statistics are taken over (0 for an empty input)."""
    return x.numel() // x.shape[1] if x.shape[1] else 0


# Rows of dim 0 per block of a blocked reduction: about 2 MiB of data, and at most 8 blocks.
# A block's temporaries then stay in the caches instead of costing full-size allocations (page
# faults on first touch), and the per-block Python calls stay few. On the benchmark machine
# 2 MiB blocks were faster than 256 KiB..1 MiB ones, whose extra calls cost more than they saved.
_BLOCK_BYTES = 1 << 21
_MAX_BLOCKS = 8


def _blocks(*tensors: Tensor, block_bytes: int | None = None) -> zip:
    """Split tensors of the same shape into the same blocks of rows along dim 0, each of about
    ``block_bytes`` (default ``_BLOCK_BYTES``), at most ``_MAX_BLOCKS`` of them."""
    x = tensors[0]
    block_bytes = _BLOCK_BYTES if block_bytes is None else block_bytes
    rows = max(block_bytes // max(x[:1].numel() * x.element_size(), 1), 1)
    rows = max(rows, -(-x.shape[0] // _MAX_BLOCKS))  # ceil(N / _MAX_BLOCKS)
    if rows >= x.shape[0]:
        return zip(*((t,) for t in tensors), strict=True)
    return zip(*(t.split(rows, dim=0) for t in tensors), strict=True)


def _batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x``, block by block, merged with Chan's rule.

    Each block of rows is read from memory once: its mean, then the sum of its squared
    deviations from that mean (the block is still in cache), both cascade (pairwise) sums.
    The blocks are then merged (Chan, Golub and LeVeque): with n_k values, mean mu_k and squared
    deviations M2_k per block, mean = sum(n_k mu_k) / m and
    M2 = sum(M2_k) + sum(n_k (mu_k - mean)**2). The variance is thus always a sum of squares of
    *centred* values, so a large mean cannot swamp it, and the rounding error grows like
    log(m), not like m. Differentiable: backward calls it again, with autograd on, when a
    second derivative is asked.

    Returns:
        (mean, var), each (C,), in ``x``'s dtype. For an empty ``x``, zeros and ones: harmless
        stand-ins that keep every gradient finite (zero) and that are never written to the
        running statistics.
    """
    m = _count(x)
    if m == 0:
        return x.new_zeros(x.shape[1]), x.new_ones(x.shape[1])
    dims = _reduction_dims(x.ndim)
    means, m2s, counts = [], [], []
    # One temporary per block here (two in _grad_sums), so blocks may be twice as large.
    for (b,) in _blocks(x, block_bytes=2 * _BLOCK_BYTES):
        mu = b.mean(dim=dims)  # (C,)
        means.append(mu)
        m2s.append((b - _as_channel(mu, x.ndim)).pow_(2).sum(dim=dims))  # (C,)
        counts.append(b.numel() // b.shape[1])
    if len(means) == 1:
        return means[0], m2s[0] / m
    mu_k = torch.stack(means)  # (K, C)
    n_k = torch.tensor(counts, dtype=x.dtype, device=x.device).unsqueeze(1)  # (K, 1)
    mean = (mu_k * n_k).sum(dim=0) / m  # (C,)
    m2 = torch.stack(m2s).sum(dim=0) + ((mu_k - mean).pow(2) * n_k).sum(dim=0)  # (C,)
    return mean, m2 / m  # (C,), (C,) biased, / m


def _grad_sums(x: Tensor, mean: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel sum(dy) and sum(dy * (x - mean)), block by block, reading dy once.

    Returns:
        (sum_dy, sum_dy_xc), each (C,).
    """
    dims = _reduction_dims(x.ndim)
    centre = _as_channel(mean, x.ndim)
    # The centred block is multiplied in place, so each block costs one fresh buffer, not two,
    # unless autograd records a graph (double backward needs the centred block intact) or a
    # torch.func transform has wrapped a tensor (in-place ops then cannot mix wrapped and plain).
    in_place = not torch.is_grad_enabled() and not any(
        is_transform_wrapped(t) for t in (x, mean, dy)
    )
    parts = [
        (d.sum(dim=dims), ((b - centre).mul_(d) if in_place else (b - centre) * d).sum(dim=dims))
        for b, d in _blocks(x, dy)
    ]
    if len(parts) == 1:
        return parts[0]
    sum_dy, sum_dy_xc = zip(*parts, strict=True)
    return torch.stack(sum_dy).sum(dim=0), torch.stack(sum_dy_xc).sum(dim=0)  # (C,), (C,)


def _update_running_stats(
    running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, m: int, momentum: float
) -> None:
    """PyTorch's convention: momentum weighs the new batch, and the stored variance is the
    unbiased one (/ (m - 1)), although the batch is normalised with the biased one (/ m)."""
    with torch.no_grad():
        # lerp(old, new, w) = old + w * (new - old) = (1 - w) * old + w * new.
        new_mean = torch.lerp(running_mean, _cast(mean, running_mean.dtype), momentum)
        unbiased = _cast(var, running_var.dtype) * (m / (m - 1))
        new_var = torch.lerp(running_var, unbiased, momentum)
        # Both new values exist before either buffer is written, so a failing copy (below)
        # leaves both as they were.
        try:
            running_mean.copy_(new_mean)
        except RuntimeError as error:
            if "vmap" not in str(error) and "Batched" not in str(error):
                raise
            raise RuntimeError(
                "batch_norm got an input batched by torch.func.vmap while running_mean and "
                "running_var, which are updated in place, are not batched (torch's batch norm "
                "refuses this too). Pass running_mean=None and running_var=None (a module: "
                "track_running_stats=False, or torch.func.replace_all_batch_norm_modules_), or "
                "batch the running statistics along the vmapped dim too."
            ) from error
        running_var.copy_(new_var)


class BatchNormFunction(torch.autograd.Function):
    """Batch normalisation with its derivatives written out: backward (reverse) and jvp (forward).

    ``apply(input, weight, bias, running_mean, running_var, training, momentum, eps)`` returns
    ``(output, mean, var)``: the normalised input and the per-channel statistics it was
    normalised with, (C,) in the compute dtype (the batch's biased variance in training, copies of
    the running statistics otherwise). ``mean`` and ``var`` are not differentiable; they are
    outputs because torch.func requires every tensor that backward saves to be an input or an
    output. In training the running statistics, if given, are updated in place; they are not
    differentiable (as in torch). ``weight`` and ``bias`` may be None. Call it through
    :func:`batch_norm`, which validates the arguments first.
    """

    # vmap runs forward, backward and jvp on batched tensors, op by op (every op used has a
    # batching rule; the running statistics can only be updated if they are batched too).
    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        cdtype = _compute_dtype(input.dtype)
        ndim = input.ndim
        x = _cast(input, cdtype)

        if training:
            mean, var = _batch_stats(x)  # (C,), (C,)
            m = _count(x)
            if running_mean is not None and running_var is not None and m > 0:
                # Here, not in batch_norm: torch.func runs forward below its grad and jvp
                # transforms, on plain tensors, so buffers captured by a transformed function
                # can be updated (as torch's kernel updates them).
                _update_running_stats(running_mean, running_var, mean, var, m, momentum)
        else:
            # Copies: the buffers may be updated by a training step before this backward runs.
            assert running_mean is not None and running_var is not None
            mean = running_mean.to(cdtype, copy=True)  # (C,)
            var = running_var.to(cdtype, copy=True)  # (C,)
        inv_std = torch.rsqrt(var + eps)  # (C,)
        # y = weight * x_hat + bias = x * scale + shift, with the per-channel scale and shift
        # computed once: one fused multiply-add over the data. (torch's CPU kernel folds the
        # mean into the shift the same way; the rounding of x * scale then limits the output's
        # accuracy to about eps_machine * |mean| / std, relative.)
        scale = inv_std if weight is None else inv_std * _cast(weight, cdtype)  # (C,)
        shift = -mean * scale if bias is None else _cast(bias, cdtype) - mean * scale  # (C,)
        y = torch.addcmul(_as_channel(shift, ndim), x, _as_channel(scale, ndim))
        return _cast(y, input.dtype), mean, var

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, weight, bias, _, _, training, _, eps = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        # The input, not x - mean: the input is what a second derivative differentiates with
        # respect to, and torch's own kernel keeps the same one tensor of the input's size.
        ctx.save_for_backward(input, weight, mean, var)
        ctx.save_for_forward(input, weight, mean, var)
        ctx.training = training
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _: Any, __: Any) -> tuple[Tensor | None, ...]:
        """dL/d(input, weight, bias) from dL/dy. Built from differentiable ops: with autograd
        on (``create_graph=True``, ``torch.func.grad`` of ``grad``), its own graph is recorded,
        so a second derivative differentiates through it."""
        input, weight, mean, var = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        cdtype, ndim = mean.dtype, input.ndim
        x = _cast(input, cdtype)
        if ctx.training and torch.is_grad_enabled():
            # A second derivative needs the statistics as functions of x, not as the constants
            # saved by forward: the mean and variance paths of the second derivative live here.
            mean, var = _batch_stats(x)
        inv_std = torch.rsqrt(var + ctx.eps)  # (C,)
        dy = _cast(grad_output, cdtype)
        m = _count(x)

        sum_dy, sum_dy_xc = _grad_sums(x, mean, dy)  # (C,), (C,)
        sum_dy_xhat = sum_dy_xc * inv_std  # sum(dy * x_hat), (C,)

        dx = dweight = dbias = None
        if need_dx:
            scale = inv_std if weight is None else inv_std * _cast(weight, cdtype)  # (C,)
            if ctx.training:
                # dx = (scale / m) * (m * dy - sum(dy) - x_hat * sum(dy * x_hat))
                #    = scale * (dy - h * (x - mean) - g),  g = sum(dy) / m,
                #                                         h = inv_std * sum(dy * x_hat) / m,
                #    = a * dy + b * x + c,  a = scale, b = -scale * h, c = scale * (h * mean - g),
                # as two fused multiply-adds with per-channel operands (two passes, not three).
                # The mean is folded into the shift c: |h * mean| / |dy| ~ |mean| / (std *
                # sqrt(m)) bounds what that rounds.
                g = sum_dy / m  # (C,)
                h = sum_dy_xhat * inv_std / m  # (C,)
                b = _as_channel(-scale * h, ndim)  # (1, C, 1, ...)
                c = _as_channel(scale * (h * mean - g), ndim)  # (1, C, 1, ...)
                dx = torch.addcmul(c, x, b).addcmul_(dy, _as_channel(scale, ndim))
            else:
                # The statistics are constants here: y is affine in x, with slope weight*inv_std.
                dx = dy * _as_channel(scale, ndim)
            dx = _cast(dx, input.dtype)
        if need_dw and weight is not None:
            dweight = _cast(sum_dy_xhat, weight.dtype)
        if need_db and ctx.bias_dtype is not None:
            dbias = _cast(sum_dy, ctx.bias_dtype)
        return dx, dweight, dbias, None, None, None, None, None

    @staticmethod
    def jvp(
        ctx: Any,
        input_t: Tensor | None,
        weight_t: Tensor | None,
        bias_t: Tensor | None,
        *_: Any,
    ) -> tuple[Tensor | None, None, None]:
        """dy from the tangents (dx, dweight, dbias): forward-mode AD.

        In training, with x_hat = (x - mean) * inv_std,
        d mean = mean(dx), d var = 2 mean((x - mean) * (dx - d mean)),
        d x_hat = inv_std * ((dx - d mean) - x_hat * mean(x_hat * (dx - d mean))),
        dy = weight * d x_hat + dweight * x_hat + dbias.
        In eval the statistics are constants: d x_hat = dx * inv_std.
        """
        input, weight, mean, var = ctx.saved_tensors
        cdtype, ndim = mean.dtype, input.ndim
        dims = _reduction_dims(ndim)
        x = input.to(cdtype)
        inv_std = torch.rsqrt(var + ctx.eps)  # (C,)
        x_hat = (x - _as_channel(mean, ndim)) * _as_channel(inv_std, ndim)  # (N, C, *spatial)

        dy = None
        if input_t is not None:
            dx = input_t.to(cdtype)
            if ctx.training and _count(x) > 0:
                dxc = dx - _as_channel(dx.mean(dim=dims), ndim)  # (N, C, *spatial)
                # inv_std * d var / 2 = inv_std * mean((x - mean) * dxc) = mean(x_hat * dxc).
                half = (x_hat * dxc).mean(dim=dims)  # (C,)
                dx_hat = (dxc - x_hat * _as_channel(half, ndim)) * _as_channel(inv_std, ndim)
            else:
                dx_hat = dx * _as_channel(inv_std, ndim)
            dy = dx_hat if weight is None else dx_hat * _as_channel(weight.to(cdtype), ndim)
        if weight_t is not None:
            term = x_hat * _as_channel(weight_t.to(cdtype), ndim)
            dy = term if dy is None else dy + term
        if bias_t is not None:
            term = _as_channel(bias_t.to(cdtype), ndim)
            dy = term.expand_as(x_hat) if dy is None else dy + term
        if dy is not None:
            dy = dy.to(input.dtype)
        return dy, None, None


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
    before any running statistic is touched; an empty batch leaves them untouched.

    Under ``torch.func.vmap`` it behaves as torch's: with running statistics in training, they
    must be batched too (or None), else it raises a RuntimeError before writing anything.

    Args:
        input: shape (N, C) or (N, C, *spatial), floating point, any memory layout; may be empty.
        running_mean: per-channel mean of shape (C,), or None (allowed only in training).
        running_var: per-channel variance of shape (C,), or None (allowed only in training).
        weight: the scale gamma, shape (C,), or None for 1.
        bias: the shift beta, shape (C,), or None for 0.
        training: use (and track) the batch statistics instead of the running ones.
        momentum: weight of the new batch in the running averages (any finite number, as torch).
        eps: added to the variance before the square root; > 0 in training, >= 0 otherwise.

    Returns:
        The normalised tensor, shaped like ``input`` and in its dtype (float16/bfloat16 inputs
        are computed in float32).

    Raises:
        TypeError: if an argument has the wrong Python type (as torch).
        BatchNormArgumentError: on a bad rank, dtype, device or shape, a missing running
            statistic in eval, a non-positive ``eps`` in training, or a single value per channel
            in training. It is a ``ValueError`` and a ``RuntimeError``: see
            :mod:`bnbook.validation`.
    """
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum, eps)
    y, _, _ = BatchNormFunction.apply(
        input, weight, bias, running_mean, running_var, training, float(momentum), float(eps)
    )
    return y
