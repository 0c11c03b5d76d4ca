"""bnbook.experiments.production: the gotcha runs of Part IV, checked against independent
computations (torch's own layers, float64, closed forms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bnbook import modules
from bnbook.distributed import launch
from bnbook.experiments import production as P
from bnbook.experiments.digits import load


def test_freezing_is_undone_by_model_train():
    r = P.freezing_undone()
    assert r["training_after_eval"] is False
    assert r["training_after_model_train"] is True
    assert r["running_mean_changed"] and r["num_batches_tracked"] == 1
    assert r["weight_requires_grad"] is False


@pytest.mark.parametrize("bn_class", [nn.BatchNorm1d, modules.BatchNorm1d])
def test_frozen_batch_norm_is_eval_bn_and_survives_train(bn_class):
    torch.manual_seed(0)
    bn = bn_class(5)
    bn.train()
    bn(torch.randn(32, 5) * 3 + 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
    model = P.freeze_batch_norm(nn.Sequential(nn.Linear(3, 5), bn))
    assert isinstance(model[1], P.FrozenBatchNorm)
    assert list(model[1].parameters()) == []
    model.train()
    x = torch.randn(4, 3)
    bn.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), bn(model[0](x)))
    assert isinstance(bn, bn_class)  # the original is untouched
    with pytest.raises(ValueError, match="batch-norm"):
        P.FrozenBatchNorm(nn.Linear(2, 2))


def test_update_bn_weights_batches_not_examples():
    r = P.update_bn_weights_batches()
    assert r["update_bn running_mean"] == pytest.approx(5.0)
    assert r["mean of all values"] == pytest.approx(0.2)
    assert r["mean of batch means"] == pytest.approx(5.0)  # (10 + 0) / 2


def test_checkpoint_doubles_updates_and_the_fixes():
    r = P.checkpoint_updates(steps=3)
    assert r["plain"]["num_batches_tracked"] == 3
    for mode in ("True", "False"):
        twice = r[f"checkpoint, reentrant={mode}"]
        assert twice["num_batches_tracked"] == 6 and twice["running_mean diff"] > 1e-2
        fixed = r[f"momentum 1-sqrt(1-m), reentrant={mode}"]
        assert fixed["num_batches_tracked"] == 6  # the counter is not fixed
        assert fixed["running_mean diff"] < 1e-5 and fixed["running_var diff"] < 1e-5
    guarded = r["guarded, non-reentrant"]
    assert guarded == {"num_batches_tracked": 3, "running_mean diff": 0.0,
                       "running_var diff": 0.0}


def test_momentum_fix_closed_form():
    """Two updates with m' = 1 - sqrt(1 - m) and the same batch statistic are one with m."""
    m, r, b = 0.1, 2.0, -3.0
    mp = 1 - math.sqrt(1 - m)
    twice = (1 - mp) * ((1 - mp) * r + mp * b) + mp * b
    assert twice == pytest.approx((1 - m) * r + m * b, rel=1e-14)


def test_recompute_without_update_restores():
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, momentum=None))
    net(torch.randn(5, 2))
    before = (net[1].running_mean.clone(), int(net[1].num_batches_tracked))
    with P.recompute_without_update(net):
        net(torch.randn(5, 2) + 4)
    assert torch.equal(net[1].running_mean, before[0])
    assert int(net[1].num_batches_tracked) == before[1] and net[1].momentum is None


def test_mix_statistics_formula():
    torch.manual_seed(0)
    a, b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    a.running_mean.normal_(), b.running_mean.normal_()
    a.running_var.uniform_(1, 2), b.running_var.uniform_(1, 2)
    mixed = P.mix_statistics(nn.Sequential(a), nn.Sequential(b), prior=16, n=48)
    torch.testing.assert_close(mixed[0].running_mean, 0.25 * a.running_mean
                               + 0.75 * b.running_mean)
    torch.testing.assert_close(mixed[0].running_var, 0.25 * a.running_var + 0.75 * b.running_var)


def test_corrupt():
    x = load().x_test[:10]
    assert torch.equal(P.corrupt(x, "clean"), x)
    assert torch.equal(P.corrupt(x, "inverted"), 1 - x)
    blurred = P.corrupt(x, "blur")
    assert blurred.shape == x.shape and not torch.equal(blurred, x)
    # an image of a constant away from the border is unchanged by a normalised blur
    flat = torch.full((1, 64), 0.5)
    inner = P.corrupt(flat, "blur").reshape(8, 8)[1:-1, 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, 0.5))
    with pytest.raises(ValueError, match="kind"):
        P.corrupt(x, "fog")


def test_shard_statistics():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0)) + torch.arange(64) / 8
    r = P.shard_statistics(x, 4)
    assert r["Chan's merge"] == pytest.approx(np.var(x.double().numpy()), rel=1e-12)
    assert r["average of shard variances"] < 0.5 * r["whole batch"]


def test_accumulation_counts_updates():
    r = P.accumulation()
    assert (r["updates, whole batch"], r["updates, accumulated"]) == (1, 4)
    assert r["relative gradient difference"] > 0.01


def test_half_variance():
    near_zero = P.half_variance(0.0)
    assert near_zero["two-pass"] == pytest.approx(near_zero["float64"], rel=1e-2)
    far = P.half_variance(100.0)
    assert math.isinf(far["one-pass"])  # the sum of squares overflows float16
    assert abs(far["one-pass, exact sums"] - far["float64"]) > 0.5  # cancellation
    assert far["two-pass"] == pytest.approx(far["float64"], rel=1e-2)


def test_autocast_dtypes():
    r = P.autocast_dtypes()
    assert r["linear"]["float32 in"] == "bfloat16"
    for op in ("batch_norm", "layer_norm", "group_norm"):
        assert r[op] == {"float32 in": "float32", "bfloat16 in": "bfloat16"}
    assert r["BatchNorm1d after a Linear"] == {"output": "bfloat16", "running_var": "float32"}


def test_last_batch_of_one():
    r = P.last_batch_of_one()
    assert r["last batch, drop_last=False"] == 1 and r["last batch, drop_last=True"] == 64
    step, text = r["error, drop_last=False"]
    assert step == 22 and "Expected more than 1 value per channel" in text
    assert r["error, drop_last=True"] is None


@pytest.mark.slow
def test_ddp_with_sync_batch_norm_equals_full_batch_training():
    results = launch(P.ddp_worker, 2, 5, timeout=120)
    ref = P.full_batch_reference(steps=5)
    for mode, bound in (("sync", 1e-5), ("plain", None)):
        diff = max((results[0][mode]["state"][k] - v).abs().max().item()
                   for k, v in ref.items() if v.is_floating_point())
        if bound is None:
            assert diff > 1e-3  # per-shard statistics: a different training run
        else:
            assert diff < bound
    plain = [r["plain"] for r in results]
    assert not torch.equal(plain[0]["after_train"], plain[1]["after_train"])
    assert torch.equal(plain[0]["after_forward"], plain[1]["after_forward"])  # broadcast
    assert all(v < 1e-12 for v in results[1]["compare"][0].values())


def _fake_curves():
    image = np.linspace(0, 1, 64).reshape(8, 8)
    return {kind: {"n": [2, 4, 8], "pure": [0.3, 0.6, 0.9], "mixed": [0.5, 0.6, 0.7],
                   "train": 0.2 + k / 10, "test": 0.95, "clean_image": image,
                   "image": image * 0.5 + k}
            for k, kind in enumerate(("contrast", "blur"))}


def test_tta_figure_states_and_purity():
    from bnbook.figures.production import tta_explorer

    fig = tta_explorer(_fake_curves())
    assert [c.name for c in fig.controls] == ["kind"]
    first = fig.png(kind="contrast")
    assert first == fig.png(kind="contrast")  # pure: same state, same bytes
    assert first != fig.png(kind="blur")
    frames, _ = fig.frames()
    assert len(frames) == 2


def test_tta_curves_match_the_table():
    data = load()
    model = P.trained_bn_mlp(data, steps=50)
    curves = P.tta_curves(model, data, kinds=("contrast",))
    table = P.tta(model, data)
    c = curves["contrast"]
    assert c["train"] == table["contrast"]["train"] and c["test"] == table["contrast"]["test"]
    assert np.allclose(c["image"], P.corrupt(data.x_test[:1], "contrast")[0].reshape(8, 8))
    assert len(c["pure"]) == len(c["n"]) == len(c["mixed"])
