"""``BatchNorm1d/2d/3d`` from scratch, drop-in replacements for ``torch.nn``'s.

The structure follows ``torch/nn/modules/batchnorm.py`` so the two can be read side by side:
:class:`_NormBase` owns the state (parameters, buffers, resetting, repr, loading old
checkpoints), :class:`_BatchNorm` decides per call which statistics to use and how to average
them and hands the arithmetic to :func:`bnbook.functional.batch_norm`, and the three public
classes only say which input ranks they accept. Parameter and buffer names are torch's, so a
``state_dict`` moves between these layers and ``torch.nn.BatchNormXd`` in both directions.

Two deliberate differences, both about bad input. A channel count other than ``num_features``
is a ValueError naming ``num_features`` (torch raises a RuntimeError about ``running_mean``, or
nothing at all when the layer has neither parameters nor buffers). And every rejected batch
leaves the state as it was, where torch has already incremented ``num_batches_tracked`` when it
rejects a wrong channel count or a single value per channel in training.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from bnbook import functional as bnF

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _NormBase(Module):
    """State shared by the batch-norm layers: affine parameters and running statistics.

    Args:
        num_features: C, the number of channels (dim 1 of the input).
        eps: added to the variance before the square root.
        momentum: weight of each new batch in the running averages; None for a cumulative
            (equal-weight) average over all batches seen.
        affine: learn a per-channel ``weight`` (gamma) and ``bias`` (beta).
        track_running_stats: keep ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` as buffers; without them eval mode uses batch statistics.
        device: device of the parameters and buffers.
        dtype: dtype of the floating-point parameters and buffers.
        bias: with ``affine``, also learn ``bias`` (keyword-only, as in torch).
    """

    # Version 2 added num_batches_tracked; loading a state_dict of an older version fills it.
    _version = 2
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool):
            raise TypeError("num_features must be an int, got bool")
        try:
            num_features = operator.index(num_features)  # int, or an integer like np.int64
        except TypeError:
            raise TypeError(
                f"num_features must be an int, got {type(num_features).__name__}"
            ) from None
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        # Absent tensors are registered as None so the attribute exists and the state_dict keys
        # match torch's exactly.
        if affine:
            self.weight = Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            # A counter, not a statistic: it stays int64 whatever dtype the layer has.
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Forget the running statistics: mean 0, variance 1, no batches seen."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics and make the affine part the identity."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        # Checkpoints written before version 2 have no counter. As torch does, keep the layer's
        # own count (0 for a fresh layer) rather than failing a strict load.
        if (version is None or version < 2) and self.track_running_stats:
            if key not in state_dict:
                own = self.num_batches_tracked
                usable = own is not None and own.device != torch.device("meta")
                state_dict[key] = own if usable else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _BatchNorm(_NormBase):
    """Batch normalisation over dim 1; the subclasses only fix which ranks are accepted."""

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` per channel (see :func:`bnbook.functional.batch_norm`).

        Args:
            input: shape (N, C, *spatial) with C == num_features.

        Returns:
            The normalised tensor, shaped like ``input``.
        """
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"expected input with num_features={self.num_features} channels in dim 1, "
                f"got input of shape {tuple(input.shape)}"
            )
        # momentum=None means a cumulative average: batch k gets weight 1/k. The counter is
        # advanced only after bnF.batch_norm has accepted the batch (it validates everything
        # before touching the running statistics), so a rejected batch leaves no trace.
        counting = (
            self.training and self.track_running_stats and self.num_batches_tracked is not None
        )
        averaging_factor = 0.0 if self.momentum is None else self.momentum
        if counting and self.momentum is None:
            averaging_factor = 1.0 / float(self.num_batches_tracked + 1)

        # Batch statistics in training, and in eval when no running statistics are kept.
        use_batch_stats = self.training or (
            self.running_mean is None and self.running_var is None
        )
        # Running statistics are passed when they are to be updated (training and tracked) or
        # used (eval); in training without tracking they must stay untouched.
        track = not self.training or self.track_running_stats
        output = bnF.batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            averaging_factor,
            self.eps,
        )
        if counting:
            self.num_batches_tracked.add_(1)
        return output


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input, statistics per channel C.

    Same arguments, parameters, buffers and state_dict keys as ``torch.nn.BatchNorm1d``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input, statistics per channel C.

    Same arguments, parameters, buffers and state_dict keys as ``torch.nn.BatchNorm2d``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(_BatchNorm):
    """Batch normalisation of (N, C, D, H, W) input, statistics per channel C.

    Same arguments, parameters, buffers and state_dict keys as ``torch.nn.BatchNorm3d``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")
