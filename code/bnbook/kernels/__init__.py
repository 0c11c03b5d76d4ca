"""GPU kernels for Batch Normalization: Triton (``triton_bn``) and CUDA C++ (``cuda``).

Importing this package imports neither triton nor the CUDA extension, and it changes no
environment variable: ``import bnbook.kernels`` leaves ``os.environ`` exactly as it was.

Where the Triton kernels run is decided when ``bnbook.kernels.triton_bn`` is first imported
(see :func:`interpreting`): natively on a CUDA device, or, on a machine without one, in triton's
interpreter on CPU tensors (slow; keep shapes small). That choice is made per kernel; the one
exception is triton's own library functions, which triton builds when it is imported: if
bnbook imports triton first on a machine without CUDA, it sets ``TRITON_INTERPRET=1`` for the
duration of that import, and of each launch of its interpreted kernels, and puts it back
afterwards (:func:`interpreter_env`). To run *every* triton kernel in the process
interpreted, ask for it explicitly with :func:`configure_interpreter` before triton's first
import, or set ``TRITON_INTERPRET=1`` yourself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers only: importing triton_bn imports triton
    import torch

__all__ = ["batch_norm", "batch_norm_cuda", "configure_interpreter", "interpreting"]

_FALSE = ("", "0", "false", "off", "no")


def interpreting() -> bool:
    """Whether bnbook's Triton kernels run in triton's interpreter in this process.

    An explicit ``TRITON_INTERPRET`` in the environment wins (``1`` interprets, ``0`` compiles,
    as in triton itself); without one, the kernels are interpreted exactly when torch sees no
    CUDA device. Nothing is written to the environment.

    Returns:
        True if the kernels will be (or were) built as interpreted functions.
    """
    value = os.environ.get("TRITON_INTERPRET")
    if value is not None:
        return value.strip().lower() not in _FALSE
    import torch

    return not torch.cuda.is_available()


def configure_interpreter() -> bool:
    """Opt in: set ``TRITON_INTERPRET=1`` for the whole process on a machine without CUDA.

    Only for code that runs triton kernels of its own on the CPU: bnbook's kernels do not need
    it (see :func:`interpreting`). It must run before triton is first imported, anywhere in the
    process, because triton reads the variable when each ``@triton.jit`` function is defined.
    An existing ``TRITON_INTERPRET`` is left as it is.

    Returns:
        True if triton will interpret kernels in this process.

    Raises:
        RuntimeError: triton was already imported, uninterpreted, on a machine without CUDA.
    """
    import torch

    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        if "triton" in sys.modules:
            raise RuntimeError("triton was imported before configure_interpreter() on a machine "
                               "without CUDA; set TRITON_INTERPRET=1 before importing triton")
        os.environ["TRITON_INTERPRET"] = "1"
    return interpreting()


@contextlib.contextmanager
def interpreter_env(active: bool) -> Iterator[None]:
    """Within the block, ``TRITON_INTERPRET=1`` if ``active``; afterwards, as it was.

    triton consults the variable not only when a kernel is defined but also when it imports some
    of its own modules lazily during a launch; bnbook therefore sets it around its own imports
    and launches of interpreted kernels, and never leaves it set.

    Args:
        active: whether to set the variable (False: a no-op).
    """
    saved = os.environ.get("TRITON_INTERPRET")
    if active:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if active:
            if saved is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = saved


def import_triton(interpret: bool) -> Any:
    """Import triton so that its own library functions can be interpreted if ``interpret``.

    triton builds its library functions (``tl.zeros``, ``tl.sum``, ...) at import, compiled or
    interpreted as ``TRITON_INTERPRET`` says at that moment; the import runs inside
    :func:`interpreter_env`, so the environment is unchanged afterwards.

    Args:
        interpret: whether bnbook's kernels will be interpreted (:func:`interpreting`).

    Returns:
        The triton module.

    Raises:
        RuntimeError: ``interpret`` is set but triton was already imported uninterpreted, so its
            library functions cannot run in the interpreter.
    """
    with interpreter_env(interpret and "triton" not in sys.modules):
        import triton
        import triton.language
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(triton.language.standard.zeros, InterpretedFunction):
            raise RuntimeError(
                "bnbook's Triton kernels must run in triton's interpreter here (no CUDA device), "
                "but triton was imported earlier without it; import bnbook.kernels.triton_bn "
                "before triton, or set TRITON_INTERPRET=1 before importing triton")
    return triton


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
