"""``BatchNorm1d/2d/3d`` whose arithmetic is written from scratch, as torch's own layer classes.

Design. Each class here *is* a torch batch-norm layer: ``bnbook.modules.BatchNorm2d`` subclasses
``torch.nn.BatchNorm2d`` (and so ``torch.nn.modules.batchnorm._BatchNorm``), keeps torch's state
code (parameters, buffers, ``reset_running_stats``, ``extra_repr``, loading checkpoints that
predate ``num_batches_tracked``) and replaces only ``forward``, whose arithmetic is
:func:`bnbook.functional.batch_norm`, forward and backward written by hand. Subclassing rather
than a look-alike class is what makes torch's own tools see our layers: a tool that asks
``isinstance(m, _BatchNorm)`` or ``isinstance(m, nn.BatchNorm2d)`` gets True. The layout follows
``torch/nn/modules/batchnorm.py`` so the two read side by side: :class:`_NormBase` (the state, here
only argument checks on top of torch's), :class:`_BatchNorm` (which statistics, which averaging
factor, then the functional) and the three public classes.

How torch's tools treat these layers (each is pinned by ``tests/test_interop.py``, or
``tests/test_distributed.py`` for DDP):

* ``torch.nn.parallel.DistributedDataParallel``: as torch's layers, each rank normalises with
  its own shard and rank 0's running statistics are broadcast before every forward.
* ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: converts them, state included, into torch's
  ``SyncBatchNorm`` (whose arithmetic is then torch's).
* ``torch.optim.swa_utils.update_bn``: recomputes their running statistics, as for torch's.
* ``torch.func.replace_all_batch_norm_modules_`` and ``functional_call`` + ``vmap(grad(...))``
  (per-sample gradients): work as with torch's layers, and fail where torch's fail (training with
  tracked running statistics under ``vmap``).
* ``torch.fx.symbolic_trace``: traces them. torch's layers are leaf modules of the trace; ours
  are traced through, so the graph holds two calls, kept whole by ``torch.fx.wrap``: the input
  check and one step of :func:`bnbook.functional.batch_norm` (with the batch count), buffers and
  parameters as graph inputs. Like any traced Python ``if``, the graph keeps the
  ``self.training`` branch taken at trace time: trace in the mode you will run it in.
* ``torch.ao.quantization.fuse_modules``: picks its fuser by exact type, so it does not know our
  classes; :func:`to_torch` turns them into torch's (same state) first. :func:`from_torch` goes
  the other way.
* ``torch.fx.experimental.optimization.fuse``: matches modules by exact type, so it leaves our
  layers unfused (the model still computes the same); :func:`to_torch` first to fold them.
  ``torch.nn.utils.fusion.fuse_conv_bn_eval`` folds ours as it is.
* ``torch.compile``: runs a model holding them, with the same results as torch's layers.
  Dynamo compiles the code around the layer and breaks its graph inside it (the layer's
  autograd Function defines a custom ``jvp``, which Dynamo cannot trace), so that part runs
  eagerly, and ``fullgraph=True`` therefore fails. :func:`to_torch` gives torch's layers, which
  compile whole.
* ``torch.export``: exports them, in training and in eval (non-strict, its default; with
  ``strict=True`` it traces with Dynamo and fails as ``fullgraph=True`` does). The program
  holds our arithmetic as plain aten ops (the means, the squared error, rsqrt, the fused
  multiply-adds; no batch norm op) and updates the running statistics as torch's exported
  layer does. While a tracer runs, :func:`bnbook.functional.batch_norm` takes the out-of-place
  form it uses under torch.func.
* ``torch.autocast`` (CPU, bfloat16 or float16): the output has torch's dtype and values.
* ``torch.utils.checkpoint``: recomputes them as torch's, the running statistics updated twice
  (once per forward), as torch's are.
* ``torch.jit.script`` (deprecated in torch 2.13) refuses them: TorchScript cannot compile a
  Python ``autograd.Function``. Use ``torch.fx``, or :func:`to_torch` before scripting.

What remains different from ``torch.nn``, on purpose:

* The numbers: the same formulas, evaluated by :mod:`bnbook.functional` (rounding-level
  differences; torch's native kernel is faster).
* Bad input: a channel count other than ``num_features`` is refused even when the layer has no
  per-channel tensor (torch normalises any channel count then), with a
  :class:`bnbook.validation.BatchNormArgumentError`, a ``RuntimeError`` as torch's error is and a
  ``ValueError``. A rejected batch leaves the state as it was: torch has already incremented
  ``num_batches_tracked`` when it rejects a single value per channel in training.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import batchnorm as _torch_bn

from bnbook.functional import batch_norm
from bnbook.validation import BatchNormArgumentError

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "from_torch", "to_torch"]


def _check_input(input: Tensor, dims: tuple[int, ...], num_features: int) -> None:
    """The layer's own checks: the rank it accepts (torch's message) and C == num_features."""
    if input.dim() not in dims:
        expected = " or ".join(f"{d}D" for d in dims)
        raise ValueError(f"expected {expected} input (got {input.dim()}D input)")
    if input.shape[1] != num_features:
        raise BatchNormArgumentError(
            f"expected input with num_features={num_features} channels in dim 1, "
            f"got input of shape {tuple(input.shape)}"
        )


def _batch_norm_step(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_batch_stats: bool,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Tensor | None,
) -> Tensor:
    """One call of the functional, counting the batch in ``num_batches_tracked`` if given.

    momentum=None means a cumulative average: batch k (counted) gets weight 1/k. The batch is
    counted first, as torch counts it (under torch.func a captured counter then fails before
    anything changed), and the count is taken back if the functional rejects the batch.
    """
    if num_batches_tracked is None:
        factor = 0.0 if momentum is None else momentum
        return batch_norm(
            input, running_mean, running_var, weight, bias, use_batch_stats, factor, eps
        )
    num_batches_tracked.add_(1)
    factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
    try:
        return batch_norm(
            input, running_mean, running_var, weight, bias, use_batch_stats, factor, eps
        )
    except (ValueError, RuntimeError, TypeError):
        num_batches_tracked.sub_(1)
        raise


# torch.fx records calls of these two functions instead of tracing into them: a traced graph
# checks its input and counts its batches at run time, with the buffers as graph inputs.
torch.fx.wrap("_check_input")
torch.fx.wrap("_batch_norm_step")


class _NormBase(_torch_bn._NormBase):
    """torch's batch-norm state, with the constructor's arguments checked.

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
        # torch accepts num_features=True or 2.5 here and fails later, or never.
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
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )


class _BatchNorm(_NormBase, _torch_bn._BatchNorm):
    """Batch normalisation over dim 1; the subclasses only fix which ranks are accepted."""

    _input_dims: tuple[int, ...] = ()

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` per channel (see :func:`bnbook.functional.batch_norm`).

        Args:
            input: shape (N, C, *spatial) with C == num_features and a rank the class accepts.

        Returns:
            The normalised tensor, shaped like ``input``.
        """
        _check_input(input, self._input_dims, self.num_features)
        counting = (
            self.training and self.track_running_stats and self.num_batches_tracked is not None
        )
        # Batch statistics in training, and in eval when no running statistics are kept.
        use_batch_stats = self.training or (
            self.running_mean is None and self.running_var is None
        )
        # Running statistics are passed when they are to be updated (training and tracked) or
        # used (eval); in training without tracking they must stay untouched.
        track = not self.training or self.track_running_stats
        return _batch_norm_step(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            self.momentum,
            self.eps,
            self.num_batches_tracked if counting else None,
        )


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """Batch normalisation of (N, C) or (N, C, L) input, statistics per channel C.

    A ``torch.nn.BatchNorm1d`` (same arguments, parameters, buffers, state_dict keys and repr)
    whose forward is :func:`bnbook.functional.batch_norm`.
    """

    _input_dims = (2, 3)


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """Batch normalisation of (N, C, H, W) input, statistics per channel C.

    A ``torch.nn.BatchNorm2d`` (same arguments, parameters, buffers, state_dict keys and repr)
    whose forward is :func:`bnbook.functional.batch_norm`.
    """

    _input_dims = (4,)


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """Batch normalisation of (N, C, D, H, W) input, statistics per channel C.

    A ``torch.nn.BatchNorm3d`` (same arguments, parameters, buffers, state_dict keys and repr)
    whose forward is :func:`bnbook.functional.batch_norm`.
    """

    _input_dims = (5,)


# torch's class -> ours, and back. Only the three plain classes: SyncBatchNorm and the lazy
# variants have no counterpart here.
_OURS = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d}
_TORCHS = {ours: theirs for theirs, ours in _OURS.items()}


def _convert(module: nn.Module, mapping: dict[type, type]) -> nn.Module:
    """Replace every module whose exact type is a key of ``mapping`` by the mapped class, with
    the same arguments, parameters (the same Parameter objects), buffers, mode and hooks-free
    state; recurse into children. Returns the replacement of ``module`` (itself if unmapped)."""
    output = module
    target = mapping.get(type(module))
    if target is not None:
        output = target(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            bias=module.bias is not None,
            device="meta",  # no storage: every tensor is replaced by the module's own below
        )
        for name, param in module.named_parameters(recurse=False):
            setattr(output, name, param)
        for name, buf in module.named_buffers(recurse=False):
            setattr(output, name, buf)
        output.train(module.training)
    for name, child in module.named_children():
        output.add_module(name, _convert(child, mapping))
    return output


def from_torch(module: nn.Module) -> nn.Module:
    """Swap every ``torch.nn.BatchNorm1d/2d/3d`` in ``module`` for ours, sharing its state.

    Args:
        module: a layer or a model; changed in place below the top level.

    Returns:
        ``module`` with its batch-norm layers replaced (a new object if ``module`` itself is one).
        Parameters and buffers are the same tensor objects, so an optimizer keeps working.
    """
    return _convert(module, _OURS)


def to_torch(module: nn.Module) -> nn.Module:
    """Swap every bnbook batch-norm layer in ``module`` for torch's own class, sharing its state.

    For tools that look layers up by exact type, such as
    ``torch.ao.quantization.fuse_modules``, or to run torch's native kernel.

    Args:
        module: a layer or a model; changed in place below the top level.

    Returns:
        ``module`` with its batch-norm layers replaced (a new object if ``module`` itself is one).
    """
    return _convert(module, _TORCHS)
