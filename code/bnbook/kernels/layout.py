"""The (B, C, S) view both kernel backends share; torch only, so the CUDA backend needs no triton.

Every layout BN meets is seen as a strided (B, C, S) array: NCHW-contiguous is (N, C, H*W) with S
contiguous ("S-inner"); channels_last and (N, C) are (1, C, N*H*W) with C contiguous
("C-inner"). A kernel then walks one pattern of addresses whatever the input's rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Geometry", "as_layout", "dense", "geometry"]


@dataclass(frozen=True)
class Geometry:
    """A tensor seen as a strided (B, C, S) array; strides in elements."""

    B: int
    C: int
    S: int
    sb: int
    sc: int
    ss: int

    @property
    def per_channel(self) -> int:
        """Elements per channel, B * S."""
        return self.B * self.S


def geometry(x: torch.Tensor) -> Geometry | None:
    """The (B, C, S) view of ``x``, or None when its strides fit neither layout.

    Args:
        x: a tensor of at least 2 dimensions, (N, C, *spatial).

    Returns:
        NCHW-contiguous: (N, C, prod(spatial)) with S contiguous. Channels-last or (N, C):
        (1, C, N * prod(spatial)) with C contiguous. None otherwise (copy with .contiguous()).
    """
    n, c = x.shape[0], x.shape[1]
    s = math.prod(x.shape[2:])
    if x.is_contiguous() and s > 1:
        return Geometry(n, c, s, c * s, s, 1)
    channels_last = x.permute(0, *range(2, x.dim()), 1)  # (N, *spatial, C)
    if channels_last.is_contiguous():  # also (N, C) contiguous
        return Geometry(1, c, n * s, 0, 1, c)
    return None


def dense(x: torch.Tensor) -> tuple[torch.Tensor, Geometry]:
    """``x`` (copied to NCHW-contiguous only if its strides fit neither layout) and its view.

    Args:
        x: a non-empty tensor of at least 2 dimensions.

    Returns:
        (x or a contiguous copy of it, its Geometry).
    """
    g = geometry(x)
    if g is None:  # e.g. a transposed or sliced input: one copy, then the NCHW kernels
        x = x.contiguous()
        g = geometry(x)
        assert g is not None
    return x, g


def as_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with the same strides as ``like`` (gradients may arrive in another layout).

    Args:
        t: a tensor of ``like``'s shape.
        like: the tensor whose strides the kernels were planned for.

    Returns:
        ``t`` itself when the strides already match, else a copy with ``like``'s strides.
    """
    if t.stride() == like.stride():
        return t
    return torch.empty_like(like).copy_(t)
