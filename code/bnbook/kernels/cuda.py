"""The CUDA C++ BatchNorm kernels (csrc/batch_norm.cu), built on a GPU machine.

``load()`` compiles csrc/batch_norm.cu and its thin binding csrc/batch_norm_binding.cpp with
``torch.utils.cpp_extension.load`` (nvcc and a CUDA build of torch required) and caches the
module; ``batch_norm_cuda`` has the contract of ``torch.nn.functional.batch_norm``. On a machine
without CUDA both raise a RuntimeError saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CSRC = Path(__file__).parent / "csrc"
SOURCES = (CSRC / "batch_norm_binding.cpp", CSRC / "batch_norm.cu")

_module: Any = None


def load(verbose: bool = False) -> Any:
    """Build (once per process; torch caches the build on disk) and return the extension.

    Args:
        verbose: print the compiler's commands and output.

    Returns:
        The extension module, with ``forward`` and ``backward``.
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


def _splits(g: Any, device: torch.device) -> int:
    """Splits of the reduction so that about 4 blocks per SM run."""
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    if g.ss == 1:  # S-inner: one block per (channel, slice of planes)
        return max(1, min(g.B, -(-4 * n_sm // g.C)))
    return max(1, min(-(-g.S // 64), -(-4 * n_sm // -(-g.C // 32))))  # C-inner


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous()


class CudaBatchNorm(torch.autograd.Function):
    """Forward and backward through the CUDA C++ kernels."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None, weight: torch.Tensor | None,
        bias: torch.Tensor | None, training: bool, momentum: float, eps: float,
    ) -> torch.Tensor:
        from .triton_bn import geometry

        ext = load()
        g = geometry(x)
        if g is None:
            x = x.contiguous()
            g = geometry(x)
            assert g is not None
        c = g.C
        n_splits = _splits(g, x.device) if training else 1
        # The .cu works on float32 running statistics; other dtypes go through a copy.
        rm, rv = _f32(running_mean), _f32(running_var)
        y = torch.empty_like(x)
        stats = torch.empty((3, c), device=x.device, dtype=torch.float32)
        workspace = torch.empty(3 * n_splits * c, device=x.device, dtype=torch.float32)
        view = [g.B, g.C, g.S, g.sb, g.sc, g.ss]
        ext.forward(x, y, _f32(weight), _f32(bias), rm, rv, stats[0], stats[1], stats[2],
                    workspace, view, n_splits, training, momentum, eps,
                    torch.cuda.current_stream(x.device).cuda_stream)
        if training and running_mean is not None and rm is not None and rv is not None:
            if rm.data_ptr() != running_mean.data_ptr():
                running_mean.copy_(rm)
            if running_var is not None and rv.data_ptr() != running_var.data_ptr():
                running_var.copy_(rv)
        ctx.save_for_backward(x, weight, stats[0], stats[2])
        ctx.view, ctx.n_splits, ctx.training = view, n_splits, training
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        from .triton_bn import _as_layout

        ext = load()
        x, weight, mean, inv_std = ctx.saved_tensors
        dy = _as_layout(dy, x)
        c = mean.numel()
        dx = torch.empty_like(x)
        grads = torch.empty((2, c), device=x.device, dtype=torch.float32)
        n_splits = max(ctx.n_splits, 1)
        workspace = torch.empty(2 * n_splits * c + 3 * c, device=x.device, dtype=torch.float32)
        ext.backward(x, dy, dx, _f32(weight), mean, inv_std, grads[0], grads[1], workspace,
                     ctx.view, n_splits, ctx.training,
                     torch.cuda.current_stream(x.device).cuda_stream)
        gw = grads[0].to(weight.dtype) if weight is not None else None
        gb = grads[1].to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return dx, None, None, gw, gb, None, None, None


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
    """
    if not torch.cuda.is_available():
        load()  # raises the clear error
    from .triton_bn import _validate

    _validate(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if input.device.type != "cuda":
        raise ValueError(f"input must be on a CUDA device, got {input.device}")
    return CudaBatchNorm.apply(input, running_mean, running_var, weight, bias, bool(training),
                               float(momentum), float(eps))
