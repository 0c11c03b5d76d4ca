"""The alternatives to Batch Normalization as modules, drop-in for ``torch.nn``'s.

``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d/2d/3d`` and ``RMSNorm`` take torch's constructor
arguments with torch's defaults, register torch's parameter and buffer names and print torch's
repr, so a ``state_dict`` moves between these layers and ``torch.nn``'s in both directions. Each
forward is one call of a functional form in :mod:`bnbook.normalization`, which is one call of
the shared core :class:`bnbook.normalization.Normalize` over different axes.

``BatchRenorm1d/2d/3d`` (Ioffe 2017), which torch does not have, take ``BatchNorm``'s arguments
plus ``r_max`` and ``d_max``, and keep BatchNorm's state (they subclass the book's
:class:`bnbook.modules._NormBase`), so a BatchNorm checkpoint loads into them and back.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from bnbook import normalization as nF
from bnbook.modules import _NormBase

__all__ = [
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "RMSNorm",
]


def _shape(normalized_shape: Any) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


def _affine_parameters(
    module: Module, shape: Any, affine: bool, bias: bool, factory: dict[str, Any]
) -> None:
    """Register ``weight`` (and ``bias`` unless ``bias=False``) of ``shape``, or both as None.

    Registered in torch's order, weight before bias, so ``state_dict`` keys line up.
    """
    if affine:
        module.weight = Parameter(torch.empty(shape, **factory))
    else:
        module.register_parameter("weight", None)
    if affine and bias:
        module.bias = Parameter(torch.empty(shape, **factory))
    else:
        module.register_parameter("bias", None)


def _reset_affine(module: Module) -> None:
    """The identity: weight 1, bias 0 (where they exist)."""
    if module.weight is not None:
        init.ones_(module.weight)
    if module.bias is not None:
        init.zeros_(module.bias)


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` (Ba et al. 2016).

    Same arguments, defaults, parameters (``weight``, ``bias`` of shape ``normalized_shape``)
    and repr as ``torch.nn.LayerNorm``. No buffers, and the same output in train and eval mode.
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...] | torch.Size,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _affine_parameters(self, self.normalized_shape, elementwise_affine, bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The identity: weight 1, bias 0."""
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        """Normalise each sample over its trailing ``normalized_shape`` dims."""
        return nF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )


class RMSNorm(Module):
    """RMSNorm (Zhang and Sennrich 2019): divide by the root mean square, scale; no centring.

    Same arguments, defaults (``eps=None``: see :func:`bnbook.normalization.rms_norm`), parameter
    (``weight`` only, no bias) and repr as ``torch.nn.RMSNorm``.
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...] | torch.Size,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight 1."""
        if self.elementwise_affine:
            init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Divide each sample by its RMS over the trailing ``normalized_shape`` dims."""
        return nF.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}"
        )


class GroupNorm(Module):
    """Group normalisation (Wu and He 2018): per sample, over groups of C/G channels.

    Same arguments, defaults, parameters (``weight``, ``bias`` of shape (C,)) and repr as
    ``torch.nn.GroupNorm``; a ``num_channels`` not divisible by ``num_groups`` is the same
    ValueError.
    """

    __constants__ = ["num_groups", "num_channels", "eps", "affine"]

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _affine_parameters(self, num_channels, affine, bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The identity: weight 1, bias 0."""
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        """Normalise each group of channels of each sample over channels and positions."""
        return nF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
            f"affine={self.affine}, bias={self.bias is not None}"
        )


class _InstanceNorm(_NormBase):
    """Instance normalisation: per sample and channel, over the positions.

    torch's defaults differ from BatchNorm's: ``affine=False, track_running_stats=False``. With
    tracking, the running statistics are updated in training (averaged over the batch's
    instances) and used in eval. Two torch behaviours kept for drop-in equality:
    ``num_batches_tracked`` is registered but never advanced, and ``momentum=None`` is read as
    0, which freezes the running statistics at their initial values.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def _get_no_batch_dim(self) -> int:
        raise NotImplementedError

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

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
        # As torch: a pre-0.4 checkpoint (no version) of an untracked layer may carry running
        # statistics; report them and drop them instead of failing on unexpected keys.
        if local_metadata.get("version", None) is None and not self.track_running_stats:
            keys = [prefix + n for n in ("running_mean", "running_var") if prefix + n in state_dict]
            if keys:
                error_msgs.append(
                    f"Unexpected running stats buffer(s) {' and '.join(keys)} for "
                    f"{type(self).__name__} with track_running_stats=False"
                )
                for key in keys:
                    state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: Tensor) -> Tensor:
        """Normalise every (sample, channel) over its positions; unbatched input is allowed."""
        self._check_input_dim(input)
        feature_dim = input.dim() - self._get_no_batch_dim()
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim={feature_dim} to match num_features"
                    f" ({self.num_features}), but got: {input.size(feature_dim)}."
                )
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. You can "
                "silence this warning by not passing in num_features, which is not used "
                "because affine=False",
                stacklevel=2,
            )
        unbatched = input.dim() == self._get_no_batch_dim()
        x = input.unsqueeze(0) if unbatched else input
        y = nF.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )
        return y.squeeze(0) if unbatched else y


class InstanceNorm1d(_InstanceNorm):
    """Instance normalisation of (N, C, L) or unbatched (C, L) input; as ``torch.nn``'s."""

    def _get_no_batch_dim(self) -> int:
        return 2

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class InstanceNorm2d(_InstanceNorm):
    """Instance normalisation of (N, C, H, W) or unbatched (C, H, W) input; as ``torch.nn``'s."""

    def _get_no_batch_dim(self) -> int:
        return 3

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (3, 4):
            raise ValueError(f"expected 3D or 4D input (got {input.dim()}D input)")


class InstanceNorm3d(_InstanceNorm):
    """Instance normalisation of (N, C, D, H, W) or unbatched (C, D, H, W); as ``torch.nn``'s."""

    def _get_no_batch_dim(self) -> int:
        return 4

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (4, 5):
            raise ValueError(f"expected 4D or 5D input (got {input.dim()}D input)")


class _BatchRenorm(_NormBase):
    """Batch Renormalization (Ioffe 2017): BatchNorm's state plus ``r_max`` and ``d_max``.

    In training the output is ``weight * (x_hat * r + d) + bias``, with x_hat the batch-normalised
    input and r, d (:func:`bnbook.normalization.renorm_correction`) the clipped corrections
    towards the running statistics, constants to the backward pass. ``r_max`` and ``d_max`` are
    plain attributes: the paper starts at 1 and 0 (plain BatchNorm) and raises them during
    training, which a training loop does by assigning them. In eval mode the layer is BatchNorm
    with running statistics. Running statistics are required (``track_running_stats=True``).

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype, bias: as
            ``torch.nn.BatchNorm2d``.
        r_max: >= 1; the paper's final value is 3.
        d_max: >= 0; the paper's final value is 5.
    """

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
        r_max: float = 3.0,
        d_max: float = 5.0,
    ) -> None:
        if not track_running_stats:
            raise ValueError(
                "track_running_stats must be True for Batch Renormalization: r and d compare "
                "each batch with the running statistics"
            )
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.r_max = float(r_max)
        self.d_max = float(d_max)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}"

    def forward(self, input: Tensor) -> Tensor:
        """Renormalise ``input`` per channel (see :func:`bnbook.normalization.batch_renorm`)."""
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"expected input with num_features={self.num_features} channels in dim 1, "
                f"got input of shape {tuple(input.shape)}"
            )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked + 1)  # cumulative average
        output = nF.batch_renorm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, factor, self.eps, self.r_max, self.d_max,
        )
        if self.training:
            self.num_batches_tracked.add_(1)
        return output


class BatchRenorm1d(_BatchRenorm):
    """Batch Renormalization of (N, C) or (N, C, L) input."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchRenorm2d(_BatchRenorm):
    """Batch Renormalization of (N, C, H, W) input."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchRenorm3d(_BatchRenorm):
    """Batch Renormalization of (N, C, D, H, W) input."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")

