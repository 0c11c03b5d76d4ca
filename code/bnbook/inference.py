"""Getting a network with batch norm ready for inference.

Four tools, one concern: a batch-norm layer computes a different function in training and in
eval mode, and the eval-mode function is only as good as the statistics it was handed.

* :func:`is_batch_norm` says which modules are batch-norm layers (torch's or the book's).
* :func:`eval_mode` runs a block in eval mode and then puts every submodule back exactly as it
  was, not into blanket training mode.
* :func:`recalibrate` replaces the running statistics, an exponential moving average that lags
  behind the weights, by exact averages over one pass of data through the final weights.
* :func:`fold_bn` and :func:`fold_model` fold an eval-mode batch-norm layer into the
  ``Linear`` or ``Conv`` layer before it, so that inference does not normalise at all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from bnbook.modules import _BatchNorm as _BookBatchNorm

__all__ = ["eval_mode", "fold_bn", "fold_model", "is_batch_norm", "recalibrate"]

M = TypeVar("M", bound=nn.Module)

# The layer types fold_bn accepts: their output channels are dim 0 of the weight.
_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a batch-norm layer.

    Args:
        module: any module.

    Returns:
        True for subclasses of torch's ``_BatchNorm`` (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``,
        the lazy variants) and of :class:`bnbook.modules._BatchNorm`; False otherwise, including
        for ``InstanceNorm`` (which shares torch's ``_NormBase`` but not ``_BatchNorm``).
    """
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, _BookBatchNorm))


@contextmanager
def eval_mode(model: M) -> Iterator[M]:
    """Run a block with ``model`` in eval mode, then restore every submodule's own mode.

    ``model.train()`` on exit would be wrong for a model that was not entirely in training
    mode: one evaluated on purpose, or one with frozen batch-norm layers kept in eval mode while
    the rest trains. This records each submodule's ``training`` flag on entry and writes it back
    on exit, also when the block raises.

    Args:
        model: the module to put in eval mode.

    Returns:
        A context manager that yields ``model`` itself.

    Example::

        with eval_mode(model):
            logits = model(x)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag  # the flag alone: m.train(flag) would recurse into children


def _default_forward(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on a batch, or on its first element if it is a tuple or list."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    return model(batch)


def _named_batch_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name or "<model>", m) for name, m in model.named_modules() if is_batch_norm(m)]


def recalibrate(
    model: M,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> M:
    """Re-estimate every batch-norm layer's running statistics with one pass over ``batches``.

    Each layer's statistics are reset and its ``momentum`` set to None, PyTorch's cumulative
    average: after the pass, ``running_mean`` is the plain average of the per-batch means and
    ``running_var`` the plain average of the per-batch *unbiased* variances, every batch weighted
    equally whatever its size. (For equal-size batches the first is the mean of all the data;
    the second is not the variance of all the data, which also counts the spread between batch
    means.) During the pass the batch-norm layers are in training mode and every other module
    is in eval mode, so dropout is off, and no gradient is recorded.

    Afterwards each layer's ``momentum`` and every submodule's ``training`` flag are restored. If
    anything raises (or ``batches`` is empty) the running statistics are restored too, so the
    model is left exactly as it was.

    Args:
        model: a module containing batch-norm layers that track running statistics.
        batches: an iterable of inputs (e.g. a DataLoader); one pass is made over it.
        forward: ``forward(model, batch)`` runs the model on one batch. The default calls
            ``model(batch)``, or ``model(batch[0])`` when a batch is a tuple or list.

    Returns:
        ``model``, modified in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = _named_batch_norms(model)
    if not layers:
        raise ValueError(
            f"model ({type(model).__name__}) contains no batch-norm layer: nothing to recalibrate"
        )
    untracked = [name for name, bn in layers if bn.running_mean is None or bn.running_var is None]
    if untracked:
        raise ValueError(
            "recalibrate needs running statistics, but these batch-norm layers were built with "
            f"track_running_stats=False: {untracked}"
        )
    run = _default_forward if forward is None else forward

    momenta = [bn.momentum for _, bn in layers]
    saved = [
        (bn.running_mean.clone(), bn.running_var.clone(),
         None if bn.num_batches_tracked is None else bn.num_batches_tracked.clone())
        for _, bn in layers
    ]
    done = False
    with eval_mode(model):  # every module in eval (dropout off); all flags restored on exit
        try:
            for _, bn in layers:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average: batch k gets weight 1/k
                bn.training = True  # this layer only; its siblings stay in eval
            count = 0
            with torch.no_grad():
                for batch in batches:
                    run(model, batch)
                    count += 1
            if count == 0:
                raise ValueError("batches is empty: recalibrate needs at least one batch")
            done = True
        finally:
            for (_, bn), momentum in zip(layers, momenta, strict=True):
                bn.momentum = momentum
            if not done:
                with torch.no_grad():
                    for (_, bn), (mean, var, count_before) in zip(layers, saved, strict=True):
                        bn.running_mean.copy_(mean)
                        bn.running_var.copy_(var)
                        if count_before is not None:
                            bn.num_batches_tracked.copy_(count_before)
    return model


def _check_bn_for_folding(bn: nn.Module) -> None:
    if not is_batch_norm(bn):
        raise TypeError(
            "bn must be a batch-norm layer (torch.nn.BatchNorm1d/2d/3d or "
            f"bnbook.modules.BatchNorm1d/2d/3d), got {type(bn).__name__}"
        )
    if bn.training:
        raise ValueError(
            f"bn ({type(bn).__name__}) is in training mode, where it normalises with batch "
            "statistics; folding uses its running statistics, so call bn.eval() first"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"bn ({type(bn).__name__}) has no running statistics (track_running_stats=False), so "
            "it normalises with batch statistics even in eval mode and cannot be folded"
        )


def fold_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A new layer that computes ``bn(layer(x))`` with ``bn`` in eval mode, in one step.

    In eval mode ``bn`` is an affine map per channel ``c``:
    ``y = gamma[c] * (z - running_mean[c]) / sqrt(running_var[c] + eps) + beta[c]``.
    With ``s[c] = gamma[c] / sqrt(running_var[c] + eps)``, composing it with ``z = W x + b``
    gives ``W'[c] = s[c] * W[c]`` (every weight of output channel ``c``) and
    ``b'[c] = (b[c] - running_mean[c]) * s[c] + beta[c]``. The arithmetic is done in float64 and
    rounded once to the layer's dtype. Neither input is modified.

    Args:
        layer: an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (any stride, padding, dilation, groups);
            its bias may be None.
        bn: a batch-norm layer (torch's or bnbook's) in eval mode with running statistics, over
            the layer's output channels; it may have ``affine=False``.

    Returns:
        A deep copy of ``layer`` with the folded ``weight`` and a ``bias`` (created if the layer
        had none).
    """
    if not isinstance(layer, _FOLDABLE) or isinstance(layer, nn.modules.lazy.LazyModuleMixin):
        raise TypeError(
            "fold_bn folds into nn.Linear or nn.Conv1d/2d/3d, got "
            f"{type(layer).__name__}"
        )
    _check_bn_for_folding(bn)
    out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn.num_features != out_channels:
        raise ValueError(
            f"channel mismatch: {type(layer).__name__} has {out_channels} output channels but "
            f"bn has num_features={bn.num_features}"
        )

    weight = layer.weight.detach()
    acc = torch.float64
    mean = bn.running_mean.detach().to(acc)  # (C,)
    var = bn.running_var.detach().to(acc)  # (C,)
    gamma = torch.ones_like(mean) if bn.weight is None else bn.weight.detach().to(acc)
    beta = torch.zeros_like(mean) if bn.bias is None else bn.bias.detach().to(acc)
    bias = torch.zeros_like(mean) if layer.bias is None else layer.bias.detach().to(acc)

    scale = gamma / torch.sqrt(var + bn.eps)  # (C,): s = gamma / sqrt(rv + eps)
    per_channel = (-1,) + (1,) * (weight.dim() - 1)  # broadcast over dim 0, the output channels
    new_weight = (weight.to(acc) * scale.reshape(per_channel)).to(weight.dtype)
    new_bias = ((bias - mean) * scale + beta).to(weight.dtype)

    folded = copy.deepcopy(layer)
    folded.weight = nn.Parameter(new_weight, requires_grad=layer.weight.requires_grad)
    bias_grad = layer.weight.requires_grad if layer.bias is None else layer.bias.requires_grad
    folded.bias = nn.Parameter(new_bias, requires_grad=bias_grad)
    return folded


def fold_model(model: M) -> M:
    """A copy of ``model`` with every adjacent (Linear/Conv, batch norm) pair folded.

    A pair is folded where a ``nn.Linear`` or ``nn.Conv1d/2d/3d`` is immediately followed by a
    batch-norm layer inside an ``nn.Sequential`` (at any depth). The folded layer takes the
    Linear/Conv's place and the batch-norm layer is replaced by ``nn.Identity()``, so indices and
    the names of the other modules stay the same. Every other module, and ``model`` itself, is
    left as it was.

    Args:
        model: the network; every batch-norm layer to be folded must be in eval mode and have
            running statistics.

    Returns:
        A new module computing the same eval-mode function (up to rounding).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model)
    for prefix, seq in list(folded.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for first, second in zip(keys, keys[1:], strict=False):
            layer, bn = seq._modules[first], seq._modules[second]
            if not (isinstance(layer, _FOLDABLE) and is_batch_norm(bn)):
                continue
            try:
                seq._modules[first] = fold_bn(layer, bn)
            except (TypeError, ValueError) as err:
                where = f"{prefix}.{second}" if prefix else second
                raise type(err)(f"cannot fold the batch-norm layer at {where!r}: {err}") from err
            seq._modules[second] = nn.Identity()
    return folded
