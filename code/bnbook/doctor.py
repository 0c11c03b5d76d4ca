"""A model doctor: find the Batch Normalization gotchas in a model, on one example batch.

:func:`check` looks at a model twice. First at its state: which batch-norm layers are in
training mode, which have never updated their running statistics, which have frozen parameters
but still update their statistics, whether the model is wrapped for data parallelism without
synchronised layers. Then it runs the example batch through the model with forward hooks and
looks at what each batch-norm layer receives: how many values per channel (its statistics are
means over that many numbers), and whether its input comes straight from a dropout layer or
from a Linear/Conv layer with a bias (which the mean subtraction cancels). Dropout is followed
through parameter-free modules and through Linear/Conv layers; data flow is seen only through
module calls, so a ``torch.relu`` or ``F.dropout`` called inside a custom ``forward`` hides it.

Nothing in the model changes: parameters, buffers (the running statistics and counters that
the forward pass updates in training mode), every module's ``training`` flag and torch's random
number generator states (CPU, and CUDA once initialised) are restored afterwards, and no
gradient is recorded.

The layers recognised are those of :func:`bnbook.inference.is_batch_norm`: torch's
``_BatchNorm`` subclasses (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) and bnbook's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bnbook.inference import is_batch_norm

__all__ = ["Finding", "Findings", "check"]

#: Fewer values per channel than this in a training batch is reported as noisy statistics. The
#: small-batch experiments of Wu and He (2018, Figure 1) show BN's error rising below 16
#: images per GPU (their layers see 16·H·W values, so this is a conservative per-value bound).
MIN_VALUES_PER_CHANNEL = 16

# Modules that pass a tensor on without learned parameters: a dropout mask survives them.
_PASS_THROUGH = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity,
    nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.Hardtanh, nn.ReLU6, nn.Mish,
)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_BIASED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Finding:
    """One problem found in one module.

    Attributes:
        module: the module's qualified name in the model (``"features.3"``; ``"<model>"`` for
            the model itself).
        code: a short identifier of the problem, e.g. ``"bias-before-bn"``.
        message: what is wrong, with the numbers that show it.
        fix: what to do about it.
    """

    module: str
    code: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.module}: {self.message}\n    fix: {self.fix}"


class Findings(list):
    """The list of :class:`Finding` that :func:`check` returns; prints as a report."""

    def codes(self) -> list[str]:
        """The ``code`` of every finding, in order."""
        return [f.code for f in self]

    def __str__(self) -> str:
        if not self:
            return "bnbook.doctor: no findings"
        head = f"bnbook.doctor: {len(self)} finding{'s' if len(self) > 1 else ''}"
        return "\n".join([head, *(str(f) for f in self)])


def _first_tensor(args: tuple) -> Tensor | None:
    for a in args:
        if isinstance(a, Tensor):
            return a
    return None


def _unwrap(model: nn.Module) -> tuple[nn.Module, str | None, str]:
    """(the module to run, the data-parallel wrapper's class name or None, a name prefix)."""
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    if isinstance(model, parallel):
        return model.module, type(model).__name__, "module."
    return model, None, ""


def _is_sync(bn: nn.Module) -> bool:
    from bnbook.distributed import SyncBatchNorm

    return isinstance(bn, (nn.SyncBatchNorm, SyncBatchNorm))


def _state_findings(
    model: nn.Module, inner: nn.Module, wrapper: str | None, prefix: str, training: bool
) -> Findings:
    found = Findings()
    distributed = (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )
    for raw, bn in inner.named_modules():
        if not is_batch_norm(bn):
            continue
        name = prefix + raw if raw else (prefix.rstrip(".") or "<model>")
        kind = type(bn).__name__
        if not training:
            if bn.training:
                found.append(Finding(
                    name, "train-mode-at-inference",
                    f"{kind} is in training mode: at inference it would normalise each input "
                    "with the statistics of its own batch (and update its running statistics)",
                    "call model.eval() before inference (or use bnbook.inference.eval_mode)",
                ))
            if bn.running_mean is None:
                found.append(Finding(
                    name, "batch-stats-at-inference",
                    f"{kind} was built with track_running_stats=False, so it normalises with "
                    "the statistics of the batch even in eval mode",
                    "build it with track_running_stats=True and recalibrate "
                    "(bnbook.inference.recalibrate)",
                ))
            elif bn.num_batches_tracked is not None and int(bn.num_batches_tracked) == 0:
                found.append(Finding(
                    name, "stats-never-updated",
                    f"{kind} has num_batches_tracked == 0: its running statistics are the "
                    "initial mean 0 and variance 1, not the data's",
                    "train the model in training mode, or recalibrate "
                    "(bnbook.inference.recalibrate / torch.optim.swa_utils.update_bn)",
                ))
        else:
            frozen = bn.weight is not None and not bn.weight.requires_grad and (
                bn.bias is None or not bn.bias.requires_grad
            )
            if frozen and bn.training and bn.track_running_stats:
                found.append(Finding(
                    name, "frozen-but-training",
                    f"{kind}'s weight and bias have requires_grad=False but the layer is in "
                    "training mode: it still normalises with batch statistics and overwrites "
                    "its running statistics every step",
                    "keep it in eval mode after every model.train() (override train(), or "
                    "replace it by torchvision.ops.FrozenBatchNorm2d)",
                ))
            if not _is_sync(bn) and (wrapper is not None or distributed):
                where = wrapper or "a process group of more than one rank"
                found.append(Finding(
                    name, "unsynchronised-data-parallel",
                    f"{kind} under {where}: each replica normalises with the statistics of "
                    "its own shard of the batch",
                    "convert with SyncBatchNorm.convert_sync_batchnorm before wrapping in "
                    "DistributedDataParallel (DataParallel cannot synchronise), or accept "
                    "per-shard statistics knowingly (ghost batch norm)",
                ))
    return found


def check(
    model: nn.Module,
    *example_inputs: Any,
    training: bool,
    min_values_per_channel: int = MIN_VALUES_PER_CHANNEL,
) -> Findings:
    """Find Batch Normalization gotchas in ``model``, running ``example_inputs`` through it.

    Args:
        model: the model, possibly wrapped in ``nn.DataParallel`` or
            ``DistributedDataParallel`` (the wrapped module is run, so no collective starts).
        *example_inputs: the arguments of one forward call, a typical batch.
        training: True to check the model as it will train, False as it will serve.
        min_values_per_channel: in training, fewer values per channel than this is reported.

    Returns:
        A :class:`Findings` list (empty for a clean model); ``print`` it for a report.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be True or False, got {training!r}")
    if not example_inputs:
        raise ValueError("check needs example_inputs: the arguments of one forward call")
    if isinstance(min_values_per_channel, bool) or not isinstance(min_values_per_channel, int) \
            or min_values_per_channel < 2:
        raise ValueError(
            f"min_values_per_channel must be an int >= 2, got {min_values_per_channel!r}"
        )
    inner, wrapper, prefix = _unwrap(model)
    found = _state_findings(model, inner, wrapper, prefix, training)
    found.extend(_run_findings(inner, prefix, example_inputs, training, min_values_per_channel))
    return found


def _run_findings(
    model: nn.Module, prefix: str, inputs: tuple, training: bool, least: int
) -> Findings:
    """Run the inputs with hooks and report what the batch-norm layers receive."""
    names = {m: (prefix + n if n else (prefix.rstrip(".") or "<model>"))
             for n, m in model.named_modules()}
    # Where each tensor of the pass comes from, keyed by id: "dropout" (a dropout layer
    # upstream, followed through parameter-free modules and Linear/Conv layers, since a linear
    # map carries the variance shift on) and "bias" (a Linear/Conv with a bias made it). The
    # tensors are kept alive in ``keep`` so that no id is reused during the pass.
    origin: dict[int, dict[str, nn.Module]] = {}
    keep: list[Tensor] = []
    found = Findings()
    seen_one: list[str] = []

    def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        if not isinstance(output, Tensor):
            return
        x = _first_tensor(args)
        upstream = origin.get(id(x), {}) if x is not None else {}
        tags: dict[str, nn.Module] = {}
        if isinstance(module, _DROPOUT) and module.p > 0:  # the shift shows at inference
            tags["dropout"] = module
        elif isinstance(module, (*_PASS_THROUGH, *_BIASED)) and "dropout" in upstream:
            tags["dropout"] = upstream["dropout"]
        if isinstance(module, _BIASED) and module.bias is not None:
            tags["bias"] = module
        if tags:
            origin[id(output)] = tags
        keep.append(output)

    def pre_hook(module: nn.Module, args: tuple) -> None:
        x = _first_tensor(args)
        if x is None or x.dim() < 2:
            return
        name, kind = names[module], type(module).__name__
        per_channel = x.numel() // max(x.shape[1], 1)
        # A layer in training mode uses batch statistics whatever ``training`` says, and one
        # value per channel makes torch raise: report it in both checks.
        if module.training and (training or per_channel <= 1):
            if per_channel <= 1:
                seen_one.append(name)
                found.append(Finding(
                    name, "one-value-per-channel",
                    f"{kind} receives input of shape {tuple(x.shape)}: one value per channel, "
                    "whose variance is 0; torch raises a ValueError in training",
                    "drop the last incomplete batch (DataLoader(drop_last=True)) or use a "
                    "per-example norm (GroupNorm/LayerNorm)",
                ))
            elif per_channel < least:
                found.append(Finding(
                    name, "few-values-per-channel",
                    f"{kind} receives input of shape {tuple(x.shape)}: {per_channel} values "
                    f"per channel (< {least}), so its batch statistics are noisy",
                    "use larger batches, SyncBatchNorm across devices, or GroupNorm",
                ))
        source = origin.get(id(x), {})
        if "dropout" in source:
            producer = source["dropout"]
            found.append(Finding(
                name, "dropout-before-bn",
                f"{kind} receives the output of {type(producer).__name__} "
                f"{names.get(producer, '?')!r} (p={producer.p}), directly or through "
                "activations/Linear/Conv: the variance it sees in training differs from the "
                "one at inference (variance shift)",
                "move dropout after the last batch-norm layer, or recalibrate the "
                "statistics with dropout off (bnbook.inference.recalibrate)",
            ))
        if "bias" in source:
            producer = source["bias"]
            found.append(Finding(
                name, "bias-before-bn",
                f"{kind} receives the output of {type(producer).__name__} "
                f"{names.get(producer, '?')!r}, whose bias the mean subtraction cancels",
                "build that layer with bias=False (the batch-norm bias takes its place)",
            ))

    # Snapshot everything a forward pass may change.
    flags = [(m, m.training) for m in model.modules()]
    tensors = [t for t in list(model.parameters()) + list(model.buffers())]
    saved = [t.detach().clone() for t in tensors]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_hook(post_hook))
        if is_batch_norm(m):
            handles.append(m.register_forward_pre_hook(pre_hook))
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as err:  # a layer with one value per channel raises; report, not crash
        if not seen_one:
            raise RuntimeError(f"the example forward pass failed: {err}") from err
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)
        for m, flag in flags:
            m.training = flag
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return found
