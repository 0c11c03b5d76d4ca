"""Part IV's runs: every production gotcha of Batch Normalization, measured on the digits.

Each function runs one gotcha on a small net and returns plain numbers (dicts of floats, ints
and strings), so the chapter prints them and asserts on them and the tests check them against
an independent computation. Nets are MLPs of :func:`bnbook.experiments.digits.mlp` (64 inputs,
one or two hidden layers of 32 or 64 units) trained with :func:`bnbook.experiments.digits.train`
for a few hundred steps: seconds each on one CPU thread.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnbook.experiments.digits import Digits, evaluate, load, mlp, train
from bnbook.inference import is_batch_norm, recalibrate

__all__ = [
    "CORRUPTIONS",
    "FrozenBatchNorm",
    "accumulation",
    "autocast_dtypes",
    "batch_norms",
    "batch_size_sweep",
    "checkpoint_updates",
    "corrupt",
    "ddp_worker",
    "dropout_variance_shift",
    "fold_and_export",
    "freeze_batch_norm",
    "freezing_undone",
    "half_variance",
    "last_batch_of_one",
    "mix_statistics",
    "placement",
    "recalibration",
    "recompute_without_update",
    "shard_statistics",
    "trained_bn_mlp",
    "transfer",
    "tta",
    "tta_curves",
    "tta_sample_curve",
    "update_bn_weights_batches",
]

HIDDEN = (64, 64)


def batch_norms(model: nn.Module) -> list[nn.Module]:
    """Every batch-norm layer of ``model`` (torch's and bnbook's), in order."""
    return [m for m in model.modules() if is_batch_norm(m)]


def trained_bn_mlp(
    data: Digits,
    *,
    steps: int = 300,
    seed: int = 0,
    lr: float = 0.1,
    hidden: Sequence[int] = HIDDEN,
    bias: bool = True,
) -> nn.Sequential:
    """A 64-64-64-10 MLP with BatchNorm1d after each hidden Linear, trained on ``data``, in
    eval mode (``bias``: whether the Linear layers have biases)."""
    torch.manual_seed(seed)
    model = mlp([64, *hidden, 10], norm=nn.BatchNorm1d, bias=bias)
    train(model, data, steps=steps, lr=lr, seed=seed, record_every=steps)
    return model.eval()


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return evaluate(model, x, y)[0]


# -- 1. fine-tuning with frozen batch norm ---------------------------------------------------


def freezing_undone(seed: int = 0) -> dict[str, object]:
    """Freeze a BN layer the common way (``.eval()`` + ``requires_grad_(False)``), then
    call ``model.train()`` as every training loop does, and run one batch.

    Returns:
        The layer's ``training`` flag before and after ``model.train()``, whether its running
        mean and its counter changed in the batch, and whether its weight still requires grad.
    """
    torch.manual_seed(seed)
    model = mlp([64, 32, 10], norm=nn.BatchNorm1d)
    bn = model[1]
    bn.eval()
    bn.requires_grad_(False)
    flag_frozen = bn.training
    model.train()  # what digits.train (and every loop) does first
    before = bn.running_mean.clone()
    model(torch.rand(16, 64))
    return {
        "training_after_eval": flag_frozen,
        "training_after_model_train": bn.training,
        "running_mean_changed": not torch.equal(before, bn.running_mean),
        "num_batches_tracked": int(bn.num_batches_tracked),
        "weight_requires_grad": bn.weight.requires_grad,
    }


class FrozenBatchNorm(nn.Module):
    """A batch-norm layer turned into a fixed per-channel affine map; ``train()`` cannot undo it.

    The statistics and the affine parameters are buffers, not parameters, so no optimiser
    updates them and no mode switches them back to batch statistics (torchvision's
    ``FrozenBatchNorm2d`` is built the same way).

    Args:
        bn: the batch-norm layer to freeze (in any mode); its running statistics are used.
    """

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        if not is_batch_norm(bn) or bn.running_mean is None:
            raise ValueError("bn must be a batch-norm layer with running statistics")
        c = bn.num_features
        weight = bn.weight if bn.weight is not None else torch.ones(c)
        bias = bn.bias if bn.bias is not None else torch.zeros(c)
        self.eps = bn.eps
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)  # (C,)
        shift = self.bias - self.running_mean * scale  # (C,)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.reshape(shape) + shift.reshape(shape)


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every batch-norm layer replaced by :class:`FrozenBatchNorm`."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if is_batch_norm(child):
                setattr(module, name, FrozenBatchNorm(child))
    return model


def _shift_domain(x: Tensor) -> Tensor:
    """The fine-tuning target: digits at 40 % contrast, brightened (x -> 0.4 x + 0.5)."""
    return 0.4 * x + 0.5


def transfer(
    seed: int = 0,
    *,
    pretrain_steps: int = 300,
    finetune_steps: int = 100,
    labelled: int = 128,
    lr: float = 0.003,
) -> dict[str, float]:
    """Pretrain on the digits, fine-tune on ``labelled`` examples of a shifted domain.

    The target domain is :func:`_shift_domain` of the digits. Fine-tuning runs
    ``finetune_steps`` SGD steps (``lr``, batches of 32) through ``digits.train``, on a net
    whose batch-norm layers are (a) trained as usual, (b) frozen with the source statistics, or
    (c) first recalibrated on the unlabelled target training set, then frozen.

    Returns:
        Target test accuracy for each variant, and before any fine-tuning.
    """
    data = load()
    source = trained_bn_mlp(data, steps=pretrain_steps, seed=seed)
    tx_train, tx_test = _shift_domain(data.x_train), _shift_domain(data.x_test)
    few = Digits(tx_train[:labelled], data.y_train[:labelled], tx_test, data.y_test)
    recal = recalibrate(copy.deepcopy(source), tx_train.split(256))
    runs = {
        "BN trained (model.train())": copy.deepcopy(source),
        "BN frozen, source statistics": freeze_batch_norm(source),
        "BN frozen, recalibrated on target": freeze_batch_norm(recal),
    }
    out = {
        "no fine-tuning, source statistics": _accuracy(source, tx_test, data.y_test),
        "no fine-tuning, recalibrated": _accuracy(recal, tx_test, data.y_test),
    }
    for name, model in runs.items():
        train(model, few, steps=finetune_steps, lr=lr, batch_size=32, seed=seed,
              record_every=finetune_steps)
        out[name] = _accuracy(model, tx_test, data.y_test)
    return out


# -- 2. recalibration after averaging or pruning ---------------------------------------------


def update_bn_weights_batches() -> dict[str, float]:
    """``swa_utils.update_bn`` on two batches of 2 and 98 values: batches or examples?

    Returns:
        The running mean it produces, the mean of the two batch means, and the mean of all 100
        values.
    """
    from torch.optim.swa_utils import update_bn

    small = torch.full((2, 1), 10.0)
    large = torch.zeros(98, 1)
    bn = nn.BatchNorm1d(1)
    update_bn([small, large], bn)
    return {
        "update_bn running_mean": bn.running_mean.item(),
        "mean of batch means": torch.stack([small.mean(), large.mean()]).mean().item(),
        "mean of all values": torch.cat([small, large]).mean().item(),
    }


def recalibration(
    seed: int = 0, *, steps: int = 400, swa_start: int = 20, prune: float = 0.8
) -> dict[str, float]:
    """Stale statistics after weight averaging (SWA) and after pruning, and their repair.

    SWA: ``AveragedModel`` averages the parameters from step ``swa_start`` on (lr 0.2, SGD
    with momentum 0.9, so the weights wander) while its buffers stay those copied at step
    ``swa_start``. Pruning: the fraction ``prune`` of the first layer's weights (the smallest)
    set to zero.

    Returns:
        Test accuracies: stale, after ``update_bn`` and after :func:`recalibrate`, for both;
        and the largest difference between the two repairs' running statistics.
    """
    from torch.optim.swa_utils import AveragedModel, update_bn

    data = load()
    torch.manual_seed(seed)
    model = mlp([64, *HIDDEN, 10], norm=nn.BatchNorm1d)
    holder: dict[str, AveragedModel] = {}

    def on_step(step: int, net: nn.Module, loss: Tensor) -> None:
        if step == swa_start:
            holder["swa"] = AveragedModel(net)
        elif step > swa_start:
            holder["swa"].update_parameters(net)

    train(model, data, steps=steps, lr=0.2, momentum=0.9, seed=seed, record_every=steps,
          on_step=on_step)
    swa = holder["swa"].module
    batches = list(data.x_train.split(128))
    out = {"final model": _accuracy(model, data.x_test, data.y_test)}
    out["SWA, stale statistics"] = _accuracy(swa, data.x_test, data.y_test)
    by_torch = copy.deepcopy(swa)
    update_bn(batches, by_torch)
    by_book = recalibrate(copy.deepcopy(swa), batches)
    out["SWA, update_bn"] = _accuracy(by_torch, data.x_test, data.y_test)
    out["SWA, recalibrate"] = _accuracy(by_book, data.x_test, data.y_test)
    out["SWA running_var, largest relative staleness"] = max(
        ((a.running_var - b.running_var).abs() / b.running_var).max().item()
        for a, b in zip(batch_norms(swa), batch_norms(by_book), strict=True)
    )
    out["update_bn vs recalibrate, largest difference"] = max(
        max((a.running_mean - b.running_mean).abs().max().item(),
            (a.running_var - b.running_var).abs().max().item())
        for a, b in zip(batch_norms(by_torch), batch_norms(by_book), strict=True)
    )
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        w = pruned[0].weight
        w[w.abs() < w.abs().flatten().quantile(prune)] = 0.0
    out["pruned, stale statistics"] = _accuracy(pruned, data.x_test, data.y_test)
    out["pruned, recalibrate"] = _accuracy(recalibrate(pruned, batches), data.x_test, data.y_test)
    return out


# -- 3. distribution shift and test-time adaptation -------------------------------------------

CORRUPTIONS = ("clean", "noise", "blur", "contrast", "intensity shift", "inverted")


def corrupt(x: Tensor, kind: str, seed: int = 0) -> Tensor:
    """The digits (N, 64) under one corruption, as (N, 64).

    ``noise``: Gaussian, std 0.3; ``blur``: a 3×3 Gaussian kernel (std 1 pixel) on the 8×8
    image; ``contrast``: x -> 0.5 + 0.2 (x - 0.5); ``intensity shift``: x + 0.6;
    ``inverted``: 1 - x.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")
    if kind == "clean":
        return x.clone()
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        return x + 0.3 * torch.randn(x.shape, generator=gen)
    if kind == "blur":
        g = torch.tensor([math.exp(-0.5), 1.0, math.exp(-0.5)])
        kernel = torch.outer(g, g) / torch.outer(g, g).sum()  # (3, 3)
        img = F.conv2d(x.reshape(-1, 1, 8, 8), kernel[None, None], padding=1)
        return img.reshape(-1, 64)
    if kind == "contrast":
        return 0.5 + 0.2 * (x - 0.5)
    if kind == "intensity shift":
        return x + 0.6
    return 1.0 - x


def mix_statistics(source: nn.Module, target: nn.Module, prior: float, n: int) -> nn.Module:
    """A copy of ``target`` whose BN statistics are ``N/(N+n)`` source + ``n/(N+n)`` target.

    Schneider et al. (2020)'s prior: ``N`` (``prior``) pseudo-examples of the training
    statistics mixed with the ``n`` examples the target statistics were estimated on.
    """
    mixed = copy.deepcopy(target)
    w = prior / (prior + n)
    for s, m in zip(batch_norms(source), batch_norms(mixed), strict=True):
        m.running_mean.mul_(1 - w).add_(w * s.running_mean)
        m.running_var.mul_(1 - w).add_(w * s.running_var)
    return mixed


def tta(model: nn.Module, data: Digits, *, prior: float = 16.0) -> dict[str, dict[str, float]]:
    """Accuracy on each corruption of the test set with three sets of BN statistics.

    ``train``: the running statistics of training. ``test``: re-estimated on the whole
    corrupted test set (397 unlabelled examples, one batch). ``mixed``: the two mixed with
    prior ``N`` = ``prior`` against n = 397.
    """
    out: dict[str, dict[str, float]] = {}
    for kind in CORRUPTIONS:
        x = corrupt(data.x_test, kind)
        adapted = recalibrate(copy.deepcopy(model), [x])
        mixed = mix_statistics(model, adapted, prior, len(x))
        out[kind] = {
            "train": _accuracy(model, x, data.y_test),
            "test": _accuracy(adapted, x, data.y_test),
            "mixed": _accuracy(mixed, x, data.y_test),
        }
    return out


def tta_sample_curve(
    model: nn.Module,
    data: Digits,
    kind: str,
    sizes: Sequence[int] = (2, 4, 8, 16, 32, 64, 128),
    *,
    prior: float = 16.0,
    draws: int = 5,
) -> dict[str, list[float]]:
    """Accuracy on the whole corrupted test set with statistics from n unlabelled examples.

    For each n, ``draws`` random subsets of n corrupted test examples; their statistics
    (pure, and mixed with the training statistics at prior ``N``) replace the running ones;
    the mean accuracy over the draws is recorded.
    """
    x = corrupt(data.x_test, kind)
    gen = torch.Generator().manual_seed(0)
    pure, mixed = [], []
    for n in sizes:
        a, b = [], []
        for _ in range(draws):
            idx = torch.randperm(len(x), generator=gen)[:n]
            adapted = recalibrate(copy.deepcopy(model), [x[idx]])
            a.append(_accuracy(adapted, x, data.y_test))
            b.append(_accuracy(mix_statistics(model, adapted, prior, n), x, data.y_test))
        pure.append(float(np.mean(a)))
        mixed.append(float(np.mean(b)))
    return {"n": list(sizes), "pure": pure, "mixed": mixed}


def tta_curves(
    model: nn.Module | None = None,
    data: Digits | None = None,
    kinds: Sequence[str] = ("contrast", "intensity shift", "blur", "noise", "inverted"),
) -> dict[str, dict[str, object]]:
    """Everything the chapter's test-time adaptation figure shows, per corruption.

    Args:
        model: a trained BN net; None trains the chapter's (:func:`trained_bn_mlp`).
        data: the digits; None loads them.
        kinds: the corruptions.

    Returns:
        Per corruption: the :func:`tta_sample_curve` (``n``, ``pure``, ``mixed``), the
        accuracies with training statistics (``train``) and with the whole corrupted test set's
        (``test``), and one clean and corrupted test image (``clean_image``, ``image``, 8×8).
    """
    data = data or load()
    model = model or trained_bn_mlp(data)
    table = tta(model, data)
    out: dict[str, dict[str, object]] = {}
    for kind in kinds:
        curve = tta_sample_curve(model, data, kind)
        out[kind] = {
            **curve,
            "train": table[kind]["train"],
            "test": table[kind]["test"],
            "clean_image": data.x_test[0].reshape(8, 8).numpy(),
            "image": corrupt(data.x_test[:1], kind)[0].reshape(8, 8).numpy(),
        }
    return out


# -- 4. data parallelism -----------------------------------------------------------------------


def shard_statistics(x: Tensor, shards: int) -> dict[str, float]:
    """Variance of a batch of one feature, from ``shards`` equal shards, three ways.

    Returns:
        The whole batch's (biased) variance, the average of the shards' variances, and Chan's
        merge of the shards' (count, mean, M2).
    """
    from bnbook.distributed import merge_stats

    x = x.to(torch.float64).reshape(-1, 1)  # (N, 1)
    parts = x.chunk(shards)
    count = torch.tensor([float(len(p)) for p in parts], dtype=torch.float64)
    mean = torch.stack([p.mean(0) for p in parts])  # (K, 1)
    m2 = torch.stack([((p - p.mean(0)) ** 2).sum(0) for p in parts])  # (K, 1)
    total, _, merged = merge_stats(count, mean, m2)
    return {
        "whole batch": x.var(unbiased=False).item(),
        "average of shard variances": (m2 / count[:, None]).mean().item(),
        "Chan's merge": (merged / total).item(),
    }


def ddp_worker(rank: int, world_size: int, steps: int = 20, seed: int = 0) -> dict:
    """Every rank: train an MLP under DDP on its shard, with plain BN and with SyncBatchNorm.

    Each step takes the same 64 training examples on every rank (a seeded permutation) and
    gives rank r the r-th equal shard; DDP averages the gradients. Run it with
    :func:`bnbook.distributed.launch`.

    Returns:
        For ``"plain"`` and ``"sync"``: the final state_dict, and each rank's first BN
        ``running_mean`` after training and after one more forward pass through DDP.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from bnbook.distributed import SyncBatchNorm, compare_many

    data = load()
    out: dict = {}
    for mode in ("plain", "sync"):
        torch.manual_seed(seed)
        model = mlp([64, 32, 32, 10], norm=nn.BatchNorm1d)
        if mode == "sync":
            model = SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = DDP(model)  # default: rank 0's buffers broadcast at every forward pass
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randperm(len(data.x_train), generator=gen)[:64].chunk(world_size)[rank]
            loss = F.cross_entropy(ddp(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        ddp(data.x_train[:8])  # one more training-mode forward: DDP broadcasts rank 0's buffers
        out[mode] = {
            "state": state,
            "after_train": state["1.running_mean"],
            "after_forward": model[1].running_mean.clone(),
        }
        dist.barrier()
    out["compare"] = compare_many(
        rank, world_size, [{"shard_sizes": [5, 3] if world_size == 2 else [1] * world_size}]
    )
    return out


def full_batch_reference(steps: int = 20, seed: int = 0, world_size: int = 2) -> dict:
    """One process, plain BN, the whole 64-example batch of :func:`ddp_worker` each step.

    Returns:
        The final state_dict, to compare with the ranks' (before their extra forward pass).
    """
    data = load()
    torch.manual_seed(seed)
    model = mlp([64, 32, 32, 10], norm=nn.BatchNorm1d)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(data.x_train), generator=gen)[:64]
        # the mean of the shards' mean losses (DDP's average) is the whole-batch mean
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- 6. gradient checkpointing -----------------------------------------------------------------


@contextmanager
def recompute_without_update(model: nn.Module) -> Iterator[None]:
    """While active, BN layers of ``model`` normalise as usual but leave their statistics and
    counters alone (momentum 0 makes the update ``r <- 1·r + 0·b``, exactly r; the counter is
    restored on exit). Give it to ``checkpoint(..., context_fn=...)`` as the recompute context.
    """
    layers = batch_norms(model)
    saved = [(bn.momentum, None if bn.num_batches_tracked is None
              else bn.num_batches_tracked.clone()) for bn in layers]
    for bn in layers:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, (momentum, count) in zip(layers, saved, strict=True):
            bn.momentum = momentum
            if count is not None:
                bn.num_batches_tracked.copy_(count)


def checkpoint_updates(steps: int = 3, seed: int = 0) -> dict[str, dict[str, float]]:
    """Train a BN block ``steps`` steps with and without ``torch.utils.checkpoint``.

    Variants: plain; checkpointed (``use_reentrant`` True and False); checkpointed with momentum
    ``1 - sqrt(1 - m)`` (both modes); checkpointed, non-reentrant, with
    :func:`recompute_without_update` as the recompute context.

    Returns:
        Per variant: ``num_batches_tracked`` and the largest difference of ``running_mean`` and
        ``running_var`` from the plain (un-checkpointed) run.
    """
    from contextlib import nullcontext

    from torch.utils.checkpoint import checkpoint

    def block() -> nn.Sequential:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(16, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU())

    gen = torch.Generator().manual_seed(seed)
    # reentrant checkpointing needs an input that requires grad to reach the parameters
    xs = [(torch.randn(32, 16, generator=gen) * 2 + 1).requires_grad_() for _ in range(steps)]

    def run(variant: str) -> nn.Sequential:
        net = block()
        if variant.startswith("momentum"):
            net[1].momentum = 1 - math.sqrt(1 - net[1].momentum)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for x in xs:
            if variant == "plain":
                y = net(x)
            elif variant == "guarded, non-reentrant":
                y = checkpoint(net, x, use_reentrant=False,
                               context_fn=lambda: (nullcontext(), recompute_without_update(net)))
            else:
                y = checkpoint(net, x, use_reentrant=variant.endswith("reentrant=True"))
            opt.zero_grad()
            y.pow(2).mean().backward()
            opt.step()
        return net

    plain = run("plain")[1]
    out = {}
    for variant in ("plain", "checkpoint, reentrant=True", "checkpoint, reentrant=False",
                    "momentum 1-sqrt(1-m), reentrant=True",
                    "momentum 1-sqrt(1-m), reentrant=False", "guarded, non-reentrant"):
        bn = run(variant)[1]
        out[variant] = {
            "num_batches_tracked": int(bn.num_batches_tracked),
            "running_mean diff": (bn.running_mean - plain.running_mean).abs().max().item(),
            "running_var diff": (bn.running_var - plain.running_var).abs().max().item(),
        }
    return out


# -- 7. gradient accumulation ------------------------------------------------------------------


def accumulation(seed: int = 0, micro: int = 4, batch: int = 32) -> dict[str, float]:
    """One batch of ``batch`` vs ``micro`` accumulated micro-batches of ``batch // micro``.

    Returns:
        The relative difference of the accumulated gradient from the whole-batch one, the
        statistic updates each made, and the largest difference of their running statistics.
    """
    data = load()
    torch.manual_seed(seed)
    base = mlp([64, 32, 10], norm=nn.BatchNorm1d)
    x, y = data.x_train[:batch], data.y_train[:batch]

    def grads(net: nn.Module) -> Tensor:
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    whole = copy.deepcopy(base)
    F.cross_entropy(whole(x), y).backward()
    acc = copy.deepcopy(base)
    for xm, ym in zip(x.chunk(micro), y.chunk(micro), strict=True):
        (F.cross_entropy(acc(xm), ym) / micro).backward()
    g1, g4 = grads(whole), grads(acc)
    return {
        "relative gradient difference": ((g4 - g1).norm() / g1.norm()).item(),
        "updates, whole batch": int(whole[1].num_batches_tracked),
        "updates, accumulated": int(acc[1].num_batches_tracked),
        "running_var difference": (whole[1].running_var - acc[1].running_var).abs().max().item(),
    }


# -- 8. dropout before batch norm --------------------------------------------------------------


def _dropout_net(p: float, before: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(64, 128), nn.ReLU()]
    tail: list[nn.Module] = [nn.Linear(128, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU()]
    if before:
        return nn.Sequential(*layers, nn.Dropout(p), *tail, nn.Linear(64, 10))
    return nn.Sequential(*layers, *tail, nn.Dropout(p), nn.Linear(64, 10))


def dropout_variance_shift(p: float = 0.5, steps: int = 400, seed: int = 0) -> dict[str, float]:
    """Li et al. (2019)'s variance shift: dropout before BN, measured at the BN layer.

    Returns:
        The BN input's variance (mean over channels) in training mode (dropout on) and in
        eval mode (dropout off) on the training set, the layer's running variance, and test
        accuracy: dropout before BN with running statistics, the same net recalibrated with
        dropout off, and dropout moved after the last BN.
    """
    data = load()
    torch.manual_seed(seed)
    net = _dropout_net(p, before=True)
    train(net, data, steps=steps, lr=0.1, seed=seed, record_every=steps)
    bn_input: list[Tensor] = []
    hook = net[4].register_forward_pre_hook(lambda m, a: bn_input.append(a[0].detach()))
    with torch.no_grad():
        torch.manual_seed(seed)
        net.train()
        saved = copy.deepcopy(net.state_dict())
        net(data.x_train)
        net.load_state_dict(saved)  # keep the running statistics as training left them
        net.eval()
        net(data.x_train)
    hook.remove()
    var_train = bn_input[0].var(0).mean().item()
    var_eval = bn_input[1].var(0).mean().item()
    out = {
        "BN input variance, dropout on": var_train,
        "BN input variance, dropout off": var_eval,
        "running_var": net[4].running_var.mean().item(),
        "dropout before BN": _accuracy(net, data.x_test, data.y_test),
        "dropout before BN, recalibrated": _accuracy(
            recalibrate(copy.deepcopy(net), data.x_train.split(128)), data.x_test, data.y_test
        ),
    }
    torch.manual_seed(seed)
    after = _dropout_net(p, before=False)
    train(after, data, steps=steps, lr=0.1, seed=seed, record_every=steps)
    out["dropout after BN"] = _accuracy(after, data.x_test, data.y_test)
    return out


# -- 9. mixed precision ------------------------------------------------------------------------


def autocast_dtypes() -> dict[str, dict[str, str]]:
    """Output dtypes of the norms under CPU bfloat16 autocast, for float32 and bfloat16 input.

    Also the dtype of a ``BatchNorm1d``'s running statistics after a step under autocast.
    """
    x = torch.randn(8, 4, 3)
    ops = {
        "linear": lambda t: F.linear(t.transpose(1, 2), torch.randn(4, 4)),
        "batch_norm": lambda t: F.batch_norm(t, None, None, training=True),
        "layer_norm": lambda t: F.layer_norm(t, (3,)),
        "group_norm": lambda t: F.group_norm(t, 2),
    }
    out = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, op in ops.items():
            out[name] = {"float32 in": str(op(x).dtype).replace("torch.", ""),
                         "bfloat16 in": str(op(x.bfloat16()).dtype).replace("torch.", "")}
        bn = nn.BatchNorm1d(4)
        y = bn(F.linear(x.transpose(1, 2), torch.randn(4, 4)).transpose(1, 2))
    out["BatchNorm1d after a Linear"] = {
        "output": str(y.dtype).replace("torch.", ""),
        "running_var": str(bn.running_var.dtype).replace("torch.", ""),
    }
    return out


def half_variance(
    mean: float, std: float = 1.0, n: int = 512, dtype=np.float16, seed: int = 0
) -> dict[str, float]:
    """The variance of n values ~ N(mean, std²) computed in ``dtype``, four ways.

    ``one-pass``: E[x²] − E[x]² with every sum accumulated in ``dtype`` (a naive kernel);
    ``one-pass, exact sums``: the same formula with the sums exact and only E[x²] and E[x]
    rounded to ``dtype``; ``two-pass``: the mean, then the mean of squared deviations, in
    ``dtype``; ``Welford``: the streaming update in ``dtype``. ``float64`` is the reference.
    """
    x64 = np.random.default_rng(seed).normal(mean, std, n)
    x = x64.astype(dtype)  # the data as stored in low precision
    ref = float(np.var(x.astype(np.float64)))
    s, sq = dtype(0), dtype(0)
    with np.errstate(over="ignore", invalid="ignore"):
        for v in x:
            s = dtype(s + v)
            sq = dtype(sq + v * v)
        one = float(dtype(sq / dtype(n)) - dtype(s / dtype(n)) ** 2)
        m1 = dtype(np.mean(x.astype(np.float64)))
        m2 = dtype(np.mean(x.astype(np.float64) ** 2))
        exact_sums = float(dtype(m2 - dtype(m1 * m1)))
    m = dtype(np.mean(x.astype(np.float64)))
    d = (x - m).astype(dtype)
    two = float(dtype(np.mean((d * d).astype(np.float64))))
    wm, ws = dtype(0), dtype(0)
    for k, v in enumerate(x, start=1):
        delta = dtype(v - wm)
        wm = dtype(wm + dtype(delta / dtype(k)))
        ws = dtype(ws + dtype(delta * dtype(v - wm)))
    welford = float(dtype(ws / dtype(n)))
    return {"float64": ref, "one-pass": one, "one-pass, exact sums": exact_sums,
            "two-pass": two, "Welford": welford}


# -- 10. small batches -------------------------------------------------------------------------


def last_batch_of_one(n: int = 1345, batch_size: int = 64) -> dict[str, object]:
    """A DataLoader over ``n`` digits whose last batch has ``n % batch_size`` examples.

    Returns:
        The last batch's size with and without ``drop_last``, the step at which training with
        BN raised, and the error's text.
    """
    from torch.utils.data import DataLoader, TensorDataset

    data = load()
    x = torch.cat([data.x_train, data.x_test])[:n]
    y = torch.cat([data.y_train, data.y_test])[:n]
    torch.manual_seed(0)
    model = mlp([64, 32, 10], norm=nn.BatchNorm1d).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out: dict[str, object] = {}
    for drop_last in (False, True):
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                            drop_last=drop_last, generator=torch.Generator().manual_seed(0))
        sizes = [len(b[0]) for b in loader]
        out[f"last batch, drop_last={drop_last}"] = sizes[-1]
        error = None
        for step, (xb, yb) in enumerate(loader, start=1):
            try:
                loss = F.cross_entropy(model(xb), yb)
            except ValueError as err:
                error = (step, str(err))
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[f"error, drop_last={drop_last}"] = error
    return out


def batch_size_sweep(
    sizes: Sequence[int] = (2, 4, 8, 32), epochs: int = 2, seed: int = 0
) -> dict[str, list[float]]:
    """Test accuracy of the BN MLP and of the same net with LayerNorm, per batch size.

    Every run sees ``epochs`` passes over the 1,400 training examples (so small batches take
    more steps), SGD at lr 0.05.
    """
    data = load()
    out: dict[str, list[float]] = {"batch size": list(sizes), "BatchNorm": [], "LayerNorm": []}
    for norm, key in ((nn.BatchNorm1d, "BatchNorm"), (nn.LayerNorm, "LayerNorm")):
        for b in sizes:
            torch.manual_seed(seed)
            model = mlp([64, *HIDDEN, 10], norm=norm)
            steps = epochs * (len(data.x_train) // b)
            curves = train(model, data, steps=steps, lr=0.05, batch_size=b, seed=seed,
                           record_every=steps)
            out[key].append(curves.final_accuracy)
    return out


# -- 11. placement -----------------------------------------------------------------------------


def _placed(order: str, bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in ((64, 64), (64, 64)):
        bn = nn.BatchNorm1d(n_out)
        pair = [bn, nn.ReLU()] if order == "BN before ReLU" else [nn.ReLU(), bn]
        layers += [nn.Linear(n_in, n_out, bias=bias), *pair]
    layers.append(nn.Linear(64, 10))
    if order == "BN on the output":
        layers = [nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                  nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                  nn.Linear(64, 10), nn.BatchNorm1d(10)]
    return nn.Sequential(*layers)


def placement(seeds: Sequence[int] = (0, 1, 2), steps: int = 300) -> dict[str, object]:
    """Test accuracy (mean over ``seeds``) for BN before/after ReLU and BN on the output layer;
    and what happens to a bias placed before BN.

    Returns:
        Accuracies per placement, and for the net with biases: the largest gradient any
        pre-BN bias received in training, and how far those biases moved.
    """
    data = load()
    out: dict[str, object] = {}
    for order in ("BN before ReLU", "BN after ReLU", "BN on the output"):
        accs = []
        for seed in seeds:
            torch.manual_seed(seed)
            net = _placed(order)
            accs.append(train(net, data, steps=steps, lr=0.1, seed=seed,
                              record_every=steps).final_accuracy)
        out[order] = float(np.mean(accs))
    torch.manual_seed(0)
    net = _placed("BN before ReLU", bias=True)
    start = [net[i].bias.detach().clone() for i in (0, 3)]
    largest = [0.0]

    def on_step(step: int, model: nn.Module, loss: Tensor) -> None:
        largest[0] = max(largest[0], *(model[i].bias.grad.abs().max().item() for i in (0, 3)))

    train(net, data, steps=steps, lr=0.1, seed=0, record_every=steps, on_step=on_step)
    out["largest pre-BN bias gradient"] = largest[0]
    out["largest pre-BN bias change"] = max(
        (net[i].bias.detach() - s).abs().max().item() for i, s in zip((0, 3), start, strict=True)
    )
    return out


# -- 12. folding and export --------------------------------------------------------------------


def fold_and_export(seed: int = 0) -> dict[str, float]:
    """Fold a small trained conv net three ways and export the folded one with torch.export.

    Returns:
        The largest output difference from the unfolded eval-mode net for
        :func:`bnbook.inference.fold_model`, ``torch.nn.utils.fusion.fuse_conv_bn_eval`` and
        ``torch.fx.experimental.optimization.fuse``; the number of batch-norm nodes in the
        exported graphs of the unfolded and the folded net; the exported program's difference.
    """
    from torch.fx.experimental.optimization import fuse as fx_fuse
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from bnbook.inference import fold_model

    data = load(images=True)
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 64, 10),
    )
    train(net, data, steps=100, lr=0.05, seed=seed, record_every=100)
    net.eval()
    x = data.x_test
    with torch.no_grad():
        ref = net(x)
        ours = fold_model(net)
        by_torch = copy.deepcopy(net)
        for i in (0, 3):
            by_torch[i] = fuse_conv_bn_eval(by_torch[i], by_torch[i + 1])
            by_torch[i + 1] = nn.Identity()
        by_fx = fx_fuse(net)
        out = {
            "bnbook fold_model": (ours(x) - ref).abs().max().item(),
            "fuse_conv_bn_eval": (by_torch(x) - ref).abs().max().item(),
            "torch.fx fuse": (by_fx(x) - ref).abs().max().item(),
        }

    def bn_nodes(model: nn.Module) -> tuple[int, torch.export.ExportedProgram]:
        program = torch.export.export(model, (x[:4],))
        count = sum("batch_norm" in str(node.target) for node in program.graph.nodes)
        return count, program

    out["batch-norm nodes exported, unfolded"], _ = bn_nodes(net)
    out["batch-norm nodes exported, folded"], program = bn_nodes(ours)
    with torch.no_grad():
        # exported for batches of 4 (a static shape): compare on the first 4 examples
        out["exported program"] = (program.module()(x[:4]) - ref[:4]).abs().max().item()
    return out

