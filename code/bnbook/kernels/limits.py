"""What the kernel backends' autograd cannot do, refused loudly instead of answered wrongly.

The Triton and CUDA backwards are kernels: their outputs carry no autograd graph. Used under
``create_graph=True`` (a gradient penalty, a Hessian-vector product,
``torch.autograd.functional.hessian``), a plain kernel backward would hand back gradients that
look constant, and every second-order term through BN would silently be zero. So when a graph is
being built, :func:`first_order_only` ties the kernel's gradients to the tensors they depend on
(input, weight, upstream gradient) through :class:`FirstOrderOnly`, whose own backward raises.
First-order use with ``create_graph=True`` still works; only differentiating *through* the BN
gradient fails, with a message that names the way out (``bnbook.functional.batch_norm``, whose
hand-written backward is built from differentiable torch operations).
"""

from __future__ import annotations

from typing import Any

import torch

from bnbook.validation import is_transform_wrapped

__all__ = ["FirstOrderOnly", "check_plain", "first_order_only", "refuse"]

_ALTERNATIVE = ("use bnbook.functional.batch_norm (or torch.nn.functional.batch_norm), whose "
                "backward is differentiable")


def refuse(backend: str, what: str) -> NotImplementedError:
    """The error for a transform a backend does not support.

    Args:
        backend: e.g. "bnbook.kernels.triton_bn".
        what: the transform, e.g. "forward-mode AD (jvp)".

    Returns:
        A NotImplementedError to raise.
    """
    return NotImplementedError(f"{backend} does not support {what}: its gradients are computed "
                               f"by a first-order kernel; {_ALTERNATIVE}")


def check_plain(backend: str, *tensors: Any) -> None:
    """Refuse tensors wrapped by a torch.func transform: a kernel cannot read their storage.

    ``torch.func.grad``/``vjp`` and ``autograd.grad(..., is_grads_batched=True)`` hand the
    backward such wrappers; without this check they fail inside the launch with "Cannot access
    storage of TensorWrapper" or a missing batching rule.

    Args:
        backend: the backend's name, for the message.
        *tensors: the tensors a kernel is about to read (None entries are skipped).

    Raises:
        NotImplementedError: one of them is wrapped.
    """
    if any(is_transform_wrapped(t) for t in tensors):
        raise refuse(backend, "torch.func transforms (grad, vjp, vmap, jvp) or "
                              "autograd.grad(..., is_grads_batched=True)")


class FirstOrderOnly(torch.autograd.Function):
    """Identity on the gradients a kernel computed; differentiating its outputs raises."""

    @staticmethod
    def forward(ctx: Any, message: str, n_grads: int, *tensors: torch.Tensor) -> Any:  # type: ignore[override]
        ctx.message = message
        # Clones, not the tensors themselves: an input returned unchanged would bypass the node.
        return tuple(t.clone() for t in tensors[:n_grads])

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # type: ignore[override]
        raise RuntimeError(ctx.message)


def first_order_only(
    backend: str, grads: tuple[torch.Tensor | None, ...], depends_on: tuple[Any, ...],
) -> tuple[torch.Tensor | None, ...]:
    """Return ``grads``; when a graph is being built, make differentiating them raise.

    Args:
        backend: the backend's name, for the message.
        grads: the gradients the kernel computed (None where not needed).
        depends_on: the tensors the gradients are functions of (input, weight, upstream
            gradient); None entries are skipped.

    Returns:
        ``grads`` unchanged outside ``create_graph=True`` (or when nothing they depend on
        requires grad); otherwise copies whose backward raises a RuntimeError.
    """
    live = [t for t in depends_on if isinstance(t, torch.Tensor) and t.requires_grad]
    if not torch.is_grad_enabled() or not live:
        return grads
    present = [g for g in grads if g is not None]
    message = (f"{backend} has a first-order backward only: differentiating its gradient "
               f"(double backward, create_graph=True then grad of grad, a Hessian) would "
               f"silently drop BN's second-order terms, so it is refused; {_ALTERNATIVE}")
    wrapped = iter(FirstOrderOnly.apply(message, len(present), *present, *live))
    return tuple(None if g is None else next(wrapped) for g in grads)
