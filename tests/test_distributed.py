"""bnbook.distributed: SyncBatchNorm from scratch equals one BatchNorm over the whole batch.

The multi-process tests start 2 and 3 gloo processes on the loopback interface (each launch has
a timeout); every rank compares its shard with ``torch.nn.BatchNorm`` run on the whole batch.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from bnbook import modules
from bnbook.distributed import SyncBatchNorm, compare_many, launch, merge_stats

TOL = 1e-12  # float64 throughout

CASES_2 = [
    {"shard_sizes": [5, 3], "shape": (3,)},
    {"shard_sizes": [4, 4], "shape": (2, 5), "momentum": None, "steps": 3},
    {"shard_sizes": [1, 6], "shape": (2, 3, 3)},
]
CASES_3 = [
    {"shard_sizes": [4, 0, 7], "shape": (3,)},  # a rank with no examples
    {"shard_sizes": [2, 5, 1], "shape": (2, 3, 2), "momentum": None, "steps": 3},
]


def _worker(rank: int, world_size: int, cases: list) -> dict:
    """Every rank: the comparisons, then a batch with one value per channel over all ranks."""
    out = {"cases": compare_many(rank, world_size, cases)}
    bn = SyncBatchNorm(2)
    shard = torch.randn(1 if rank == 0 else 0, 2)
    try:
        bn(shard)
        out["error"] = None
    except ValueError as err:
        out["error"] = str(err)
    out["counter"] = int(bn.num_batches_tracked)
    return out


def _check(results: list, cases: list) -> None:
    for rank, result in enumerate(results):
        assert len(result["cases"]) == len(cases)
        for case, diffs in zip(cases, result["cases"], strict=True):
            assert set(diffs) == {
                "output", "grad_input", "grad_weight", "grad_bias",
                "running_mean", "running_var", "num_batches_tracked",
            }
            for key, value in diffs.items():
                assert value < TOL, (rank, case, key, value)
        assert "more than 1 value per channel" in result["error"]


def test_two_processes_equal_one_batch_norm():
    _check(launch(_worker, 2, CASES_2, timeout=90), CASES_2)


def test_three_processes_uneven_shards_and_an_empty_rank():
    _check(launch(_worker, 3, CASES_3, timeout=90), CASES_3)


def test_torch_sync_batch_norm_refuses_cpu_tensors(tmp_path):
    """Why the book writes its own: with a gloo group, torch's raises for a CPU tensor."""
    x = torch.randn(4, 3)
    nn.SyncBatchNorm(3)(x)  # no process group: it quietly acts as a BatchNorm
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            nn.SyncBatchNorm(3)(x)
        mine = SyncBatchNorm(3)
        ref = nn.BatchNorm1d(3)
        torch.testing.assert_close(mine(x), ref(x), rtol=0, atol=0)  # one rank: no sync
    finally:
        dist.destroy_process_group()


def test_merge_stats_is_the_pooled_statistics():
    gen = torch.Generator().manual_seed(0)
    parts = [
        1e4 + torch.randn(n, 3, generator=gen, dtype=torch.float64) * (k + 1)
        for k, n in enumerate([5, 1, 9, 0, 2])
    ]
    count = torch.tensor([float(len(p)) for p in parts], dtype=torch.float64)
    mean = torch.stack([p.mean(0) if len(p) else torch.zeros(3, dtype=torch.float64)
                        for p in parts])  # (K, C)
    m2 = torch.stack([((p - p.mean(0)) ** 2).sum(0) if len(p) else torch.zeros(3,
                      dtype=torch.float64) for p in parts])  # (K, C)
    total, merged_mean, merged_m2 = merge_stats(count, mean, m2)
    whole = torch.cat(parts)
    assert torch.equal(total, torch.full((3,), 17.0, dtype=torch.float64))
    torch.testing.assert_close(merged_mean, whole.mean(0), rtol=0, atol=1e-10)
    torch.testing.assert_close(merged_m2 / 17, whole.var(0, unbiased=False), rtol=1e-12, atol=0)
    # averaging the parts' variances is not the variance of the whole
    nonempty = count > 0
    averaged = (m2[nonempty] / count[nonempty, None]).mean(0)
    assert (averaged - whole.var(0, unbiased=False)).abs().min() > 0.1


def test_merge_stats_bad_input():
    with pytest.raises(ValueError, match="mean and m2"):
        merge_stats(torch.ones(2), torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="count"):
        merge_stats(torch.ones(3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least one value"):
        merge_stats(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
def test_single_process_is_plain_batch_norm(momentum, track):
    """Without a process group (or in eval mode) the layer is torch's BatchNorm."""
    assert not dist.is_initialized()
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(3, momentum=momentum, track_running_stats=track)
    mine = SyncBatchNorm(3, momentum=momentum, track_running_stats=track)
    mine.load_state_dict(ref.state_dict())
    for training in (True, True, False):
        ref.train(training)
        mine.train(training)
        x = torch.randn(4, 3, 2, 2)
        torch.testing.assert_close(mine(x), ref(x), rtol=0, atol=0)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(mine.state_dict()[key], value, rtol=0, atol=0)


def test_constructor_and_errors_match_torch():
    mine = SyncBatchNorm(4, eps=1e-3, momentum=0.3, affine=False, process_group=None)
    theirs = nn.SyncBatchNorm(4, eps=1e-3, momentum=0.3, affine=False, process_group=None)
    assert mine.extra_repr() == theirs.extra_repr()
    assert set(mine.state_dict()) == set(theirs.state_dict())
    with pytest.raises(ValueError, match="2D"):
        mine(torch.randn(4))
    with pytest.raises(ValueError, match="num_features"):
        mine(torch.randn(4, 5))


def test_convert_sync_batchnorm_torch_and_bnbook_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Sequential(nn.Flatten(), nn.Linear(12, 5), modules.BatchNorm1d(5, momentum=None)),
    )
    model.train()
    for _ in range(2):
        model(torch.randn(6, 1, 4, 4))
    model[3][2].eval()
    model[1].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x)
    converted = SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], SyncBatchNorm)
    assert isinstance(converted[3][2], SyncBatchNorm)
    assert converted[3][2].momentum is None
    assert converted[1].training and not converted[3][2].training
    assert not converted[1].weight.requires_grad
    for key, value in before.items():
        assert torch.equal(converted.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x), expected, rtol=0, atol=0)
    single = SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm1d(2))
    assert isinstance(single, SyncBatchNorm)


def test_launch_bad_world_size():
    with pytest.raises(ValueError, match="world_size"):
        launch(_worker, 0, [])


def _ddp_worker(rank: int, world_size: int) -> dict:
    """Every rank: the same small net with our BatchNorm2d and with torch's, each wrapped in
    DistributedDataParallel, three SGD steps on this rank's shard; the largest differences."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)  # the same initial weights on every rank, for both nets
    ours = nn.Sequential(nn.Conv2d(2, 3, 3).double(), modules.BatchNorm2d(3).double(), nn.ReLU())
    theirs = modules.to_torch(copy.deepcopy(ours))
    nets = {"ours": DDP(ours), "theirs": DDP(theirs)}
    opts = {name: torch.optim.SGD(net.parameters(), lr=0.1) for name, net in nets.items()}
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    for _ in range(3):
        x = torch.randn(3 + rank, 2, 5, 5, generator=g, dtype=torch.float64)
        for name, net in nets.items():
            opts[name].zero_grad()
            net(x).square().mean().backward()
            opts[name].step()
    state = {name: net.module.state_dict() for name, net in nets.items()}
    diffs = {key: (state["ours"][key].double() - state["theirs"][key].double()).abs().max().item()
             for key in state["theirs"]}
    # What the state is on this rank, to compare across ranks (DDP keeps replicas in step).
    return {"diffs": diffs, "state": {k: v.clone() for k, v in state["ours"].items()}}


def test_ddp_with_our_layers_matches_torchs():
    """DistributedDataParallel treats our layer as torch's: gradients averaged across ranks,
    each rank normalising with its own shard's statistics, rank 0's running statistics
    broadcast before every forward. Two gloo processes, uneven shards, float64."""
    results = launch(_ddp_worker, 2, timeout=90)
    for rank, result in enumerate(results):
        for key, diff in result["diffs"].items():
            assert diff < TOL, (rank, key, diff)
    # The weights stay identical across ranks (averaged gradients). The running statistics do
    # not: rank 0's are broadcast *before* each forward, which then updates every rank's copy
    # from its own shard, with torch's layer as with ours (the diffs above).
    state0, state1 = results[0]["state"], results[1]["state"]
    for key in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.equal(state0[key], state1[key]), key
    assert not torch.equal(state0["1.running_mean"], state1["1.running_mean"])
