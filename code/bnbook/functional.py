"""Batch Normalization in PyTorch from scratch, with a hand-written backward pass.

:func:`batch_norm` has the signature and the behaviour of ``torch.nn.functional.batch_norm``.
Its gradient is not obtained by autograd tracing primitives: :class:`BatchNormFunction` computes
it with the compact closed form derived in :mod:`bnbook.reference`, and its forward-mode
derivative (``jvp``) is written out too.

What makes it fit for real use, not only for reading:

* every kind of differentiation torch's own layer supports: the backward is built from
  differentiable torch ops, so a second derivative (a gradient penalty, a Hessian-vector
  product, ``torch.autograd.functional.hessian``) differentiates *through* it; the ``jvp``
  serves forward mode (``torch.autograd.forward_ad``, ``torch.func.jvp``); and under a
  torch.func transform the same forward, backward and jvp run in the ``forward`` +
  ``setup_context`` form with a generated vmap rule
  (:class:`BatchNormFunctionForTransforms`), so ``torch.func.vmap``, ``torch.func.grad`` and
  ``is_grads_batched=True`` work; that form, out of place throughout, also serves tracers
  (``torch.export``, ``torch.compile``), which refuse ops that write into a given output;
* the statistics are accurate in float32 at any batch size: the mean, then the mean of the
  squared deviations from it, each a cascade (pairwise) sum on the CPU, so the rounding error
  grows like log(m), not like m (at 16 x 224 x 224 values per channel the output is within
  about 1e-7 of float64; a sum of squares accumulated in order, as
  ``torch.linalg.vector_norm`` does, was off by 1.8e-4). The one-pass ``E[x**2] - E[x]**2`` is
  never used: it cancels when the mean is large against the spread (float32 data around 1e4
  loses its variance entirely). A channel whose mean is more than 8 standard deviations from
  zero gets one more pass, correcting the float32 mean's last-place error, which the output
  would otherwise feel (on the CPU, outside torch.func transforms: the check needs the data's
  answer in Python, which on a GPU would wait for the device);
* few passes over memory, because at these sizes a pass costs about the same whichever op
  makes it: the forward reads x three times (mean, centred squares, output) and the backward
  five times, with no temporary beyond the buffers of y and dx themselves. Two of torch's
  loss ops serve as fused elementwise steps torch otherwise lacks: the squared error is
  ``(x - mean)**2`` in one pass, and its gradient ``2 (x - t) g`` is ``(x - mean) * dy``;
* float16 and bfloat16 inputs are normalised in float32 and only the result is rounded back;
* the output and the input's gradient come back in the memory layout torch's kernel gives
  them, whatever the layouts of the input and of the upstream gradient;
* an empty batch gives an empty output, zero parameter gradients and untouched running
  statistics, as torch does;
* one validation (:func:`bnbook.validation.check_batch_norm_args`), the same as the Triton and
  CUDA backends', runs before anything is read or written.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

try:  # torch's own Python mirror of Tensor.suggest_memory_format (no public one yet)
    from torch._prims_common import suggest_memory_format as _suggest_memory_format
except ImportError:  # pragma: no cover - an older or newer torch: approximate it
    def _suggest_memory_format(x: Tensor) -> torch.memory_format:
        return torch.contiguous_format

# _compute_dtype: float16/bfloat16 inputs are normalised in float32, by every normaliser alike;
# _statistics: the differentiable two-pass mean and variance a second derivative goes through.
from bnbook.normalization import (
    _compute_dtype,
    _statistics,
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
    "BatchNormFunctionForTransforms",
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
    """View a (C,) vector as (1, C, 1, ...), so it broadcasts over an ``ndim``-D input.

    A (C,) vector already broadcasts over an (N, C) input, and is returned as it is there (a
    view costs a call, and this runs several times per step).
    """
    return v if ndim == 2 else v.reshape((1, -1) + (1,) * (ndim - 2))


def _flat(stat: Tensor) -> Tensor:
    """A per-channel statistic as a (C,) vector: itself if it is one already."""
    return stat if stat.ndim == 1 else stat.reshape(-1)


def _output_format(x: Tensor) -> torch.memory_format | None:
    """The memory layout torch's batch norm gives its output and input gradient, for input ``x``.

    torch allocates both in ``x.suggest_memory_format()``: channels_last (or channels_last_3d)
    when x's strides are ordered like it, else contiguous, so a transposed or sliced input
    gets a contiguous output. None when x is empty (torch's empty-input path makes y a clone of
    x and dx follows dy) or wrapped by a torch.func transform (no strides to read).
    """
    if x.numel() == 0 or is_transform_wrapped(x):
        return None
    if x.is_contiguous():  # the two common cases first: the full rule costs ~30 us
        return torch.contiguous_format
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return _suggest_memory_format(x)


def _buffer_like(x: Tensor, fmt: torch.memory_format | None) -> Tensor:
    """An uninitialised tensor shaped like x, in layout ``fmt`` (x's own if None)."""
    return torch.empty_like(x) if fmt is None else torch.empty_like(x, memory_format=fmt)


def _in_format(t: Tensor, fmt: torch.memory_format | None) -> Tensor:
    """``t`` in layout ``fmt``: itself if it already is (or if fmt is None), else a copy."""
    return t if fmt is None else t.contiguous(memory_format=fmt)


def _count(x: Tensor) -> int:
    """m, the number of values each channel's statistics are taken over (0 for an empty input)."""
    return x.numel() // x.shape[1] if x.shape[1] else 0


def _transforms_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jvp, ...) is running around this call."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else bool(active())  # unknown torch: take the safe class


# at::Reduction::None, the elementwise (unreduced) form of torch's loss functions.
_REDUCTION_NONE = 0

# |mean| / std above which the batch mean gets a second, correcting pass (see _forward).
_FAR_FROM_ZERO = 8.0


def _centred_squares(x: Tensor, mean: Tensor, out: Tensor | None = None) -> Tensor:
    """(x - mean)**2 elementwise, in one pass over x; into ``out`` if given.

    torch has no fused "subtract, then square" op, but the squared error of x against the
    broadcast mean is exactly that. Without ``out``: differentiable to any order, and batched
    by vmap.
    """
    if out is not None:
        # The aten op broadcasts its target (torch.nn.functional.mse_loss warns instead).
        return torch.ops.aten.mse_loss.out(x, mean, _REDUCTION_NONE, out=out)
    return torch.nn.functional.mse_loss(x, mean.expand_as(x), reduction="none")


def _sum_dy_centred(
    x: Tensor,
    mean: Tensor,
    dy: Tensor,
    dims: tuple[int, ...],
    fast: bool,
    fmt: torch.memory_format | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Per-channel sum of dy * (x - mean), keepdim, and the full-size buffer it was taken from.

    Fast (no graph to record, no torch.func transform): the product takes one pass, through
    the gradient of the squared error, 2 * (x - t) * g, which is "(x - mean) * dy" fused, twice
    over (an exact factor: halving the sum changes no bit). It is written into a buffer in
    layout ``fmt`` (dx's, see :func:`_output_format`), which is returned so that the caller can
    write dx into it instead of into a new one. Otherwise: plain differentiable ops.
    """
    if fast:
        twice = torch.ops.aten.mse_loss_backward.grad_input(
            dy, x, mean, _REDUCTION_NONE, grad_input=_buffer_like(x, fmt)
        )
        return twice.sum(dims, keepdim=x.ndim > 2).mul_(0.5), twice
    return ((x - mean) * dy).sum(dims, keepdim=x.ndim > 2), None


def _update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    m: int,
    momentum: float,
    fast: bool,
) -> None:
    """PyTorch's convention: momentum weighs the new batch, and the stored variance is the
    unbiased one (/ (m - 1)), although the batch is normalised with the biased one (/ m).
    ``mean`` and ``var`` are the batch's, (C,). ``fast``: no transform is active, so no write
    can fail half way, and the buffers are updated in place directly."""
    if fast:  # (forward runs with autograd off: nothing here is recorded)
        running_mean.lerp_(_cast(mean, running_mean.dtype), momentum)
        running_var.lerp_(_cast(var, running_var.dtype) * (m / (m - 1)), momentum)
        return
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


def _forward(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    fast: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, inv_std): the output and the per-channel statistics it was normalised with,
    kept as tensors that broadcast over the input per channel, in the compute dtype: (1, C, 1,
    ...), or (C,) for an (N, C) input, which a (C,) vector already broadcasts over.

    Three passes over x in training: the mean; the centred squares, whose mean is the biased
    variance; and y = x * scale + shift, one fused multiply-add. ``fast`` (nothing to record
    for autograd, no transform) writes y into the squares' buffer instead of a new one.
    """
    cdtype = _compute_dtype(input.dtype)
    ndim = input.ndim
    fmt = _output_format(input)  # y's layout, torch's choice
    x = _cast(input, cdtype)
    squares = None
    if training:
        m = _count(x)
        if m == 0:
            # Harmless stand-ins that keep every gradient finite (zero); never stored.
            shape = (1, x.shape[1]) + (1,) * (ndim - 2)
            mean, var = x.new_zeros(shape), x.new_ones(shape)
        else:
            dims = _reduction_dims(ndim)
            # Two passes, each a cascade (pairwise) sum on the CPU: the mean, then the mean of
            # squared deviations from it. The rounding error grows like log(m), not like m,
            # and the variance is a sum of squares of *centred* values, so a large mean cannot
            # swamp it (E[x**2] - E[x]**2 in one pass would).
            mean = x.mean(dims, keepdim=ndim > 2)  # (1, C, 1, ...), or (C,) for (N, C)
            # Fast: into a buffer in y's layout, which then receives y.
            squares = _centred_squares(x, mean, _buffer_like(x, fmt) if fast else None)
            var = squares.mean(dims, keepdim=ndim > 2)  # biased: / m
            # Is |mean| > _FAR_FROM_ZERO * std for some channel, i.e. var - (mean / F)**2 < 0?
            # Asked on the CPU only: on a GPU the answer would wait for the device every call.
            if (
                fast
                and x.is_cpu
                and torch.addcmul(var, mean, mean, value=-(_FAR_FROM_ZERO**-2)).min().item() < 0
            ):
                # A float32 mean is accurate to about one unit in its last place, and that
                # error, small against the mean, is not small against the spread once the
                # mean is far from zero: at |mean| = 100 std it would cost the output a
                # 2e-6 relative error. The mean of the centred values, which float32 holds
                # accurately, corrects it, for one more pass on such data only. (The
                # variance needs no correction: it is off by (error / std)**2, relatively.)
                mean = mean + torch.sub(x, mean, out=squares).mean(dims, keepdim=ndim > 2)
            if running_mean is not None and running_var is not None:
                # Here, not in batch_norm: torch.func runs forward below its grad and jvp
                # transforms, on plain tensors, so buffers captured by a transformed function
                # can be updated (as torch's kernel updates them).
                _update_running_stats(
                    running_mean, running_var, _flat(mean), _flat(var), m, momentum, fast
                )
    else:
        # Copies: the buffers may be updated by a training step before this backward runs.
        assert running_mean is not None and running_var is not None
        mean = _as_channel(running_mean.to(cdtype, copy=True), ndim)
        var = _as_channel(running_var.to(cdtype, copy=True), ndim)
    # var is this call's own (a batch statistic, or a copy): fast may overwrite it.
    inv_std = var.add_(eps).rsqrt_() if fast else torch.rsqrt(var + eps)  # like var
    # y = weight * x_hat + bias = x * scale + shift, with the per-channel scale and shift
    # computed once: one fused multiply-add over the data. (torch's CPU kernel folds the mean
    # into the shift the same way; the rounding of x * scale then limits the output's accuracy
    # to about eps_machine * |mean| / std, relative.)
    scale = inv_std if weight is None else inv_std * _as_channel(_cast(weight, cdtype), ndim)
    shift = (
        -mean * scale
        if bias is None
        else torch.addcmul(_as_channel(_cast(bias, cdtype), ndim), mean, scale, value=-1)
    )
    if fast and squares is not None:
        y = torch.addcmul(shift, x, scale, out=squares)  # the squares are summed: reuse them
    elif fast and fmt is not None:
        y = torch.addcmul(shift, x, scale, out=_buffer_like(x, fmt))
    else:
        y = _in_format(torch.addcmul(shift, x, scale), fmt)
    return _cast(y, input.dtype), mean, inv_std


def _save(
    ctx: Any,
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    inv_std: Tensor,
    training: bool,
    eps: float,
) -> None:
    """What ``_backward`` and ``_jvp`` read, saved alike by both Function forms."""
    # The input, not x - mean: the input is what a second derivative differentiates with
    # respect to, and torch's own kernel keeps the same one tensor of the input's size.
    ctx.save_for_backward(input, weight, mean, inv_std)
    ctx.save_for_forward(input, weight, mean, inv_std)
    ctx.training, ctx.eps = training, eps
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(
    ctx: Any, grad_output: Tensor, fast: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """dL/d(input, weight, bias) from dL/dy, with what ``_forward`` saved on ``ctx``.

    Built from differentiable ops: with autograd on (``create_graph=True``, ``torch.func.grad``
    of ``grad``), its own graph is recorded, so a second derivative differentiates through it.
    """
    input, weight, mean, inv_std = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
    cdtype, ndim = mean.dtype, input.ndim
    dims = _reduction_dims(ndim)
    x = _cast(input, cdtype)
    dy = _cast(grad_output, cdtype)
    m = _count(x)
    # dx's layout, torch's choice (none to read from a gradient batched by the legacy vmap;
    # fast already means it is not one).
    fmt = _output_format(input) if fast or not is_transform_wrapped(grad_output) else None
    if ctx.training and torch.is_grad_enabled() and m > 0:
        # A second derivative needs the statistics as functions of x, not as the constants
        # saved by forward: the mean and variance paths of the second derivative live here.
        mean, _, inv_std = _statistics(x, dims, True, ctx.eps)

    # In eval mode dx needs neither sum: take each only if a parameter gradient asks for it.
    sum_dy = dy.sum(dims, keepdim=ndim > 2) if ctx.training or need_db else None
    sum_dy_xc, buffer = (
        _sum_dy_centred(x, mean, dy, dims, fast, fmt)
        if ctx.training or need_dw
        else (None, None)
    )
    sum_dy_xhat = None if sum_dy_xc is None else sum_dy_xc * inv_std  # sum(dy * x_hat)

    dx = dweight = dbias = None
    if need_dx:
        scale = inv_std if weight is None else inv_std * _as_channel(_cast(weight, cdtype), ndim)
        if m == 0:
            # An empty input: torch's kernel is skipped for y = x * weight[0] + bias[0] on a
            # clone of x, whose gradient is dy * weight[0], laid out as dy is.
            dx = dy * scale
        elif ctx.training:
            assert sum_dy is not None and sum_dy_xhat is not None
            # dx = (scale / m) * (m * dy - sum(dy) - x_hat * sum(dy * x_hat))
            #    = scale * dy - k * x + c,  k = scale * inv_std * sum(dy * x_hat) / m,
            #                               c = k * mean - scale * sum(dy) / m,
            # two fused multiply-adds with per-channel operands. The mean is folded into c:
            # |k * mean| / |dy| ~ |mean| / (std * sqrt(m)) bounds what that rounds.
            inv_m = 1.0 / m
            k = scale * inv_std * sum_dy_xhat * inv_m  # per channel
            c = torch.addcmul(k * mean, scale, sum_dy, value=-inv_m)  # per channel
            if fast and buffer is not None:
                dx = torch.addcmul(c, x, k, value=-1, out=buffer).addcmul_(dy, scale)
            else:
                dx = _in_format(torch.addcmul(torch.addcmul(c, x, k, value=-1), dy, scale), fmt)
        elif fast:
            # The statistics are constants here: y is affine in x, with slope weight*inv_std.
            # Into the product's buffer if weight's gradient made one (its sum is taken).
            dx = torch.mul(dy, scale, out=_buffer_like(x, fmt) if buffer is None else buffer)
        else:
            dx = _in_format(dy * scale, fmt)
        dx = _cast(dx, input.dtype)
    if need_dw and weight is not None:
        assert sum_dy_xhat is not None
        dweight = _cast(_flat(sum_dy_xhat), weight.dtype)
    if need_db and ctx.bias_dtype is not None:
        assert sum_dy is not None
        dbias = _cast(_flat(sum_dy), ctx.bias_dtype)
    return dx, dweight, dbias


def _jvp(
    ctx: Any, input_t: Tensor | None, weight_t: Tensor | None, bias_t: Tensor | None
) -> Tensor | None:
    """dy from the tangents (dx, dweight, dbias): forward-mode AD.

    In training, with x_hat = (x - mean) * inv_std,
    d mean = mean(dx), d var = 2 mean((x - mean) * (dx - d mean)),
    d x_hat = inv_std * ((dx - d mean) - x_hat * mean(x_hat * (dx - d mean))),
    dy = weight * d x_hat + dweight * x_hat + dbias.
    In eval the statistics are constants: d x_hat = dx * inv_std.
    """
    input, weight, mean, inv_std = ctx.saved_tensors
    cdtype, ndim = mean.dtype, input.ndim
    dims = _reduction_dims(ndim)
    x = input.to(cdtype)
    x_hat = (x - mean) * inv_std  # (N, C, *spatial)

    dy = None
    if input_t is not None:
        dx = input_t.to(cdtype)
        if ctx.training and _count(x) > 0:
            dxc = dx - dx.mean(dim=dims, keepdim=True)  # (N, C, *spatial)
            # inv_std * d var / 2 = inv_std * mean((x - mean) * dxc) = mean(x_hat * dxc).
            half = (x_hat * dxc).mean(dim=dims, keepdim=True)  # (1, C, 1, ...)
            dx_hat = (dxc - x_hat * half) * inv_std
        else:
            dx_hat = dx * inv_std
        dy = dx_hat if weight is None else dx_hat * _as_channel(weight.to(cdtype), ndim)
    if weight_t is not None:
        term = x_hat * _as_channel(weight_t.to(cdtype), ndim)
        dy = term if dy is None else dy + term
    if bias_t is not None:
        term = _as_channel(bias_t.to(cdtype), ndim)
        dy = term.expand_as(x_hat) if dy is None else dy + term
    return None if dy is None else dy.to(input.dtype)


class BatchNormFunction(torch.autograd.Function):
    """Batch normalisation with its derivatives written out: backward (reverse) and jvp (forward).

    ``apply(input, weight, bias, running_mean, running_var, training, momentum, eps)`` returns
    the normalised input. In training the running statistics, if given, are updated in place;
    they are not differentiable (as in torch). ``weight`` and ``bias`` may be None. Call it
    through :func:`batch_norm`, which validates the arguments first and picks this class
    whenever no torch.func transform and no tracer (``torch.export``, ``torch.compile``) is
    active.

    This is the classic form (``forward(ctx, ...)``): torch.func cannot run it, which is what
    :class:`BatchNormFunctionForTransforms` is for, with the same forward, backward and jvp.
    The classic form is the one used day to day because it is cheaper to call (the
    ``setup_context`` form costs a signature binding and a second Python call per forward),
    and because, knowing no transform is active, it may write its temporaries into the
    buffers of its results (y, dx) instead of allocating more.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
    ) -> Tensor:
        y, mean, inv_std = _forward(
            input, weight, bias, running_mean, running_var, training, momentum, eps, fast=True
        )
        _save(ctx, input, weight, bias, mean, inv_std, training, eps)
        return y

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        # Grad mode is on only when a graph of the backward is wanted (create_graph=True), and
        # grad_output is batched (by the legacy vmap of is_grads_batched=True) only when many
        # backwards run at once: in either case every op must stay plain and out of place.
        fast = not torch.is_grad_enabled() and not is_transform_wrapped(grad_output)
        dx, dweight, dbias = _backward(ctx, grad_output, fast=fast)
        return dx, dweight, dbias, None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, input_t: Tensor | None, weight_t: Tensor | None,
            bias_t: Tensor | None, *_: Any) -> Tensor | None:
        return _jvp(ctx, input_t, weight_t, bias_t)


class BatchNormFunctionForTransforms(torch.autograd.Function):
    """:class:`BatchNormFunction` in the ``forward`` + ``setup_context`` form torch.func needs.

    :func:`batch_norm` uses it when a torch.func transform (``vmap``, ``grad``, ``jvp``, ...)
    or a tracer (``torch.export``, ``torch.compile``) is active. ``apply(...)`` (same
    arguments) returns ``(output, mean, inv_std)``: ``mean`` and ``inv_std`` are the
    per-channel statistics the input was normalised with (shaped to broadcast over it, as
    ``_forward`` returns them), not differentiable; they are outputs because torch.func
    requires every tensor that backward saves to be an input or an output. Every op is out
    of place, so vmap can batch it op by op (``generate_vmap_rule``; the running statistics
    can only be updated if they are batched too), and a tracer can record it.
    """

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
        return _forward(
            input, weight, bias, running_mean, running_var, training, momentum, eps, fast=False
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, weight, bias, _, _, training, _, eps = inputs
        _, mean, inv_std = output
        ctx.mark_non_differentiable(mean, inv_std)
        _save(ctx, input, weight, bias, mean, inv_std, training, eps)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _: Any, __: Any) -> tuple[Tensor | None, ...]:
        dx, dweight, dbias = _backward(ctx, grad_output, fast=False)
        return dx, dweight, dbias, None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, input_t: Tensor | None, weight_t: Tensor | None,
            bias_t: Tensor | None, *_: Any) -> tuple[Tensor | None, None, None]:
        return _jvp(ctx, input_t, weight_t, bias_t), None, None


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
        are computed in float32). It and the gradient of ``input`` are laid out as torch lays
        out its own: in ``input.suggest_memory_format()`` (channels_last in, channels_last out;
        a transposed or sliced input gives contiguous results), and for an empty input the
        gradient is laid out as the upstream gradient.

    Raises:
        TypeError: if an argument has the wrong Python type (as torch).
        BatchNormArgumentError: on a bad rank, dtype, device or shape, a missing running
            statistic in eval, a non-positive ``eps`` in training, or a single value per channel
            in training. It is a ``ValueError`` and a ``RuntimeError``: see
            :mod:`bnbook.validation`.
    """
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum, eps)
    args = (input, weight, bias, running_mean, running_var, training, float(momentum), float(eps))
    if _transforms_active() or torch.compiler.is_compiling():
        # torch.func transforms, and tracers (torch.export, torch.compile): plain ops only.
        y, _, _ = BatchNormFunctionForTransforms.apply(*args)
        return y
    return BatchNormFunction.apply(*args)
