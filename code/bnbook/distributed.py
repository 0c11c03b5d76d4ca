"""Synchronised Batch Normalization over ``torch.distributed``, written from scratch.

Under data parallelism every process (a *rank*) holds a shard of the batch. A plain batch-norm
layer then normalises each shard with the shard's own statistics; :class:`SyncBatchNorm` makes
every rank normalise with the statistics of the whole batch, so that the ranks together compute
exactly what one ``BatchNorm`` computes on the concatenated batch: the same outputs, the same
input gradients, parameter gradients that sum to the whole-batch ones, and the same running
statistics on every rank.

torch's own ``torch.nn.SyncBatchNorm`` refuses tensors on the CPU (a ValueError, even with a
gloo process group), so it cannot be run or tested on a machine without accelerators. This one
works with any backend (gloo on CPU processes, NCCL on GPUs) because it only uses two
collectives, one per pass:

* forward: each rank sends ``(count, mean, M2)`` per channel, where ``M2`` is its sum of squared
  deviations from its own mean (an ``all_gather``); every rank merges them with Chan's formula
  (:func:`merge_stats`), in float64;
* backward: each rank sends its per-channel sums of ``dy`` and ``dy * x_hat`` (an
  ``all_reduce``); every rank then has what the batch-norm input gradient needs.

The exchange is an ``autograd.Function`` of our own, :class:`_SyncBatchNormFunction`; the
differentiable collectives of ``torch.distributed.nn.functional`` warn that they are deprecated
in torch 2.13.

:func:`launch` starts processes on this machine over the loopback interface, with a timeout,
and :func:`compare_with_batch_norm` is the check the tests and the chapter run in them.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["SyncBatchNorm", "compare_many", "compare_with_batch_norm", "launch", "merge_stats"]


def merge_stats(count: Tensor, mean: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge per-part statistics into those of the union of the parts (Chan et al.'s formula).

    Part ``k`` has ``count[k]`` values per channel with mean ``mean[k]`` and sum of squared
    deviations from that mean ``m2[k]``. The union has ``N = Σ n_k``, ``mean = Σ n_k mean_k / N``
    and ``M2 = Σ M2_k + Σ n_k (mean_k - mean)²``: the spread inside each part plus the spread
    between the parts' means. Averaging the parts' variances would drop the second term. Parts
    with ``count == 0`` have no weight.

    Args:
        count: (K,) or (K, C) values per part (float; the same for every channel if 1-D).
        mean: (K, C) each part's per-channel mean.
        m2: (K, C) each part's per-channel sum of squared deviations from its own mean.

    Returns:
        ``(N, mean, M2)`` of the union, shapes (C,) (N broadcast to (C,)).
    """
    if mean.dim() != 2 or m2.shape != mean.shape:
        raise ValueError(
            f"mean and m2 must both have shape (K, C), got {tuple(mean.shape)} and "
            f"{tuple(m2.shape)}"
        )
    if count.dim() == 1 and len(count) == len(mean):
        count = count[:, None].expand_as(mean)
    if count.shape != mean.shape:
        raise ValueError(f"count must have shape (K,) or (K, C), got {tuple(count.shape)}")
    total = count.sum(0)  # (C,)
    if bool((total <= 0).any()):
        raise ValueError("merge_stats needs at least one value per channel in all the parts")
    merged_mean = (count * mean).sum(0) / total  # (C,)
    between = (count * (mean - merged_mean) ** 2).sum(0)  # (C,): spread of the parts' means
    return total, merged_mean, m2.sum(0) + between


def _local_stats(x: Tensor) -> tuple[float, Tensor, Tensor]:
    """(count, mean, M2) per channel of one shard, in float64; zeros for an empty shard."""
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    if count == 0:
        zeros = x.new_zeros(channels, dtype=torch.float64)
        return 0.0, zeros, zeros
    dims = [0, *range(2, x.dim())]
    x64 = x.detach().to(torch.float64)
    mean = x64.mean(dim=dims)  # (C,)
    m2 = ((x64 - _per_channel(mean, x.dim())) ** 2).sum(dim=dims)  # (C,): two-pass
    return float(count), mean, m2


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """Reshape a (C,) vector to broadcast over dim 1 of an ``ndim``-dimensional input."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the union of every rank's shard: one collective forward, one backward."""

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
        momentum: float,
        group: Any,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        channels = x.shape[1]
        count, mean, m2 = _local_stats(x)
        packed = torch.cat([mean.new_tensor([count]), mean, m2])  # (2C+1,) float64
        world = dist.get_world_size(group)
        gathered = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(gathered, packed, group=group)  # exchange 1 of 2: the statistics
        table = torch.stack(gathered)  # (world, 2C+1)
        total, mean, m2 = merge_stats(
            table[:, 0], table[:, 1 : 1 + channels], table[:, 1 + channels :]
        )
        n = float(total[0]) if channels else 0.0
        if n <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {int(n)} over all "
                "ranks together"
            )
        var = m2 / n  # (C,): biased, what normalises
        invstd = torch.rsqrt(var + eps)  # (C,)
        if running_mean is not None and running_var is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
            unbiased = m2 / (n - 1)  # (C,): what is stored, as torch stores it
            running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        nd = x.dim()
        x_hat = (x - _per_channel(mean, nd).to(x.dtype)) * _per_channel(invstd, nd).to(x.dtype)
        y = x_hat
        if weight is not None:
            y = y * _per_channel(weight, nd)
        if bias is not None:
            y = y + _per_channel(bias, nd)
        return y, x_hat, invstd.to(x.dtype), x.new_tensor(n)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, *_rest, group = inputs
        _, x_hat, invstd, n = output
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.n = float(n)
        ctx.group = group
        ctx.mark_non_differentiable(x_hat, invstd, n)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor, *_unused: Tensor) -> tuple:
        x_hat, invstd, weight = ctx.saved_tensors
        nd = x_hat.dim()
        dims = [0, *range(2, nd)]
        if x_hat.numel():
            sum_dy = dy.sum(dim=dims)  # (C,)
            sum_dy_xhat = (dy * x_hat).sum(dim=dims)  # (C,)
        else:  # a rank with no examples still takes part in the exchange
            sum_dy = dy.new_zeros(x_hat.shape[1])
            sum_dy_xhat = dy.new_zeros(x_hat.shape[1])
        grad_weight = sum_dy_xhat.clone() if weight is not None else None  # this rank's share
        grad_bias = sum_dy.clone() if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            packed = torch.cat([sum_dy, sum_dy_xhat]).to(torch.float64)  # (2C,)
            dist.all_reduce(packed, group=ctx.group)  # exchange 2 of 2: the gradient sums
            mean_dy, mean_dy_xhat = (packed / ctx.n).to(dy.dtype).chunk(2)  # (C,), (C,)
            scale = invstd if weight is None else invstd * weight  # (C,)
            grad_x = _per_channel(scale, nd) * (
                dy - _per_channel(mean_dy, nd) - x_hat * _per_channel(mean_dy_xhat, nd)
            )
        if not ctx.needs_input_grad[1]:
            grad_weight = None
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the batch over every rank.

    Same constructor, state and ``convert_sync_batchnorm`` as ``torch.nn.SyncBatchNorm``, but it
    runs on any device and backend (gloo on CPU included). In training mode with a process group
    of more than one rank it synchronises; otherwise (eval mode with running statistics, or a
    single process) it is an ordinary batch-norm layer.

    Args:
        num_features: C, the channel count (dim 1 of the input, of 2 or more dimensions).
        eps: added to the variance before the square root.
        momentum: weight of each new batch in the running averages; None for a cumulative one.
        affine: learn a per-channel ``weight`` and ``bias``.
        track_running_stats: keep running statistics (else batch statistics in eval mode too).
        process_group: the ranks to synchronise over; None for the default (world) group.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"input has {input.shape[1]} channels (dim 1) but num_features="
                f"{self.num_features}"
            )
        # The averaging factor exactly as torch's _BatchNorm.forward decides it.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        group = self.process_group or (dist.group.WORLD if dist.is_initialized() else None)
        # Like torch's SyncBatchNorm: only training mode synchronises.
        need_sync = self.training and dist.is_initialized() and dist.get_world_size(group) > 1
        if not need_sync:
            track = not self.training or self.track_running_stats
            return F.batch_norm(
                input,
                self.running_mean if track else None,
                self.running_var if track else None,
                self.weight,
                self.bias,
                bn_training,
                factor,
                self.eps,
            )
        update = self.training and self.track_running_stats
        y, *_ = _SyncBatchNormFunction.apply(
            input,
            self.weight,
            self.bias,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.eps,
            factor,
            group,
        )
        return y

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every batch-norm layer in ``module`` by a :class:`SyncBatchNorm`.

        Torch's ``BatchNorm1d/2d/3d`` and bnbook's are converted; their parameters (with their
        ``requires_grad``), running statistics, counter and training flag carry over, sharing
        storage as in torch's own classmethod.

        Args:
            module: a module or a model containing batch-norm layers.
            process_group: the group the new layers synchronise over (None: the world).

        Returns:
            The converted module (``module`` itself, changed in place, unless it is a
            batch-norm layer, which is returned as a new :class:`SyncBatchNorm`).
        """
        from bnbook.inference import is_batch_norm

        out = module
        if is_batch_norm(module) and not isinstance(module, cls):
            out = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
            )
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        del module
        return out


# -- running it: processes on this machine ----------------------------------------------------


def _entry(
    fn: Callable[..., Any], rank: int, world_size: int, store: str, out_dir: str, args: tuple
) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    torch.set_num_threads(1)
    path = os.path.join(out_dir, f"rank{rank}.pt")
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=60),
        )
        try:
            result = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        torch.save({"ok": True, "result": result}, path)
    except BaseException:  # report it to the parent, which raises
        torch.save({"ok": False, "error": traceback.format_exc()}, path)


def launch(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes, gloo, loopback.

    Each process joins a gloo process group whose rendezvous is a file in a temporary folder
    (no port to choose, nothing leaves the machine), runs ``fn`` and saves what it returns.
    ``fn`` must be importable by name (defined at the top level of a module), since the
    processes are started with the ``spawn`` method. Processes still alive after ``timeout``
    seconds are killed.

    Args:
        fn: the function each rank runs; it returns something ``torch.save`` can store.
        world_size: the number of processes, 1 or more.
        *args: passed to ``fn`` after ``rank, world_size``.
        timeout: seconds after which the run is abandoned.

    Returns:
        ``[fn(0, ...), fn(1, ...), ...]``, one entry per rank.
    """
    import multiprocessing as mp

    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bnbook-dist-") as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_entry, args=(fn, r, world_size, store, tmp, args), daemon=True)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        import time

        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            p.kill()
            p.join()
        if alive:
            raise TimeoutError(f"{len(alive)} of {world_size} processes ran past {timeout} s")
        results = []
        for r in range(world_size):
            path = os.path.join(tmp, f"rank{r}.pt")
            if not os.path.exists(path):
                raise RuntimeError(f"rank {r} exited with code {procs[r].exitcode} and no result")
            record = torch.load(path, weights_only=False)
            if not record["ok"]:
                raise RuntimeError(f"rank {r} failed:\n{record['error']}")
            results.append(record["result"])
    return results


def compare_with_batch_norm(
    rank: int,
    world_size: int,
    shard_sizes: Sequence[int],
    shape: Sequence[int] = (3,),
    momentum: float | None = 0.1,
    steps: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Run in every rank: SyncBatchNorm on shards vs one ``nn.BatchNorm`` on the whole batch.

    Every rank draws the same whole batch (float64, mean far from zero) and the same upstream
    gradient, keeps its shard (``shard_sizes[rank]`` examples; 0 is allowed), and runs
    ``steps`` training steps of :class:`SyncBatchNorm`; the reference runs
    ``torch.nn.BatchNorm`` on the whole batch. Parameter gradients are summed over the ranks
    with an ``all_reduce``, as data parallelism does (DDP averages them).

    Args:
        rank: this process's rank (given by :func:`launch`).
        world_size: the number of ranks; ``len(shard_sizes)`` must equal it.
        shard_sizes: examples per rank.
        shape: the shape of one example, channels first: ``(C,)``, ``(C, L)`` or ``(C, H, W)``.
        momentum: the layers' momentum (None: cumulative average).
        steps: forward/backward passes, each on a new batch.
        seed: seed of the data.

    Returns:
        The largest absolute difference of ``output``, ``grad_input``, ``grad_weight``,
        ``grad_bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked``.
    """
    if len(shard_sizes) != world_size:
        raise ValueError(f"shard_sizes needs {world_size} entries, got {len(shard_sizes)}")
    bn_class = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d}[len(shape)]
    channels = shape[0]
    ref = bn_class(channels, momentum=momentum, dtype=torch.float64)
    sync = SyncBatchNorm(channels, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1000)
        ref.weight.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5)
        ref.bias.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
        sync.weight.copy_(ref.weight)
        sync.bias.copy_(ref.bias)
    start = sum(shard_sizes[:rank])
    total = sum(shard_sizes)
    diff: dict[str, float] = {}

    def note(key: str, a: Tensor, b: Tensor) -> None:
        d = (a - b).abs().max().item() if a.numel() else 0.0
        diff[key] = max(diff.get(key, 0.0), d)

    for step in range(steps):
        gen = torch.Generator().manual_seed(seed + step)
        x = 3.0 + 2.0 * torch.randn(total, *shape, generator=gen, dtype=torch.float64)
        dy = torch.randn(total, *shape, generator=gen, dtype=torch.float64)
        x_ref = x.clone().requires_grad_(True)
        y_ref = ref(x_ref)
        y_ref.backward(dy)
        x_mine = x[start : start + shard_sizes[rank]].clone().requires_grad_(True)
        sync.zero_grad()
        y_mine = sync(x_mine)
        y_mine.backward(dy[start : start + shard_sizes[rank]])
        grads = torch.cat([sync.weight.grad, sync.bias.grad])  # (2C,)
        dist.all_reduce(grads)  # summed over ranks, as data parallelism sums them
        note("output", y_mine.detach(), y_ref.detach()[start : start + shard_sizes[rank]])
        note("grad_input", x_mine.grad, x_ref.grad[start : start + shard_sizes[rank]])
        note("grad_weight", grads[:channels], ref.weight.grad)
        note("grad_bias", grads[channels:], ref.bias.grad)
        ref.zero_grad()
    note("running_mean", sync.running_mean, ref.running_mean)
    note("running_var", sync.running_var, ref.running_var)
    note(
        "num_batches_tracked",
        sync.num_batches_tracked.double(),
        ref.num_batches_tracked.double(),
    )
    return diff


def compare_many(
    rank: int, world_size: int, cases: Sequence[dict[str, Any]]
) -> list[dict[str, float]]:
    """:func:`compare_with_batch_norm` for several cases in one launch (processes are slow to
    start: each imports torch).

    Args:
        rank: this process's rank.
        world_size: the number of ranks.
        cases: keyword arguments of :func:`compare_with_batch_norm`, one dict per case.

    Returns:
        One dict of largest differences per case.
    """
    return [compare_with_batch_norm(rank, world_size, **case) for case in cases]
