"""GPU kernels for Batch Normalization: Triton (``triton_bn``) and CUDA C++ (``cuda``).

Nothing here imports triton until a kernel is first used, so ``import bnbook`` works on a
machine without triton. On a machine without a CUDA device, the first use sets the environment
variable ``TRITON_INTERPRET=1`` (unless it is already set) *before* triton is imported: triton
then runs every kernel in its interpreter, on CPU tensors, one program after another. That is
how the tests and the chapter run these kernels on the CPU; it is slow, so keep shapes small.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers only: importing triton_bn imports triton
    import torch

__all__ = ["batch_norm", "batch_norm_cuda", "configure_interpreter"]

# Triton 3.9 warns that its default for fusing a*b+c into one FMA changes in 3.10. The kernels
# were written and tested with fusion on; say so, so every later triton behaves the same.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def configure_interpreter() -> bool:
    """Set ``TRITON_INTERPRET=1`` on a machine without CUDA, unless the variable is already set.

    It must run before triton is first imported, anywhere in the process: triton decides at
    import (and at each ``@triton.jit``) whether functions are compiled or interpreted. The
    kernels call it themselves; call it yourself if you import triton before using them.

    Returns:
        True if triton will interpret kernels in this process.

    Raises:
        RuntimeError: triton was already imported, uninterpreted, on a machine without CUDA.
    """
    import torch

    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        if "triton" in sys.modules:
            raise RuntimeError("triton was imported before bnbook.kernels on a machine without "
                               "CUDA; set TRITON_INTERPRET=1 before importing triton")
        os.environ["TRITON_INTERPRET"] = "1"
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    **options: Any,
) -> torch.Tensor:
    """Batch Normalization with Triton kernels; the contract of ``torch.nn.functional.batch_norm``.

    Args:
        input: (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W); float32, float16 or bfloat16.
        running_mean: (C,) running mean, updated in place when training; may be None.
        running_var: (C,) running (unbiased) variance, updated in place when training.
        weight: (C,) scale (gamma) or None.
        bias: (C,) shift (beta) or None.
        training: use batch statistics (and update the running ones) if True.
        momentum: weight of the new batch in the running-statistics update.
        eps: added to the variance before the square root.
        **options: ``path`` ("auto", "fused", "split") and ``max_tile`` (elements per tile), to
            choose a kernel strategy explicitly (the tests use them to cover every path).

    Returns:
        The normalized tensor, same shape, dtype and memory format as ``input``.
    """
    from . import triton_bn  # lazily: this is where triton is imported

    return triton_bn.batch_norm(
        input, running_mean, running_var, weight, bias, training, momentum, eps, **options
    )


def batch_norm_cuda(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The CUDA C++ kernels, same contract as :func:`batch_norm`; see ``bnbook.kernels.cuda``.

    Args:
        *args: as for :func:`batch_norm`.
        **kwargs: as for :func:`batch_norm`.

    Returns:
        The normalized tensor.
    """
    from . import cuda

    return cuda.batch_norm_cuda(*args, **kwargs)
