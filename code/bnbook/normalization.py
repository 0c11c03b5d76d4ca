"""One "normalise over these axes" computation, and the five layers that are made of it.

Batch, Layer, Instance and Group Normalization, and RMSNorm, differ in one thing: the set of
axes a mean and a variance are taken over. Everything else is shared: subtract the mean (RMSNorm
skips this), divide by the root of the variance plus eps, scale by ``weight`` and shift by
``bias``. :class:`Normalize` is that computation once, with its backward written beside it, and
each functional form below is a few lines that reshape the input so that the axes it needs are
the axes the core reduces over:

=============  ====================================  ======================================
form           view of the input                     axes reduced over
=============  ====================================  ======================================
batch norm     (N, C, L)                             (0, 2): every sample, every position
layer norm     (*, D_1, ..., D_k)                    the last k (``normalized_shape``)
instance norm  (N, C, L)                             (2,): positions, per sample and channel
group norm     (N, G, C/G, L)                        (2, 3): a group's channels and positions
RMS norm       (*, D_1, ..., D_k)                    the last k, without centring
=============  ====================================  ======================================

(L is the product of the spatial sizes, 1 for an (N, C) input.) ``weight`` and ``bias`` are
passed to the core already shaped to broadcast against that view, e.g. (1, G, C/G, 1) for group
norm, so the core never needs to know which layer it is.

:func:`batch_renorm` (Ioffe 2017) reuses the batch-norm call with a corrected weight and bias.

Numerics, as in :mod:`bnbook.functional`: the variance is the mean square of the *centred* data
(two passes, never ``E[x²] - E[x]²``, which loses everything for data around 1e4 in float32),
and float16/bfloat16 inputs are computed in float32, only the output being rounded back.

This module imports neither :mod:`bnbook.functional` nor :mod:`bnbook.modules`: they may import
it (``bnbook.functional`` re-exports the functional forms), never the other way round.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bnbook.validation import check_batch_norm_args

__all__ = [
    "Normalize",
    "batch_renorm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "normalize",
    "renorm_correction",
    "rms_norm",
]

# Inputs in these dtypes are normalised in float32: with 8 (bfloat16) or 11 (float16)
# significant bits they cannot hold a sum over thousands of values.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _statistics(
    x: Tensor, dims: tuple[int, ...], centre: bool, eps: float
) -> tuple[Tensor | None, Tensor, Tensor]:
    """(mean, var, rstd) of ``x`` over ``dims``, kept as broadcastable (keepdim) tensors.

    Without ``centre`` there is no mean and ``var`` is the mean square (RMSNorm's statistic).
    Differentiable torch ops only: the double backward differentiates this function.
    """
    if centre:
        mean = x.mean(dim=dims, keepdim=True)  # (..., 1 on every reduced axis, ...)
        # Two passes: the variance of the centred data, so a large mean cannot swamp it.
        var = (x - mean).square().mean(dim=dims, keepdim=True)  # biased, / m
    else:
        mean = None
        var = x.square().mean(dim=dims, keepdim=True)  # mean square, / m
    return mean, var, torch.rsqrt(var + eps)


def _backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor | None,
    rstd: Tensor,
    dims: tuple[int, ...],
    fixed: bool,
) -> tuple[Tensor, Tensor]:
    """(dx, x_hat) for ``y = weight * x_hat + bias``, ``x_hat = (x - mean) * rstd``.

    With batch statistics (``fixed`` False) the mean and rstd depend on x, and with
    g = dy * weight and means taken over ``dims``:

        dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))     (centred)
        dx = rstd * (g - x_hat * mean(g * x_hat))               (RMSNorm: no mean)

    exactly, eps included. With fixed statistics (running ones) the layer is affine in x and
    dx = g * rstd. Built from differentiable ops, so autograd can differentiate it again.
    """
    x_hat = (x - mean) * rstd if mean is not None else x * rstd  # shaped like x
    g = dy * weight if weight is not None else dy
    if fixed:
        return g * rstd, x_hat
    proj = (g * x_hat).mean(dim=dims, keepdim=True)  # reduced axes kept as size 1
    if mean is None:
        return rstd * (g - x_hat * proj), x_hat
    return rstd * (g - g.mean(dim=dims, keepdim=True) - x_hat * proj), x_hat


class Normalize(torch.autograd.Function):
    """``y = weight * (x - mean) / sqrt(var + eps) + bias`` with statistics over ``dims``.

    ``apply(x, weight, bias, dims, eps, centre, fixed_mean, fixed_var)`` returns
    ``(y, mean, var)``. ``weight`` and ``bias`` (or None) broadcast against ``x``; ``dims`` are
    the reduced axes; without ``centre`` no mean is subtracted and var is the mean square
    (RMSNorm; the returned mean is then an empty tensor). Given ``fixed_mean``/``fixed_var``
    (broadcastable, e.g. running statistics) those are used as constants instead of the batch's.
    ``mean`` and ``var`` are returned for running averages and are not differentiable.

    The backward (:func:`_backward`) is written by hand. It is also built from differentiable
    ops: when a graph is being built (``create_graph=True``) it recomputes the statistics from
    the saved input, so that a second derivative, e.g. a gradient penalty, is exact.
    Written with ``setup_context`` so that ``torch.func.vmap`` can batch it
    (``generate_vmap_rule``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        dims: tuple[int, ...],
        eps: float,
        centre: bool,
        fixed_mean: Tensor | None,
        fixed_var: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        cdtype = _compute_dtype(x.dtype)
        xc = x.to(cdtype)
        if fixed_var is not None:
            # Copies: an input returned as an output could not be saved for the backward.
            mean = fixed_mean.to(cdtype, copy=True) if fixed_mean is not None else None
            var = fixed_var.to(cdtype, copy=True)
            rstd = torch.rsqrt(var + eps)
        else:
            mean, var, rstd = _statistics(xc, dims, centre, eps)
        # y = x_hat * (weight * rstd) + shift: one fused multiply-add over the data.
        scale = rstd if weight is None else rstd * weight.to(cdtype)
        shift = -mean * scale if mean is not None else torch.zeros((), dtype=cdtype)
        if bias is not None:
            shift = shift + bias.to(cdtype)
        y = torch.addcmul(shift, xc, scale)
        empty = torch.empty(0, dtype=cdtype, device=x.device)
        return y.to(x.dtype), (mean if mean is not None else empty), var

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, bias, dims, eps, centre, fixed_mean, fixed_var = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(x, weight, mean, var, fixed_mean, fixed_var)
        ctx.dims, ctx.eps, ctx.centre = dims, eps, centre
        ctx.has_bias = bias is not None
        ctx.bias_shape = bias.shape if bias is not None else None
        ctx.bias_dtype = bias.dtype if bias is not None else None

    @staticmethod
    def backward(ctx: Any, dy: Tensor, _dmean: Any, _dvar: Any) -> tuple[Tensor | None, ...]:
        x, weight, mean, var, fixed_mean, fixed_var = ctx.saved_tensors
        dims, eps = ctx.dims, ctx.eps
        fixed = fixed_var is not None
        cdtype = _compute_dtype(x.dtype)
        xc, g = x.to(cdtype), dy.to(cdtype)
        w = weight.to(cdtype) if weight is not None else None
        if torch.is_grad_enabled() and not fixed:
            # Double backward: the statistics must be functions of x in the graph.
            m, _, rstd = _statistics(xc, dims, ctx.centre, eps)
        else:
            if fixed:
                m = fixed_mean.to(cdtype) if fixed_mean is not None else None
                rstd = torch.rsqrt(fixed_var.to(cdtype) + eps)
            else:
                m = mean if ctx.centre else None
                rstd = torch.rsqrt(var + eps)
        dx, x_hat = _backward(g, xc, w, m, rstd, dims, fixed)
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dweight = dbias = None
        if need_dw and weight is not None:
            # weight was broadcast over every axis where its size is 1: sum those back.
            dweight = (g * x_hat).sum_to_size(weight.shape).to(weight.dtype)
        if need_db and ctx.has_bias:
            dbias = g.sum_to_size(ctx.bias_shape).to(ctx.bias_dtype)
        dx = dx.to(x.dtype) if need_dx else None
        return dx, dweight, dbias, None, None, None, None, None


def normalize(
    x: Tensor,
    dims: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    centre: bool = True,
) -> Tensor:
    """Normalise ``x`` over the axes ``dims``: the one computation every layer here is.

    Args:
        x: any floating-point tensor.
        dims: the axes the mean and variance are taken over, e.g. ``(0, 2, 3)`` for batch norm
            of (N, C, H, W), ``(1, 2, 3)`` for layer norm of it, ``(2, 3)`` for instance norm.
        weight: the scale, broadcastable against ``x`` (size 1 on the reduced axes), or None.
        bias: the shift, broadcastable against ``x``, or None.
        eps: added to the variance before the square root.
        centre: subtract the mean (False gives RMSNorm's statistic, the mean square).

    Returns:
        The normalised tensor, shaped like ``x`` and in its dtype.
    """
    dims = tuple(d % x.ndim for d in dims) if x.ndim else ()
    return Normalize.apply(x, weight, bias, dims, eps, centre, None, None)[0]


# -- argument checks -----------------------------------------------------------------------------


def _check_input(input: Any) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise RuntimeError(f"input must have a floating-point dtype, got {input.dtype}")


def _as_shape(normalized_shape: Any) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    try:
        return tuple(int(s) for s in normalized_shape)
    except TypeError:
        raise TypeError(
            "normalized_shape must be an int or a sequence of ints, "
            f"got {type(normalized_shape).__name__}"
        ) from None


def _check_trailing(input: Tensor, shape: tuple[int, ...], weight: Any, bias: Any) -> None:
    """torch's layer_norm/rms_norm checks, as RuntimeErrors (torch's class) naming the argument."""
    k = len(shape)
    if k == 0:
        raise RuntimeError("normalized_shape must have at least one dimension, got ()")
    if input.ndim < k or tuple(input.shape[input.ndim - k:]) != shape:
        raise RuntimeError(
            f"normalized_shape={list(shape)} must equal the last {k} dims of input, "
            f"expected input of shape [*, {', '.join(map(str, shape))}], "
            f"got input of shape {list(input.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(
                f"{name} must have the shape normalized_shape={list(shape)}, "
                f"got {name} of shape {list(t.shape)}"
            )


def _check_channels(name: str, t: Any, num_channels: int, exc: type[Exception]) -> None:
    if t is not None and tuple(t.shape) != (num_channels,):
        raise exc(
            f"{name} must have shape ({num_channels},), one value per channel of the input "
            f"(dim 1), got {name} of shape {tuple(t.shape)}"
        )


def _channel_view(input: Tensor) -> Tensor:
    """(N, C, *spatial) seen as (N, C, L), L the number of positions (1 for (N, C))."""
    return input.reshape(input.shape[0], input.shape[1], -1)


# -- the functional forms ------------------------------------------------------------------------


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalisation over the trailing ``normalized_shape``; ``F.layer_norm``'s contract.

    Each sample (each position of the leading dims) is normalised with its own mean and biased
    variance over its last ``len(normalized_shape)`` dims: no other sample takes part.

    Args:
        input: shape (*, *normalized_shape).
        normalized_shape: the trailing shape to normalise over (an int for one dim).
        weight: elementwise scale of shape ``normalized_shape``, or None.
        bias: elementwise shift of shape ``normalized_shape``, or None.
        eps: added to the variance.

    Returns:
        The normalised tensor, shaped like ``input``.

    Raises:
        RuntimeError: input's trailing dims, ``weight`` or ``bias`` do not match
            ``normalized_shape`` (torch raises RuntimeError too).
    """
    _check_input(input)
    shape = _as_shape(normalized_shape)
    _check_trailing(input, shape, weight, bias)
    dims = tuple(range(input.ndim - len(shape), input.ndim))
    return Normalize.apply(input, weight, bias, dims, eps, True, None, None)[0]


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """RMSNorm (Zhang and Sennrich 2019): ``x / sqrt(mean(x²) + eps) * weight``.

    No mean is subtracted and there is no bias. ``eps=None`` means what it means in torch 2.13:
    the machine epsilon of the *computation* type, ``torch.finfo(torch.float32).eps`` (1.19e-7)
    for float32, float16 and bfloat16 inputs alike (the latter two are computed in float32), and
    ``torch.finfo(torch.float64).eps`` for float64, not the epsilon of a half-precision dtype.

    Args:
        input: shape (*, *normalized_shape).
        normalized_shape: the trailing shape to normalise over.
        weight: elementwise scale of shape ``normalized_shape``, or None.
        eps: added to the mean square; None for the default above.

    Returns:
        The normalised tensor, shaped like ``input``.

    Raises:
        RuntimeError: input's trailing dims or ``weight`` do not match ``normalized_shape``.
    """
    _check_input(input)
    shape = _as_shape(normalized_shape)
    _check_trailing(input, shape, weight, None)
    if eps is None:
        eps = torch.finfo(_compute_dtype(input.dtype)).eps
    dims = tuple(range(input.ndim - len(shape), input.ndim))
    return Normalize.apply(input, weight, None, dims, eps, False, None, None)[0]


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalisation (Wu and He 2018); ``F.group_norm``'s contract.

    The C channels of each sample are split into ``num_groups`` groups of C/G consecutive
    channels; each group is normalised over its channels and all positions. G = 1 is layer norm
    over (C, *spatial); G = C is instance norm. ``weight`` and ``bias`` are per channel.

    Args:
        input: shape (N, C, *spatial).
        num_groups: G, which must divide C.
        weight: per-channel scale of shape (C,), or None.
        bias: per-channel shift of shape (C,), or None.
        eps: added to the variance.

    Returns:
        The normalised tensor, shaped like ``input``.

    Raises:
        RuntimeError: fewer than 2 dims, C not divisible by ``num_groups``, or a ``weight``/
            ``bias`` not of shape (C,) (torch raises RuntimeError for each).
    """
    _check_input(input)
    if input.ndim < 2:
        raise RuntimeError(
            f"input must have shape (N, C, *spatial), at least 2 dims, got {input.ndim}-D input"
        )
    n, c = input.shape[:2]
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups < 1 or c % num_groups:
        raise RuntimeError(
            f"the number of channels must be divisible by num_groups, "
            f"got input of shape {list(input.shape)} (C={c}) and num_groups={num_groups}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        _check_channels(name, t, c, RuntimeError)
    g = int(num_groups)
    view = input.reshape(n, g, c // g, -1)  # (N, G, C/G, L)
    w = weight.reshape(1, g, c // g, 1) if weight is not None else None  # broadcast per channel
    b = bias.reshape(1, g, c // g, 1) if bias is not None else None
    y = Normalize.apply(view, w, b, (2, 3), eps, True, None, None)[0]
    return y.reshape(input.shape)


def _update_running(
    running: Tensor, value: Tensor, momentum: float
) -> None:
    """running <- (1 - momentum) * running + momentum * value, in place (torch's convention)."""
    running.mul_(1.0 - momentum).add_(value.to(running.dtype), alpha=momentum)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance normalisation (Ulyanov et al. 2016); ``F.instance_norm``'s contract.

    With ``use_input_stats`` every (sample, channel) pair is normalised over its own positions.
    Running statistics, when given, are then updated as torch does: the new value is the mean
    over the batch of the per-instance means, and of the per-instance *unbiased* variances
    (/ (L - 1)). Without ``use_input_stats`` the running statistics normalise the input.

    Args:
        input: shape (N, C, *spatial).
        running_mean, running_var: (C,) or None.
        weight, bias: per-channel (C,) or None.
        use_input_stats: normalise with each instance's own statistics.
        momentum: weight of the new batch in the running averages.
        eps: added to the variance.

    Returns:
        The normalised tensor, shaped like ``input``.

    Raises:
        ValueError: a single position per channel with ``use_input_stats`` (as torch).
        RuntimeError: fewer than 2 dims, a per-channel tensor not of shape (C,), running
            statistics missing without ``use_input_stats``.
    """
    _check_input(input)
    if input.ndim < 2:
        raise RuntimeError(
            f"input must have shape (N, C, *spatial), at least 2 dims, got {input.ndim}-D input"
        )
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        _check_channels(name, t, c, RuntimeError)
    if (running_mean is None) != (running_var is None):
        raise RuntimeError("running_mean and running_var must be given together or both be None")
    view = _channel_view(input)  # (N, C, L)
    length = view.shape[2]
    w = weight.reshape(1, c, 1) if weight is not None else None
    b = bias.reshape(1, c, 1) if bias is not None else None
    if not use_input_stats:
        if running_mean is None:
            raise RuntimeError(
                "running_mean and running_var are required when use_input_stats=False: "
                "they are what the input is normalised with"
            )
        rm, rv = running_mean.reshape(1, c, 1), running_var.reshape(1, c, 1)
        y = Normalize.apply(view, w, b, (2,), eps, True, rm, rv)[0]
        return y.reshape(input.shape)
    if length <= 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {input.size()}"
        )
    y, mean, var = Normalize.apply(view, w, b, (2,), eps, True, None, None)
    if running_mean is not None:
        with torch.no_grad():
            # mean, var: (N, C, 1) per instance; the running values average them over N.
            _update_running(running_mean, mean.mean(dim=(0, 2)), momentum)
            unbiased = var.mean(dim=(0, 2)) * (length / (length - 1))  # (C,)
            _update_running(running_var, unbiased, momentum)
    return y.reshape(input.shape)


def renorm_correction(
    batch_mean: Tensor,
    batch_var: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    r_max: float,
    d_max: float,
) -> tuple[Tensor, Tensor]:
    """Batch Renormalization's r and d (Ioffe 2017, Algorithm 1), per channel.

    ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and ``d = clip((mu_B - mu) / sigma, -d_max,
    d_max)`` with ``sigma_B = sqrt(var_B + eps)``, ``sigma = sqrt(running_var + eps)``. Then
    ``x_hat * r + d = (x - mu) / sigma`` whenever no clipping happens: the output is what the
    running statistics would give, while the gradient still flows through the batch's. Both
    are computed without gradient: the paper's ``stop_gradient``.

    Returns:
        ``(r, d)``, each shaped like ``batch_mean``.
    """
    with torch.no_grad():
        sigma = torch.sqrt(running_var.to(batch_var.dtype) + eps)
        r = (torch.sqrt(batch_var + eps) / sigma).clamp(1.0 / r_max, r_max)
        d = ((batch_mean - running_mean.to(batch_mean.dtype)) / sigma).clamp(-d_max, d_max)
    return r, d


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    r_max: float = 3.0,
    d_max: float = 5.0,
) -> Tensor:
    """Batch Renormalization (Ioffe 2017): batch norm corrected towards the running statistics.

    In training the batch is normalised with its own statistics, then ``x_hat * r + d`` (see
    :func:`renorm_correction`) replaces ``x_hat``; r and d are constants to the backward pass.
    This is the batch-norm core with the weight ``weight * r`` and the bias
    ``weight * d + bias``: with ``r_max=1, d_max=0`` it is exactly batch normalisation. The
    running statistics are then updated as ``torch.nn.functional.batch_norm`` does (momentum on
    the new batch, unbiased variance). Outside training the running statistics normalise the
    input, as in batch norm.

    Args:
        input: (N, C) or (N, C, *spatial).
        running_mean, running_var: (C,); required, since training uses them too.
        weight, bias: (C,) or None.
        training: use the batch statistics with the r, d correction, and update the running ones.
        momentum: weight of the new batch in the running averages.
        eps: added to the variances.
        r_max: >= 1, the largest factor the batch's std may differ from the running one by.
        d_max: >= 0, the largest shift, in running stds, between the two means.

    Returns:
        The normalised tensor, shaped like ``input``.

    Raises:
        BatchNormArgumentError: any argument batch norm would refuse, or missing running
            statistics (a ValueError and a RuntimeError).
        ValueError: ``r_max < 1`` or ``d_max < 0``.
    """
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if running_mean is None or running_var is None:
        raise ValueError(
            "batch_renorm needs running_mean and running_var, also in training: "
            "r and d are measured against them"
        )
    for name, value, least in (("r_max", r_max, 1.0), ("d_max", d_max, 0.0)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= least):
            raise ValueError(f"{name} must be a finite number >= {least}, got {value!r}")
    c = input.shape[1]
    view = _channel_view(input)  # (N, C, L)
    cdtype = _compute_dtype(input.dtype)
    one = torch.ones(1, c, 1, dtype=cdtype, device=input.device)
    w = weight.reshape(1, c, 1) if weight is not None else one
    rm, rv = running_mean.reshape(1, c, 1), running_var.reshape(1, c, 1)
    if not training:
        y = Normalize.apply(view, weight.reshape(1, c, 1) if weight is not None else None,
                            bias.reshape(1, c, 1) if bias is not None else None,
                            (0, 2), eps, True, rm, rv)[0]
        return y.reshape(input.shape)
    # r and d depend on the batch statistics, so these are computed once here without a graph
    # (the core computes them again: one extra read of the input, kept for clarity).
    with torch.no_grad():
        batch_mean, batch_var, _ = _statistics(view.to(cdtype), (0, 2), True, eps)
    r, d = renorm_correction(batch_mean, batch_var, rm, rv, eps, r_max, d_max)  # (1, C, 1)
    # y = weight * (x_hat * r + d) + bias = x_hat * (weight * r) + (weight * d + bias).
    # Autograd carries weight's gradient through these two products: sum(dy * (x_hat r + d)).
    w_eff = w * r
    b_eff = w * d if bias is None else w * d + bias.reshape(1, c, 1)
    y = Normalize.apply(view, w_eff, b_eff, (0, 2), eps, True, None, None)[0]
    with torch.no_grad():
        m = view.shape[0] * view.shape[2]
        _update_running(running_mean, batch_mean.reshape(-1), momentum)
        _update_running(running_var, batch_var.reshape(-1) * (m / (m - 1)), momentum)
    return y.reshape(input.shape)
