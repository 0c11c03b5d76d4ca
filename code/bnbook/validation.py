"""The one check of the ``torch.nn.functional.batch_norm`` contract, shared by every backend.

:func:`bnbook.functional.batch_norm`, the Triton kernels and the CUDA kernels all call
:func:`check_batch_norm_args` before they read or write anything, so the three accept the same
arguments and refuse the same ones with the same error. The rules are torch 2.13's (read from
``torch/nn/functional.py`` and observed on its CPU kernel); where torch has a message for a
fault, ours starts with the same words, so a search for torch's message finds ours.

Errors. A wrong value (shape, dtype, device, rank, eps, a missing running statistic, one value
per channel in training) raises :class:`BatchNormArgumentError`, which derives from both
``ValueError`` and ``RuntimeError``: torch raises a ``RuntimeError`` for some of these faults
(a wrong-size ``weight``, a device mismatch, a missing running statistic in eval) and a
``ValueError`` for others (``eps``, a single value per channel), so code written for torch
catches ours whichever it expects. A wrong Python type (``input`` not a Tensor, ``training``
not a bool, ``momentum=None``) raises ``TypeError``, as torch does.

Where we are deliberately stricter than torch (each would otherwise lose data silently or hide a
bug):

* ``weight``, ``bias``, ``running_mean`` and ``running_var`` must be 1-D of shape (C,). torch
  checks only the element count of ``weight`` and ``bias``, so a (C, 1) or (1, C) weight, often
  a transposed mistake, is accepted there.
* ``eps`` must be finite, and so must ``momentum`` when it updates running statistics. torch
  accepts ``eps=nan`` (every output becomes NaN) and ``momentum=nan`` or ``inf`` (the running
  statistics become NaN for good).
* An input of rank 0 or 1 is a :class:`BatchNormArgumentError` naming the expected shape; torch
  raises an ``IndexError`` (training) or a ``RuntimeError`` about ``running_mean`` (eval).
* An integer, complex or float8 input is a :class:`BatchNormArgumentError` (a ``RuntimeError``);
  torch raises ``NotImplementedError``, itself a subclass of ``RuntimeError``.

What torch accepts and so do we: ``momentum`` outside [0, 1] (an extrapolating average is a
legitimate choice), ``momentum`` or ``eps`` given as a 0-dim tensor or a bool, ``eps=0`` outside
training, an empty input of any rank >= 2 (N = 0, a zero-size spatial dim, or C = 0: the output is
empty and the running statistics are left as they are), float16/bfloat16 inputs with float32
parameters and statistics.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BatchNormArgumentError",
    "FLOAT_DTYPES",
    "check_batch_norm_args",
    "is_transform_wrapped",
]

# The dtypes torch's batch norm is implemented for (on CPU; CUDA adds nothing to this list).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# With an input in one of these, the per-channel tensors may all be float32 instead
# (torch's "mixed type": a half-precision activation with float32 parameters and statistics).
_MIXED_OK = (torch.float16, torch.bfloat16)


class BatchNormArgumentError(ValueError, RuntimeError):
    """A bad argument to batch norm: both a ``ValueError`` and a ``RuntimeError``.

    torch raises either class for these faults, so a caller's ``except RuntimeError`` or
    ``except ValueError`` written for torch catches this one too.
    """


def is_transform_wrapped(t: Any) -> bool:
    """Whether ``t`` is a torch.func wrapper (vmap's batched tensor, grad's tracking tensor).

    Such a tensor has no storage of its own, and an in-place op on it, or on a plain tensor
    with it as the other operand, can fail; backends check before taking either shortcut.
    """
    if not isinstance(t, Tensor) or torch.compiler.is_compiling():
        # While torch.compile or torch.export traces, tensors are the tracer's own, which the
        # checks below cannot see through (Dynamo warns and breaks its graph on them).
        return False
    functorch = getattr(torch._C, "_functorch", None)  # torch's own checks; no public one yet
    for name in ("is_functorch_wrapped_tensor", "is_legacy_batchedtensor"):
        check = getattr(functorch, name, None)
        if check is not None and check(t):
            return True
    return False


def _check_scalar(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a real number or a 0-dim real tensor."""
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.is_complex():
            raise TypeError(
                f"{name} must be a float (or a 0-dim real tensor), "
                f"got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        return float(value)
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    return float(value)


def _check_channel_tensor(
    name: str, t: Any, input: Tensor, num_channels: int
) -> None:
    """Type, device, shape and dtype of one per-channel tensor (None is checked elsewhere)."""
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    # The device first: on a mismatch torch says "not on the expected device", before any kernel
    # (and so before any in-place update of the running statistics) runs.
    if t.device != input.device:
        raise BatchNormArgumentError(
            f"Tensor on device {t.device} is not on the expected device {input.device}: "
            f"{name} must be on input's device"
        )
    if t.dim() != 1 or t.shape[0] != num_channels:
        raise BatchNormArgumentError(
            f"{name} should contain {num_channels} elements, one per channel of input "
            f"(input.shape[1]), as a 1-D tensor of shape ({num_channels},); "
            f"got shape {tuple(t.shape)}"
        )


def _check_dtypes(input: Tensor, named: list[tuple[str, Tensor]]) -> None:
    """Per-channel tensors in input's dtype, or all float32 for a float16/bfloat16 input."""
    for name, t in named:
        if not t.is_floating_point():
            raise BatchNormArgumentError(
                f"{name} must have a floating-point dtype ({input.dtype}, input's), got {t.dtype}"
            )
    dtypes = {t.dtype for _, t in named}
    if dtypes <= {input.dtype}:
        return
    if input.dtype in _MIXED_OK and dtypes == {torch.float32}:
        return
    found = ", ".join(f"{name}={t.dtype}" for name, t in named)
    allowed = f"{input.dtype}" + (
        " (or float32 for all of them)" if input.dtype in _MIXED_OK else ""
    )
    raise BatchNormArgumentError(
        f"mixed dtype: expected weight, bias, running_mean and running_var in input's dtype "
        f"{allowed}; got {found}"
    )


def check_batch_norm_args(
    input: Any,
    running_mean: Any,
    running_var: Any,
    weight: Any = None,
    bias: Any = None,
    training: Any = False,
    momentum: Any = 0.1,
    eps: Any = 1e-5,
    *,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
) -> int:
    """Check the arguments of a ``torch.nn.functional.batch_norm`` call; touch nothing.

    Call it first, before anything is read or written: it is what guarantees that a rejected call
    leaves ``running_mean``/``running_var`` as they were.

    Args:
        input: (N, C) or (N, C, *spatial), in one of ``dtypes``; may be empty.
        running_mean: (C,) or None; required (with ``running_var``) when not training.
        running_var: (C,) or None; given together with ``running_mean``.
        weight: (C,) or None.
        bias: (C,) or None.
        training: a bool: use (and update) the batch statistics.
        momentum: a real number, any sign or size (as torch); finite when it updates running
            statistics.
        eps: a finite real number, > 0 in training, >= 0 otherwise.
        dtypes: the input dtypes the calling backend implements (the Triton backend passes
            float16, bfloat16 and float32); the default is torch's four.

    Returns:
        C, the number of channels (``input.shape[1]``).

    Raises:
        TypeError: ``input`` or a per-channel argument is not a Tensor (None allowed for
            those), ``training`` is not a bool, ``momentum``/``eps`` are not real numbers.
        BatchNormArgumentError: any wrong value; see the module docstring.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise BatchNormArgumentError(
            f"input must have shape (N, C) or (N, C, *spatial), at least 2 dims, "
            f"got {input.dim()}-D input of shape {tuple(input.shape)}"
        )
    if input.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise BatchNormArgumentError(
            f"input must have dtype {names}; got {input.dtype}"
        )
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    momentum_f = _check_scalar("momentum", momentum)
    eps_f = _check_scalar("eps", eps)
    num_channels = input.shape[1]

    named = []
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_channel_tensor(name, t, input, num_channels)
        if t is not None:
            named.append((name, t))
    _check_dtypes(input, named)

    if not training:
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is None:
                raise BatchNormArgumentError(
                    f"{name} must be defined in evaluation mode (training=False): the running "
                    "statistics are what the input is normalised with"
                )
    elif (running_mean is None) != (running_var is None):
        raise BatchNormArgumentError(
            "running_mean and running_var must either both be None or neither be None, got "
            f"running_mean={'None' if running_mean is None else 'a Tensor'} and "
            f"running_var={'None' if running_var is None else 'a Tensor'}"
        )

    # Values per channel, computed as torch does (it holds when C = 0 too).
    values_per_channel = math.prod(input.shape[:1] + input.shape[2:])
    if training and values_per_channel == 1:
        # The biased variance of one value is 0 and the unbiased one divides by m - 1 = 0.
        raise BatchNormArgumentError(
            "Expected more than 1 value per channel when training, "
            f"got input size {input.size()}"
        )
    if not math.isfinite(eps_f):
        raise BatchNormArgumentError(f"batch_norm eps must be finite, but got {eps_f}")
    if training and eps_f <= 0.0:
        raise BatchNormArgumentError(
            f"batch_norm eps must be positive during training, but got {eps_f}"
        )
    if eps_f < 0.0:
        raise BatchNormArgumentError(f"batch_norm eps must be non-negative, but got {eps_f}")
    if training and running_mean is not None and not math.isfinite(momentum_f):
        raise BatchNormArgumentError(
            f"momentum must be finite, but got {momentum_f}: it would make running_mean "
            "and running_var NaN for good"
        )
    return num_channels
