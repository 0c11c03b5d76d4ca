"""Batch Normalization in Triton: forward (train and eval) and backward, any memory format.

BN does a handful of FLOPs per element, so its speed is set by the bytes it moves. The kernels
are written to move as few as they can:

* Every layout is seen as a strided (B, C, S) array: NCHW is (N, C, H*W) with S contiguous;
  channels_last and (N, C) are (1, C, N*H*W) with C contiguous. A program owns a block of
  BLOCK_C channels and walks tiles of (BLOCK_B, BLOCK_C, BLOCK_S) elements, so loads are
  coalesced along whichever axis is contiguous.
* Statistics: each tile is reduced in registers with two passes (mean, then the sum of squared
  deviations from that mean), and tiles are merged with Chan's parallel rule. There is no
  E[x^2] - E[x]^2, which cancels catastrophically when the mean is large against the spread.
* Normalisation multiplies by a per-channel ``scale = weight * inv_std``: no per-element divide.
* Forward-train, "fused" path (one program per channel block, when there are enough of them to
  fill the GPU and their data fits in L2): a statistics loop, then a normalise loop whose
  re-read hits L2, so DRAM sees about 2 * E * s bytes. "Split" path (few channels): partial
  statistics over (channel block, slice of tiles) programs, a tiny finalize kernel, then an
  elementwise normalise kernel: about 3 * E * s bytes.
* Backward: the same two shapes, with the sums (sum dy, sum dy * (x - mean)) instead of the
  statistics.

Where the kernels run is decided once, at import, by ``bnbook.kernels.interpreting()``: compiled
for the CUDA device, or, on a machine without one (or with ``TRITON_INTERPRET=1``), built as
triton interpreter functions that run on CPU tensors. The decision is made per kernel here (see
``_jit``), so no environment variable is set and other triton code in the process is unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..validation import BatchNormArgumentError, check_batch_norm_args
from . import import_triton, interpreter_env, interpreting
from .layout import Geometry, as_layout, dense, geometry
from .limits import check_plain, first_order_only, refuse

__all__ = ["batch_norm", "Geometry", "Plan", "geometry", "make_plan", "INTERPRET"]

BACKEND = "bnbook.kernels.triton_bn"
INTERPRET = interpreting()
triton = import_triton(INTERPRET)
tl = triton.language
DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # the kernels' input dtypes


def _jit(fn: Any) -> Any:
    """``triton.jit``, or triton's interpreter for this function only when INTERPRET is set.

    triton itself chooses from the TRITON_INTERPRET variable; choosing here instead lets the
    kernels run on a CPU-only machine without writing that variable for the whole process.
    """
    if INTERPRET:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn)
    return triton.jit(fn)


# ----------------------------------------------------------------------------------------------
# Kernels, bottom-up: helpers, forward, backward.
# ----------------------------------------------------------------------------------------------


@_jit
def _tile(
    t,  # index of the tile among the n_s_tiles * ceil(B / BLOCK_B) tiles of a channel block
    c_offs,  # (BLOCK_C,) channel indices of this program
    B, C, S,  # the (B, C, S) view's sizes
    sb, sc, ss,  # and its strides, in elements
    n_s_tiles,  # tiles along S
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Offsets, mask and element count (per channel) of tile ``t``."""
    b0 = (t // n_s_tiles) * BLOCK_B  # one scalar divide per tile, none per element
    s0 = (t % n_s_tiles) * BLOCK_S
    ob = b0 + tl.arange(0, BLOCK_B)
    os_ = s0 + tl.arange(0, BLOCK_S)
    # int64 offsets: E * s can exceed 2**31 bytes on the sweep's large shapes.
    offs = (
        ob.to(tl.int64)[:, None, None] * sb
        + c_offs.to(tl.int64)[None, :, None] * sc
        + os_.to(tl.int64)[None, None, :] * ss
    )
    mask = (ob < B)[:, None, None] & (c_offs < C)[None, :, None] & (os_ < S)[None, None, :]
    count = tl.minimum(B - b0, BLOCK_B) * tl.minimum(S - s0, BLOCK_S)  # valid (b, s) pairs
    return offs, mask, count.to(tl.float32)


@_jit
def _chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s rule: merge (count, mean, M2) of two disjoint sets. No per-element work."""
    n = n_a + n_b
    delta = mean_b - mean_a
    frac_b = tl.where(n > 0, n_b / tl.maximum(n, 1.0), 0.0)
    mean = mean_a + delta * frac_b
    m2 = m2_a + m2_b + delta * delta * n_a * frac_b
    return n, mean, m2


@_jit
def _tile_stats(X, offs, mask, count, BLOCK_C: tl.constexpr):
    """Two-pass statistics of one tile, in float32 registers: (mean, M2), each (BLOCK_C,)."""
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)  # (BB, BC, BS)
    mean = tl.sum(tl.sum(x, axis=2), axis=0) / count  # (BLOCK_C,)
    d = tl.where(mask, x - mean[None, :, None], 0.0)
    m2 = tl.sum(tl.sum(d * d, axis=2), axis=0)  # (BLOCK_C,)
    return mean, m2


@_jit
def _walk_stats(
    X, c_offs, t0, t1, B, C, S, sb, sc, ss, n_s_tiles,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Merge the statistics of tiles [t0, t1) of a channel block: (n, mean, M2)."""
    n = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t in range(t0, t1):
        offs, mask, count = _tile(t, c_offs, B, C, S, sb, sc, ss, n_s_tiles,
                                  BLOCK_B, BLOCK_C, BLOCK_S)
        t_mean, t_m2 = _tile_stats(X, offs, mask, count, BLOCK_C)
        n, mean, m2 = _chan_merge(n, mean, m2, count, t_mean, t_m2)
    return n, mean, m2


@_jit
def _finalize_channels(
    n, mean, m2, c_offs, C,
    RUNNING_MEAN, RUNNING_VAR, W, MEAN, SCALE, INVSTD,
    momentum, eps,
    TRAINING: tl.constexpr, HAS_RUNNING: tl.constexpr, HAS_W: tl.constexpr,
):
    """Per-channel tail of the forward: running-stat update, mean, inv_std, scale = w * inv_std."""
    cm = c_offs < C
    if TRAINING:
        var = m2 / tl.maximum(n, 1.0)  # biased: the batch is normalised with it (n=0: padding)
        if HAS_RUNNING:
            # The running variance takes the UNBIASED estimate M2 / (n - 1), as torch does.
            rm = tl.load(RUNNING_MEAN + c_offs, mask=cm, other=0.0).to(tl.float32)
            rv = tl.load(RUNNING_VAR + c_offs, mask=cm, other=0.0).to(tl.float32)
            unbiased = m2 / tl.maximum(n - 1.0, 1.0)
            new_rm = (1.0 - momentum) * rm + momentum * mean
            new_rv = (1.0 - momentum) * rv + momentum * unbiased
            tl.store(RUNNING_MEAN + c_offs, new_rm.to(RUNNING_MEAN.dtype.element_ty), mask=cm)
            tl.store(RUNNING_VAR + c_offs, new_rv.to(RUNNING_VAR.dtype.element_ty), mask=cm)
    else:
        mean = tl.load(RUNNING_MEAN + c_offs, mask=cm, other=0.0).to(tl.float32)
        var = tl.load(RUNNING_VAR + c_offs, mask=cm, other=1.0).to(tl.float32)
    inv_std = 1.0 / tl.sqrt(var + eps)  # one divide per channel
    if HAS_W:
        scale = tl.load(W + c_offs, mask=cm, other=1.0).to(tl.float32) * inv_std
    else:
        scale = inv_std
    tl.store(MEAN + c_offs, mean, mask=cm)
    tl.store(SCALE + c_offs, scale, mask=cm)
    tl.store(INVSTD + c_offs, inv_std, mask=cm)
    return mean, scale


@_jit
def _walk_normalize(
    X, Y, BIAS, c_offs, mean, scale, t0, t1, B, C, S, sb, sc, ss, n_s_tiles,
    HAS_B: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """y = (x - mean) * scale + bias over tiles [t0, t1): a subtract and a multiply-add."""
    if HAS_B:
        beta = tl.load(BIAS + c_offs, mask=c_offs < C, other=0.0).to(tl.float32)
    else:
        beta = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t in range(t0, t1):
        offs, mask, count = _tile(t, c_offs, B, C, S, sb, sc, ss, n_s_tiles,
                                  BLOCK_B, BLOCK_C, BLOCK_S)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        # Subtracting the mean before scaling keeps eval mode exact for data far from zero.
        y = (x - mean[None, :, None]) * scale[None, :, None] + beta[None, :, None]
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@_jit
def _bn_fwd_fused_kernel(
    X,  # pointer to the input, strided (B, C, S)
    Y,  # pointer to the output, same strides
    RUNNING_MEAN, RUNNING_VAR,  # (C,) running statistics, updated in place when training
    W, BIAS,  # (C,) affine parameters (ignored unless HAS_W / HAS_B)
    MEAN, SCALE, INVSTD,  # (C,) float32 outputs kept for backward
    B, C, S, sb, sc, ss, n_s_tiles, n_tiles,
    momentum, eps,
    TRAINING: tl.constexpr, HAS_RUNNING: tl.constexpr, HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """One program per channel block: statistics, then normalise (the re-read hits L2)."""
    c_offs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    if TRAINING:
        n, mean, m2 = _walk_stats(X, c_offs, 0, n_tiles, B, C, S, sb, sc, ss, n_s_tiles,
                                  BLOCK_B, BLOCK_C, BLOCK_S)
    mean, scale = _finalize_channels(n, mean, m2, c_offs, C, RUNNING_MEAN, RUNNING_VAR, W,
                                     MEAN, SCALE, INVSTD, momentum, eps,
                                     TRAINING, HAS_RUNNING, HAS_W)
    _walk_normalize(X, Y, BIAS, c_offs, mean, scale, 0, n_tiles, B, C, S, sb, sc, ss,
                    n_s_tiles, HAS_B, BLOCK_B, BLOCK_C, BLOCK_S)


@_jit
def _bn_fwd_partial_stats_kernel(
    X,  # pointer to the input, strided (B, C, S)
    PART_N, PART_MEAN, PART_M2,  # (n_splits, C) float32 partial statistics
    B, C, S, sb, sc, ss, n_s_tiles, n_tiles, tiles_per_prog,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Program (channel block, split): Chan-merged statistics of its slice of tiles."""
    c_offs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    t0 = split * tiles_per_prog
    t1 = tl.minimum(t0 + tiles_per_prog, n_tiles)
    n, mean, m2 = _walk_stats(X, c_offs, t0, t1, B, C, S, sb, sc, ss, n_s_tiles,
                              BLOCK_B, BLOCK_C, BLOCK_S)
    cm = c_offs < C
    tl.store(PART_N + split * C + c_offs, n, mask=cm)
    tl.store(PART_MEAN + split * C + c_offs, mean, mask=cm)
    tl.store(PART_M2 + split * C + c_offs, m2, mask=cm)


@_jit
def _bn_fwd_finalize_kernel(
    PART_N, PART_MEAN, PART_M2,  # (n_splits, C) partial statistics (unused in eval)
    RUNNING_MEAN, RUNNING_VAR, W,  # (C,) running statistics and weight
    MEAN, SCALE, INVSTD,  # (C,) float32 outputs
    C, n_splits, momentum, eps,
    TRAINING: tl.constexpr, HAS_RUNNING: tl.constexpr, HAS_W: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Merge the splits' partial statistics (Chan) and finish the per-channel quantities."""
    c_offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cm = c_offs < C
    n = tl.zeros([BLOCK], dtype=tl.float32)
    mean = tl.zeros([BLOCK], dtype=tl.float32)
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    if TRAINING:
        for k in range(n_splits):
            n_b = tl.load(PART_N + k * C + c_offs, mask=cm, other=0.0)
            mean_b = tl.load(PART_MEAN + k * C + c_offs, mask=cm, other=0.0)
            m2_b = tl.load(PART_M2 + k * C + c_offs, mask=cm, other=0.0)
            n, mean, m2 = _chan_merge(n, mean, m2, n_b, mean_b, m2_b)
    _finalize_channels(n, mean, m2, c_offs, C, RUNNING_MEAN, RUNNING_VAR, W, MEAN, SCALE,
                       INVSTD, momentum, eps, TRAINING, HAS_RUNNING, HAS_W)


@_jit
def _bn_fwd_normalize_kernel(
    X, Y,  # pointers to input and output, strided (B, C, S)
    MEAN, SCALE, BIAS,  # (C,) per-channel mean, scale = w * inv_std, and bias
    B, C, S, sb, sc, ss, n_s_tiles, n_tiles, tiles_per_prog,
    HAS_B: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Elementwise normalise of a slice of tiles of one channel block."""
    c_offs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c_offs < C
    mean = tl.load(MEAN + c_offs, mask=cm, other=0.0)
    scale = tl.load(SCALE + c_offs, mask=cm, other=0.0)
    t0 = tl.program_id(1) * tiles_per_prog
    t1 = tl.minimum(t0 + tiles_per_prog, n_tiles)
    _walk_normalize(X, Y, BIAS, c_offs, mean, scale, t0, t1, B, C, S, sb, sc, ss, n_s_tiles,
                    HAS_B, BLOCK_B, BLOCK_C, BLOCK_S)


@_jit
def _walk_grad_sums(
    X, DY, c_offs, mean, t0, t1, B, C, S, sb, sc, ss, n_s_tiles,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """sum(dy) and sum(dy * (x - mean)) over tiles [t0, t1), each (BLOCK_C,)."""
    sum_dy = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_dy_xmu = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t in range(t0, t1):
        offs, mask, count = _tile(t, c_offs, B, C, S, sb, sc, ss, n_s_tiles,
                                  BLOCK_B, BLOCK_C, BLOCK_S)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        # Centre x first: dy * x would carry the mean's magnitude into the sum.
        xmu = tl.where(mask, x - mean[None, :, None], 0.0)
        sum_dy += tl.sum(tl.sum(dy, axis=2), axis=0)
        sum_dy_xmu += tl.sum(tl.sum(dy * xmu, axis=2), axis=0)
    return sum_dy, sum_dy_xmu


@_jit
def _grad_coefficients(
    sum_dy, sum_dy_xmu, inv_std, c_offs, C, inv_n, W, DWEIGHT, DBIAS, store_limit,
    TRAINING: tl.constexpr, HAS_W: tl.constexpr,
):
    """dweight, dbias (channels below store_limit) and the coefficients of
    dx = k * (dy - a - (x - mean) * b)."""
    cm = c_offs < C
    sum_dy_xhat = sum_dy_xmu * inv_std  # sum(dy * x_hat), (BLOCK_C,)
    tl.store(DWEIGHT + c_offs, sum_dy_xhat, mask=c_offs < store_limit)
    tl.store(DBIAS + c_offs, sum_dy, mask=c_offs < store_limit)
    if HAS_W:
        k = tl.load(W + c_offs, mask=cm, other=1.0).to(tl.float32) * inv_std
    else:
        k = inv_std
    if TRAINING:
        a = sum_dy * inv_n  # mean of dy
        b = sum_dy_xhat * inv_n * inv_std  # mean of dy * x_hat, times inv_std
    else:
        # In eval the statistics are constants: dx = k * dy.
        a = tl.zeros_like(sum_dy)
        b = tl.zeros_like(sum_dy)
    return k, a, b


@_jit
def _walk_grad_input(
    X, DY, DX, c_offs, mean, k, a, b, t0, t1, B, C, S, sb, sc, ss, n_s_tiles,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """dx = k * (dy - a - (x - mean) * b) over tiles [t0, t1)."""
    for t in range(t0, t1):
        offs, mask, count = _tile(t, c_offs, B, C, S, sb, sc, ss, n_s_tiles,
                                  BLOCK_B, BLOCK_C, BLOCK_S)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        xmu = x - mean[None, :, None]
        dx = k[None, :, None] * (dy - a[None, :, None] - xmu * b[None, :, None])
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


@_jit
def _bn_bwd_fused_kernel(
    X, DY, DX,  # pointers to input, output gradient and input gradient, strided (B, C, S)
    MEAN, INVSTD, W,  # (C,) saved by the forward, and the weight
    DWEIGHT, DBIAS,  # (C,) float32 outputs
    B, C, S, sb, sc, ss, n_s_tiles, n_tiles, inv_n,
    TRAINING: tl.constexpr, HAS_W: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """One program per channel block: the two sums, then dx (the re-read hits L2)."""
    c_offs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c_offs < C
    mean = tl.load(MEAN + c_offs, mask=cm, other=0.0)
    inv_std = tl.load(INVSTD + c_offs, mask=cm, other=0.0)
    sum_dy, sum_dy_xmu = _walk_grad_sums(X, DY, c_offs, mean, 0, n_tiles, B, C, S, sb, sc, ss,
                                         n_s_tiles, BLOCK_B, BLOCK_C, BLOCK_S)
    k, a, b = _grad_coefficients(sum_dy, sum_dy_xmu, inv_std, c_offs, C, inv_n, W, DWEIGHT,
                                 DBIAS, C, TRAINING, HAS_W)
    _walk_grad_input(X, DY, DX, c_offs, mean, k, a, b, 0, n_tiles, B, C, S, sb, sc, ss,
                     n_s_tiles, BLOCK_B, BLOCK_C, BLOCK_S)


@_jit
def _bn_bwd_partial_sums_kernel(
    X, DY,  # pointers to input and output gradient, strided (B, C, S)
    MEAN,  # (C,) the mean used in the forward
    PART_DY, PART_DY_XMU,  # (n_splits, C) float32 partial sums
    B, C, S, sb, sc, ss, n_s_tiles, n_tiles, tiles_per_prog,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Program (channel block, split): the two sums over its slice of tiles."""
    c_offs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c_offs < C
    split = tl.program_id(1)
    mean = tl.load(MEAN + c_offs, mask=cm, other=0.0)
    t0 = split * tiles_per_prog
    t1 = tl.minimum(t0 + tiles_per_prog, n_tiles)
    sum_dy, sum_dy_xmu = _walk_grad_sums(X, DY, c_offs, mean, t0, t1, B, C, S, sb, sc, ss,
                                         n_s_tiles, BLOCK_B, BLOCK_C, BLOCK_S)
    tl.store(PART_DY + split * C + c_offs, sum_dy, mask=cm)
    tl.store(PART_DY_XMU + split * C + c_offs, sum_dy_xmu, mask=cm)


@_jit
def _bn_bwd_grad_input_kernel(
    X, DY, DX,  # pointers to input, output gradient and input gradient
    MEAN, INVSTD, W,  # (C,) saved by the forward, and the weight
    PART_DY, PART_DY_XMU,  # (n_splits, C) partial sums from the previous kernel
    DWEIGHT, DBIAS,  # (C,) float32 outputs, written by the programs of tile slice 0
    B, C, S, sb, sc, ss, n_s_tiles, n_tiles, tiles_per_prog, n_splits, inv_n,
    TRAINING: tl.constexpr, HAS_W: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Each program adds up the few partial sums of its channels (no extra launch), then dx."""
    c_offs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c_offs < C
    sum_dy = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_dy_xmu = tl.zeros([BLOCK_C], dtype=tl.float32)
    for k in range(n_splits):
        sum_dy += tl.load(PART_DY + k * C + c_offs, mask=cm, other=0.0)
        sum_dy_xmu += tl.load(PART_DY_XMU + k * C + c_offs, mask=cm, other=0.0)
    mean = tl.load(MEAN + c_offs, mask=cm, other=0.0)
    inv_std = tl.load(INVSTD + c_offs, mask=cm, other=0.0)
    # Every program computes the same coefficients; only those of slice 0 store dweight/dbias.
    store_limit = C - C * tl.minimum(tl.program_id(1), 1)  # C for slice 0, else 0
    k, a, b = _grad_coefficients(sum_dy, sum_dy_xmu, inv_std, c_offs, C, inv_n, W, DWEIGHT,
                                 DBIAS, store_limit, TRAINING, HAS_W)
    t0 = tl.program_id(1) * tiles_per_prog
    t1 = tl.minimum(t0 + tiles_per_prog, n_tiles)
    _walk_grad_input(X, DY, DX, c_offs, mean, k, a, b, t0, t1, B, C, S, sb, sc, ss, n_s_tiles,
                     BLOCK_B, BLOCK_C, BLOCK_S)


# ----------------------------------------------------------------------------------------------
# Host side: the launch plan, the autograd wrapper. The (B, C, S) view lives in layout.py.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How to launch: tile shape, fused or split, and how many tiles each program walks."""

    block_b: int
    block_c: int
    block_s: int
    fused: bool
    n_s_tiles: int
    n_tiles: int
    n_cblocks: int
    n_splits: int
    tiles_per_prog: int
    num_warps: int


def _pow2_at_most(n: int, cap: int) -> int:
    return min(triton.next_power_of_2(max(n, 1)), cap)


def _check_options(path: Any, max_tile: Any) -> None:
    """The two backend options; raised before any kernel runs (ValueError, as they are ours)."""
    if path not in ("auto", "fused", "split"):
        raise ValueError(f"path must be 'auto', 'fused' or 'split', got {path!r}")
    if max_tile is not None and (
        isinstance(max_tile, bool) or not isinstance(max_tile, int)
        or max_tile < 1 or max_tile & (max_tile - 1)
    ):
        raise ValueError(f"max_tile must be a power of two >= 1 or None, got {max_tile!r}")


def make_plan(
    g: Geometry,
    itemsize: int,
    path: str = "auto",
    max_tile: int | None = None,
    device: torch.device | None = None,
) -> Plan:
    """Choose tile shape and strategy for a (B, C, S) view.

    Args:
        g: the geometry.
        itemsize: bytes per element of the input.
        path: "auto", "fused" (one program per channel block) or "split".
        max_tile: elements per tile (a power of two); default 4096 on GPU, 8192 interpreted.
        device: the tensor's device (its SM count sizes the grid).

    Returns:
        The launch plan.
    """
    _check_options(path, max_tile)
    if INTERPRET or device is None or device.type != "cuda":
        # The interpreter runs programs one after another: few, large programs are fastest.
        n_sm, tile = 4, 8192
    else:
        n_sm, tile = torch.cuda.get_device_properties(device).multi_processor_count, 4096
    if max_tile is not None:
        tile = max_tile
    if g.sc == 1:  # channels contiguous: blocks of channels, rows along S
        block_c = _pow2_at_most(g.C, min(64, tile))
        block_b = 1
        block_s = _pow2_at_most(g.S, max(tile // block_c, 1))
    else:  # S contiguous: one channel, a (BLOCK_B, BLOCK_S) tile of its planes
        block_c = 1
        block_s = _pow2_at_most(g.S, tile)
        block_b = _pow2_at_most(g.B, max(tile // block_s, 1))
    n_s_tiles = triton.cdiv(g.S, block_s)
    n_tiles = triton.cdiv(g.B, block_b) * n_s_tiles
    n_cblocks = triton.cdiv(g.C, block_c)
    if path == "auto":
        # Fused needs enough channel blocks to fill the GPU, and the data of the blocks that run
        # at once must stay in L2 (50 MB on an H100) between the statistics and normalise loops.
        resident = min(n_cblocks, 2 * n_sm) * block_c * g.per_channel * itemsize
        fused = n_cblocks >= n_sm and resident <= 16 * 2**20
    else:
        fused = path == "fused"
    # Split path: about 4 programs per SM in all, each walking a contiguous slice of tiles.
    n_splits = 1 if fused else max(1, min(n_tiles, triton.cdiv(4 * n_sm, n_cblocks)))
    tiles_per_prog = triton.cdiv(n_tiles, n_splits)
    n_splits = triton.cdiv(n_tiles, tiles_per_prog)  # no empty slices
    elems = block_b * block_c * block_s
    num_warps = 8 if elems >= 4096 else 4
    return Plan(block_b, block_c, block_s, fused, n_s_tiles, n_tiles, n_cblocks, n_splits,
                tiles_per_prog, num_warps)


def _dummy(x: torch.Tensor) -> torch.Tensor:
    """A placeholder pointer for arguments a constexpr switch leaves unused."""
    return torch.empty(1, device=x.device, dtype=torch.float32)


# Launch options of every kernel. Fusing a*b+c into one FMA is what the kernels were tested
# with; saying so here (not through TRITON_DEFAULT_FP_FUSION) keeps it when triton's default
# changes, and touches no environment variable.
_LAUNCH: dict[str, Any] = dict(enable_fp_fusion=True)


def _forward(
    x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
    weight: torch.Tensor | None, bias: torch.Tensor | None, training: bool, momentum: float,
    eps: float, g: Geometry, p: Plan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernels. Returns (y, mean, inv_std); mean/inv_std are float32 (C,)."""
    c = g.C
    y = torch.empty_like(x)
    stats = torch.empty((3, c), device=x.device, dtype=torch.float32)
    mean, scale, inv_std = stats[0], stats[1], stats[2]
    dummy = _dummy(x)
    rm = running_mean if running_mean is not None else dummy
    rv = running_var if running_var is not None else dummy
    w = weight if weight is not None else dummy
    b = bias if bias is not None else dummy
    flags = dict(TRAINING=training, HAS_RUNNING=running_mean is not None, HAS_W=weight is not None)
    blocks = dict(BLOCK_B=p.block_b, BLOCK_C=p.block_c, BLOCK_S=p.block_s)
    view = (g.B, g.C, g.S, g.sb, g.sc, g.ss, p.n_s_tiles, p.n_tiles)
    if p.fused:
        _bn_fwd_fused_kernel[(p.n_cblocks,)](
            x, y, rm, rv, w, b, mean, scale, inv_std, *view, float(momentum), float(eps),
            HAS_B=bias is not None, **flags, **blocks, num_warps=p.num_warps, **_LAUNCH)
        return y, mean, inv_std
    if training:
        part = torch.empty((3, p.n_splits, c), device=x.device, dtype=torch.float32)
        _bn_fwd_partial_stats_kernel[(p.n_cblocks, p.n_splits)](
            x, part[0], part[1], part[2], *view, p.tiles_per_prog, **blocks,
            num_warps=p.num_warps, **_LAUNCH)
    else:
        part = torch.empty((3, 1, 1), device=x.device, dtype=torch.float32)  # unused
    fin_block = _pow2_at_most(c, 1024)
    _bn_fwd_finalize_kernel[(triton.cdiv(c, fin_block),)](
        part[0], part[1], part[2], rm, rv, w, mean, scale, inv_std, c, part.shape[1],
        float(momentum), float(eps), **flags, BLOCK=fin_block, **_LAUNCH)
    _bn_fwd_normalize_kernel[(p.n_cblocks, p.n_splits)](
        x, y, mean, scale, b, *view, p.tiles_per_prog, HAS_B=bias is not None, **blocks,
        num_warps=p.num_warps, **_LAUNCH)
    return y, mean, inv_std


def _backward(
    x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
    inv_std: torch.Tensor, training: bool, g: Geometry, p: Plan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels. Returns (dx, dweight, dbias); the last two float32 (C,)."""
    c = g.C
    dx = torch.empty_like(x)
    grads = torch.empty((2, c), device=x.device, dtype=torch.float32)
    w = weight if weight is not None else _dummy(x)
    flags = dict(TRAINING=training, HAS_W=weight is not None)
    blocks = dict(BLOCK_B=p.block_b, BLOCK_C=p.block_c, BLOCK_S=p.block_s)
    view = (g.B, g.C, g.S, g.sb, g.sc, g.ss, p.n_s_tiles, p.n_tiles)
    inv_n = 1.0 / g.per_channel
    if p.fused:
        _bn_bwd_fused_kernel[(p.n_cblocks,)](
            x, dy, dx, mean, inv_std, w, grads[0], grads[1], *view, inv_n, **flags, **blocks,
            num_warps=p.num_warps, **_LAUNCH)
        return dx, grads[0], grads[1]
    part = torch.empty((2, p.n_splits, c), device=x.device, dtype=torch.float32)
    _bn_bwd_partial_sums_kernel[(p.n_cblocks, p.n_splits)](
        x, dy, mean, part[0], part[1], *view, p.tiles_per_prog, **blocks,
        num_warps=p.num_warps, **_LAUNCH)
    _bn_bwd_grad_input_kernel[(p.n_cblocks, p.n_splits)](
        x, dy, dx, mean, inv_std, w, part[0], part[1], grads[0], grads[1], *view,
        p.tiles_per_prog, p.n_splits, inv_n, **flags, **blocks, num_warps=p.num_warps,
        **_LAUNCH)
    return dx, grads[0], grads[1]


class TritonBatchNorm(torch.autograd.Function):
    """Forward and backward through the Triton kernels.

    Written with ``setup_context`` so that torch.func's transforms reach :meth:`vmap` and
    :meth:`jvp`, which refuse with a clear error instead of a failure deep in a kernel launch.
    The backward is first order: under ``create_graph=True`` its gradients still flow, but
    differentiating them again raises (see ``bnbook.kernels.limits``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        x: torch.Tensor, running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None, weight: torch.Tensor | None,
        bias: torch.Tensor | None, training: bool, momentum: float, eps: float, path: str,
        max_tile: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_plain(BACKEND, x, running_mean, running_var, weight, bias)
        if x.numel() == 0:  # as torch: empty output, running statistics left alone
            stats = torch.zeros((2, x.shape[1]), device=x.device, dtype=torch.float32)
            return torch.empty_like(x), stats[0], stats[1]
        x, g = dense(x)
        p = make_plan(g, x.element_size(), path, max_tile, x.device)
        with interpreter_env(INTERPRET):
            return _forward(x, running_mean, running_var, weight, bias, training, momentum,
                            eps, g, p)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, _, _, weight, bias, training, _, _, path, max_tile = inputs
        _, mean, inv_std = output
        ctx.mark_non_differentiable(mean, inv_std)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.training, ctx.path, ctx.max_tile = training, path, max_tile
        ctx.bias_like = None if bias is None else torch.empty((0,), dtype=bias.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, mean, inv_std = ctx.saved_tensors
        check_plain(BACKEND, x, weight, dy)
        with torch.no_grad(), interpreter_env(INTERPRET):
            if x.numel() == 0:  # torch gives zero (not NaN) parameter gradients here
                dx = torch.zeros_like(x)
                dweight = dbias = torch.zeros(x.shape[1], device=x.device)
            else:
                xd, g = dense(x.detach())
                p = make_plan(g, xd.element_size(), ctx.path, ctx.max_tile, xd.device)
                dx, dweight, dbias = _backward(xd, as_layout(dy.detach(), xd), weight, mean,
                                               inv_std, ctx.training, g, p)
                dx = as_layout(dx, x)
        need = ctx.needs_input_grad
        gx = dx if need[0] else None
        gw = dweight.to(weight.dtype) if weight is not None and need[3] else None
        has_b = ctx.bias_like is not None
        gb = dbias.to(ctx.bias_like.dtype) if has_b and need[4] else None
        gx, gw, gb = first_order_only(BACKEND, (gx, gw, gb), (x, weight, dy))
        return gx, None, None, gw, gb, None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        raise refuse(BACKEND, "forward-mode AD (torch.autograd.forward_ad, torch.func.jvp)")

    @staticmethod
    def vmap(info: Any, in_dims: Any, *args: Any) -> Any:
        raise refuse(BACKEND, "torch.func.vmap (per-sample gradients, is_grads_batched)")


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    path: str = "auto",
    max_tile: int | None = None,
) -> torch.Tensor:
    """Batch Normalization with Triton kernels; the contract of ``torch.nn.functional.batch_norm``.

    Arguments are checked by ``bnbook.validation.check_batch_norm_args``, the same check as
    :func:`bnbook.functional.batch_norm` and the CUDA backend, before anything is read or
    written; only the dtypes (no float64) and the device (CUDA, or the interpreter) are this
    backend's own. Gradients are first order: double backward, forward-mode AD and vmap raise.

    Args:
        input: (N, C, *spatial) with 0 to 3 spatial dims, float32/float16/bfloat16, NCHW or
            channels_last. Statistics and accumulation are float32 whatever the dtype. An empty
            input gives an empty output and leaves the running statistics alone.
        running_mean: (C,) running mean, updated in place when training (or None).
        running_var: (C,) running variance, updated in place with the unbiased batch variance.
        weight: (C,) scale (gamma) or None.
        bias: (C,) shift (beta) or None.
        training: normalise with batch statistics and update the running ones if True;
            otherwise normalise with the running statistics.
        momentum: running = (1 - momentum) * running + momentum * batch.
        eps: added to the variance before the square root.
        path: "auto", or "fused" / "split" to force a strategy.
        max_tile: elements per tile (power of two), to force many small tiles.

    Returns:
        The normalized tensor, same shape, dtype and memory format as ``input``.

    Raises:
        BatchNormArgumentError: a wrong value (shape, dtype, device, eps, ...), as
            ``bnbook.validation`` says; also an input off CUDA when the kernels are compiled.
        TypeError: a wrong type, as ``bnbook.validation`` says.
        ValueError: a bad ``path`` or ``max_tile``.
    """
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, dtypes=DTYPES)
    _check_options(path, max_tile)
    if not INTERPRET and input.device.type != "cuda":
        raise BatchNormArgumentError(
            f"input must be on a CUDA device for the compiled Triton kernels, got {input.device} "
            "(without a CUDA device, or with TRITON_INTERPRET=1, they run in triton's "
            "interpreter on the CPU)")
    y, _, _ = TritonBatchNorm.apply(input, running_mean, running_var, weight, bias, training,
                                    float(momentum), float(eps), path, max_tile)
    return y


_KERNELS = {
    "fwd_fused": _bn_fwd_fused_kernel,
    "fwd_partial_stats": _bn_fwd_partial_stats_kernel,
    "fwd_finalize": _bn_fwd_finalize_kernel,
    "fwd_normalize": _bn_fwd_normalize_kernel,
    "bwd_fused": _bn_bwd_fused_kernel,
    "bwd_partial_sums": _bn_bwd_partial_sums_kernel,
    "bwd_grad_input": _bn_bwd_grad_input_kernel,
}
_DATA_POINTERS = {"X", "Y", "DY", "DX"}  # in the input's dtype; every other pointer is float32
_FLOAT_SCALARS = {"momentum", "eps", "inv_n"}


def compile_for_gpu(
    dtype: str = "fp32", arch: int = 90, block_b: int = 1, block_c: int = 64, block_s: int = 64,
) -> dict[str, int]:
    """Compile every kernel with triton's real compiler (not the interpreter) to a cubin.

    Needs no GPU: only triton's bundled ptxas. Call it in a process with TRITON_INTERPRET=0
    (under the interpreter the kernels are not compilable objects).

    Args:
        dtype: triton's name of the input dtype: "fp32", "fp16" or "bf16".
        arch: the compute capability, 90 for Hopper (H100/H200).
        block_b: BLOCK_B.
        block_c: BLOCK_C.
        block_s: BLOCK_S.

    Returns:
        Kernel name -> size in bytes of its cubin.
    """
    if INTERPRET:
        raise RuntimeError("compile_for_gpu needs TRITON_INTERPRET=0 in this process")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts: dict[str, int | bool] = dict(
        TRAINING=True, HAS_RUNNING=True, HAS_W=True, HAS_B=True, BLOCK=1024,
        BLOCK_B=block_b, BLOCK_C=block_c, BLOCK_S=block_s)
    sizes = {}
    for name, kernel in _KERNELS.items():
        signature: dict[str, str] = {}
        constexprs: dict[str, int | bool] = {}
        for param in kernel.params:
            arg = param.name
            if param.is_constexpr:
                signature[arg] = "constexpr"
                constexprs[arg] = consts[arg]
            elif arg.isupper() and arg not in ("B", "C", "S"):  # pointers: the other capitals
                signature[arg] = "*" + (dtype if arg in _DATA_POINTERS else "fp32")
            else:
                signature[arg] = "fp32" if arg in _FLOAT_SCALARS else "i32"
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=_LAUNCH)
        sizes[name] = len(compiled.asm["cubin"])
    return sizes
