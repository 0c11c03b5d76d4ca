"""The CUDA C++ BatchNorm kernels (csrc/batch_norm.cu), built on a GPU machine.

``load()`` compiles csrc/batch_norm.cu and its thin binding csrc/batch_norm_binding.cpp with
``torch.utils.cpp_extension.load`` (nvcc and a CUDA build of torch required) and caches the
module; ``batch_norm_cuda`` has the contract of ``torch.nn.functional.batch_norm``. This module
imports neither triton nor the extension: the arguments are checked (``bnbook.validation``)
before a GPU is needed, so a bad call fails the same way on every machine, and a good call on a
machine without CUDA raises a ``BatchNormArgumentError`` saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..validation import BatchNormArgumentError, check_batch_norm_args
from .layout import Geometry, as_layout, dense
from .limits import check_plain, first_order_only, refuse

__all__ = ["CudaBatchNorm", "batch_norm_cuda", "load", "n_splits"]

CSRC = Path(__file__).parent / "csrc"
SOURCES = (CSRC / "batch_norm_binding.cpp", CSRC / "batch_norm.cu")
BACKEND = "bnbook.kernels.cuda"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # the kernels' input dtypes
MAX_SPLITS = 65535  # gridDim.y's limit; the kernels grid-stride anyway, this keeps grids sane

# Must match batch_norm.cu: threads per block, elements per thread per tile, rows per block.
_THREADS, _TILE, _ROWS_C, _LANES_C = 256, 8, 8, 32

_module: Any = None


def load(verbose: bool = False) -> Any:
    """Build (once per process; torch caches the build on disk) and return the extension.

    Args:
        verbose: print the compiler's commands and output.

    Returns:
        The extension module, with ``forward`` and ``backward``.

    Raises:
        RuntimeError: this machine has no CUDA device.
    """
    global _module
    if _module is not None:
        return _module
    if not torch.cuda.is_available():
        raise RuntimeError("bnbook.kernels.cuda needs a CUDA device (and nvcc, and a CUDA build "
                           "of torch); this machine has none. Use bnbook.kernels.batch_norm, "
                           "which runs in triton's interpreter on the CPU.")
    from torch.utils.cpp_extension import load as cpp_load

    _module = cpp_load(name="bnbook_bn_cuda", sources=[str(s) for s in SOURCES],
                       extra_cuda_cflags=["-O3", "-std=c++17"], extra_cflags=["-O3"],
                       verbose=verbose)
    return _module


def n_splits(g: Geometry, n_sm: int) -> int:
    """Splits of each channel's reduction: about 4 blocks per SM, each with a few tiles of work.

    Args:
        g: the (B, C, S) view.
        n_sm: the GPU's multiprocessor count.

    Returns:
        A split count in [1, MAX_SPLITS], never more than there is work for.
    """
    if g.ss == 1:  # S-inner: blocks of (channel, split); a split is >= one tile per thread
        work, blocks = -(-g.per_channel // (_THREADS * _TILE)), g.C
    else:  # C-inner: blocks of (32 channels, split); a split is >= one tile per row of threads
        work, blocks = -(-g.S // (_ROWS_C * _TILE)), -(-g.C // _LANES_C)
    return max(1, min(work, -(-4 * n_sm // blocks), MAX_SPLITS))


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


class CudaBatchNorm(torch.autograd.Function):
    """Forward and backward through the CUDA C++ kernels (first order; see kernels.limits)."""

    @staticmethod
    def forward(  # type: ignore[override]
        x: torch.Tensor, running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None, weight: torch.Tensor | None,
        bias: torch.Tensor | None, training: bool, momentum: float, eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_plain(BACKEND, x, running_mean, running_var, weight, bias)
        c = x.shape[1]
        stats = torch.zeros((3, c), device=x.device, dtype=torch.float32)
        if x.numel() == 0:  # as torch: empty output, running statistics left alone
            return torch.empty_like(x), stats[0], stats[2]
        ext = load()
        x, g = dense(x)
        splits = n_splits(g, _sm_count(x.device)) if training else 1
        # The .cu works on float32 running statistics; other dtypes go through a copy.
        rm, rv = _f32(running_mean), _f32(running_var)
        y = torch.empty_like(x)
        workspace = torch.empty(3 * splits * c, device=x.device, dtype=torch.float32)
        view = [g.B, g.C, g.S, g.sb, g.sc, g.ss]
        ext.forward(x, y, _f32(weight), _f32(bias), rm, rv, stats[0], stats[1], stats[2],
                    workspace, view, splits, training, momentum, eps)
        if training and running_mean is not None and running_var is not None:
            if rm is not None and rm.data_ptr() != running_mean.data_ptr():
                running_mean.copy_(rm)
            if rv is not None and rv.data_ptr() != running_var.data_ptr():
                running_var.copy_(rv)
        return y, stats[0], stats[2]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, _, _, weight, bias, training, _, _ = inputs
        _, mean, inv_std = output
        ctx.mark_non_differentiable(mean, inv_std)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.training = training
        ctx.bias_like = None if bias is None else torch.empty((0,), dtype=bias.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, mean, inv_std = ctx.saved_tensors
        check_plain(BACKEND, x, weight, dy)
        c = x.shape[1]
        with torch.no_grad():
            grads = torch.zeros((2, c), device=x.device, dtype=torch.float32)
            if x.numel() == 0:  # torch gives zero (not NaN) parameter gradients here
                dx = torch.zeros_like(x)
            else:
                ext = load()
                xd, g = dense(x.detach())
                splits = n_splits(g, _sm_count(xd.device))
                dx = torch.empty_like(xd)
                workspace = torch.empty(2 * splits * c + 3 * c, device=xd.device,
                                        dtype=torch.float32)
                ext.backward(xd, as_layout(dy.detach(), xd), dx, _f32(weight), mean, inv_std,
                             grads[0], grads[1], workspace, [g.B, g.C, g.S, g.sb, g.sc, g.ss],
                             splits, ctx.training)
                dx = as_layout(dx, x)
        need = ctx.needs_input_grad
        gx = dx if need[0] else None
        gw = grads[0].to(weight.dtype) if weight is not None and need[3] else None
        has_b = ctx.bias_like is not None
        gb = grads[1].to(ctx.bias_like.dtype) if has_b and need[4] else None
        gx, gw, gb = first_order_only(BACKEND, (gx, gw, gb), (x, weight, dy))
        return gx, None, None, gw, gb, None, None, None

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        raise refuse(BACKEND, "forward-mode AD (torch.autograd.forward_ad, torch.func.jvp)")

    @staticmethod
    def vmap(info: Any, in_dims: Any, *args: Any) -> Any:
        raise refuse(BACKEND, "torch.func.vmap (per-sample gradients, is_grads_batched)")


def batch_norm_cuda(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch Normalization with the CUDA C++ kernels; contract of ``F.batch_norm``.

    The arguments go through ``bnbook.validation.check_batch_norm_args`` first, exactly as in
    :func:`bnbook.functional.batch_norm` and the Triton backend; then the input must be on a
    CUDA device. Gradients are first order: double backward, forward-mode AD and vmap raise.

    Args:
        input: (N, C, *spatial) CUDA tensor, float32/float16/bfloat16, NCHW or channels_last.
        running_mean: (C,) running mean, updated in place when training (or None).
        running_var: (C,) running variance, updated in place with the unbiased estimate.
        weight: (C,) scale or None.
        bias: (C,) shift or None.
        training: batch statistics (True) or running statistics (False).
        momentum: weight of the batch in the running update.
        eps: added to the variance.

    Returns:
        The normalized tensor, same shape, dtype and memory format as ``input``.

    Raises:
        BatchNormArgumentError: a wrong value (as ``bnbook.validation``), or an input that is
            not on a CUDA device.
        TypeError: a wrong type (as ``bnbook.validation``).
    """
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, dtypes=DTYPES)
    if input.device.type != "cuda":
        where = "" if torch.cuda.is_available() else " (this machine has none)"
        raise BatchNormArgumentError(
            f"bnbook.kernels.cuda needs a CUDA device{where}: input is on {input.device}. "
            "bnbook.kernels.batch_norm runs the Triton kernels in triton's interpreter on the CPU")
    y, _, _ = CudaBatchNorm.apply(input, running_mean, running_var, weight, bias, training,
                                  float(momentum), float(eps))
    return y
