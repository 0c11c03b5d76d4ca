"""Tests of bnbook.experiments.alternatives: each run against an independent computation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnbook import norms
from bnbook.experiments import alternatives as alt
from bnbook.experiments import digits


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_make_norm_builds_the_named_layer_and_refuses_bad_kinds():
    assert isinstance(alt.make_norm("BN", image=False)(8), nn.BatchNorm1d)
    assert isinstance(alt.make_norm("BRN", image=True)(8), norms.BatchRenorm2d)
    gn = alt.make_norm("GN", image=True, groups=2)(8)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 2
    assert alt.make_norm("LN", image=False)(8).num_groups == 1
    assert alt.make_norm("none", image=False) is None
    with pytest.raises(ValueError, match="kind must be one of"):
        alt.make_norm("XN", image=False)
    with pytest.raises(ValueError, match="image=True"):
        alt.make_norm("IN", image=False)


def test_renorm_schedule_opens_the_clipping_linearly():
    layer = norms.BatchRenorm1d(4, r_max=1.0, d_max=0.0)
    model = nn.Sequential(layer)
    step = alt.renorm_schedule(100, r_max=3.0, d_max=5.0, warmup=0.1)
    expected = {5: (1.0, 0.0), 10: (1.0, 0.0), 30: (2.0, 2.5), 50: (3.0, 5.0), 100: (3.0, 5.0)}
    for t, (r_max, d_max) in expected.items():
        step(t, model, torch.tensor(0.0))
        assert layer.r_max == pytest.approx(r_max) and layer.d_max == pytest.approx(d_max)


def test_pooled_statistics_counts_and_values_match_each_normaliser():
    torch.manual_seed(0)
    n, c, h, w, g = 3, 8, 5, 4, 4
    x = torch.randn(n, c, h, w, dtype=torch.float64) * 2 + 1
    stats = alt.pooled_statistics(x, groups=g)
    expected = {"BN": (c, n * h * w), "LN": (n, c * h * w), "IN": (n * c, h * w),
                "GN": (n * g, c // g * h * w)}
    assert {k: (s["count"], s["m"]) for k, s in stats.items()} == expected
    # Independent: each normaliser's own variance, by a different reduction.
    var = {
        "BN": x.var(dim=(0, 2, 3), unbiased=False),  # (C,)
        "LN": x.var(dim=(1, 2, 3), unbiased=False),  # (N,)
        "IN": x.var(dim=(2, 3), unbiased=False).ravel(),  # (N·C,)
        "GN": x.reshape(n, g, -1).var(dim=2, unbiased=False).ravel(),  # (N·G,)
    }
    for kind, v in var.items():
        assert stats[kind]["std_min"] == pytest.approx(v.sqrt().min().item(), rel=1e-12)
        assert stats[kind]["std_max"] == pytest.approx(v.sqrt().max().item(), rel=1e-12)
    bn_means = x.mean(dim=(0, 2, 3))  # (C,)
    assert stats["BN"]["mean_spread"] == pytest.approx(bn_means.std().item(), rel=1e-12)


def test_padding_changes_batch_norm_and_never_layer_norm():
    out = alt.padding_dependence()
    assert out["LN_shorter_mate"] == 0.0 and out["LN_padded_to_12"] == 0.0
    assert out["BN_shorter_mate"] > 0.1 and out["BN_padded_to_12"] > 0.1
    assert out["padding_fraction_12"] == pytest.approx((24 - 10) / 24)


def test_incremental_decoding_layer_norm_exact_and_batch_norm_refuses_one_token():
    out = alt.incremental_decoding()
    assert out["LN_max_diff"] == 0.0
    assert "Expected more than 1 value per channel" in out["BN_train_error"]


def test_small_batch_sweep_is_deterministic_and_measures_train_mode():
    def run():
        return alt.small_batch_sweep(["BN", "LN"], [4], [0], steps=5, progress=None)

    first, second = run(), run()
    assert [(r.kind, r.batch_size, r.test_error, r.train_mode_error) for r in first] == [
        (r.kind, r.batch_size, r.test_error, r.train_mode_error) for r in second]
    # Independent: the same LN net, trained by digits.train directly, evaluated by hand.
    data = digits.load()
    torch.manual_seed(0)
    model = digits.mlp([64, 64, 64, 10], norm=lambda c: nn.GroupNorm(1, c))
    curves = digits.train(model, data, steps=5, lr=0.02, momentum=0.9, batch_size=4, seed=0,
                          record_every=5)
    ln = first[1]
    assert ln.test_error == [pytest.approx(1 - curves.final_accuracy)]
    with torch.no_grad():
        n = len(data.x_test) - len(data.x_test) % 4
        hits = (model.eval()(data.x_test[:n]).argmax(1) == data.y_test[:n]).float().mean()
    # LN does not depend on the batch: training mode on batches of 4 is eval mode.
    assert ln.train_mode_error == [pytest.approx(1 - hits.item(), abs=1e-6)]


def test_small_batch_sweep_equal_epochs_scales_steps(monkeypatch):
    seen = []
    real = digits.train

    def spy(model, data, **kwargs):
        seen.append((kwargs["batch_size"], kwargs["steps"]))
        return real(model, data, **{**kwargs, "steps": 1, "record_every": 1})

    monkeypatch.setattr(alt.digits, "train", spy)
    alt.small_batch_sweep(["none"], [2, 32], [0], steps=None, epochs=2, progress=None)
    assert seen == [(2, 1400), (32, round(2 * 1400 / 32))]


def test_non_iid_run_draws_class_restricted_batches_and_repeats(monkeypatch):
    data = digits.load()
    label_of = {row.numpy().tobytes(): int(y) for row, y in zip(data.x_train, data.y_train,
                                                                 strict=True)}
    batches: list[set[int]] = []
    real_mlp = digits.mlp

    def recording_mlp(widths, **kwargs):
        model = real_mlp(widths, **kwargs)

        def hook(module, args):
            if module.training:
                batches.append({label_of[r.numpy().tobytes()] for r in args[0]})

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(alt.digits, "mlp", recording_mlp)
    first = alt.non_iid_run("BN", batch_size=8, classes_per_batch=1, steps=20)
    assert len(batches) == 20 and all(len(b) == 1 for b in batches)
    assert len(set().union(*batches)) > 1  # the class changes from step to step
    assert alt.non_iid_run("BN", batch_size=8, classes_per_batch=1, steps=20) == first
    batches.clear()
    alt.non_iid_run("GN", batch_size=8, classes_per_batch=2, steps=10)
    assert len(batches) == 10 and all(len(b) <= 2 for b in batches)
    assert any(len(b) == 2 for b in batches)
    with pytest.raises(ValueError, match="classes_per_batch"):
        alt.non_iid_run("BN", classes_per_batch=0)


def test_grad_norms_by_depth_deterministic_and_one_per_layer():
    a = alt.grad_norms_by_depth(False, layers=3, d_model=16, seeds=(0,))
    b = alt.grad_norms_by_depth(False, layers=3, d_model=16, seeds=(0,))
    assert a == b and len(a) == 3 and all(g > 0 for g in a)
    # Independent: the last layer's gradient by hand, post-norm, one seed.
    torch.manual_seed(0)
    blocks = [nn.TransformerEncoderLayer(16, 4, 64, dropout=0.0, batch_first=True)
              for _ in range(3)]
    head = nn.Linear(16, 10)
    x = torch.randn(8, 16, 16)
    for block in blocks:
        x = block(x)
    F.cross_entropy(head(x.mean(dim=1)), torch.randint(0, 10, (8,))).backward()
    assert a[-1] == pytest.approx(blocks[-1].linear2.weight.grad.norm().item(), rel=1e-6)


def test_median_times_interleaves_and_takes_medians(monkeypatch):
    calls: list[str] = []
    clock = itertools.count()  # each perf_counter() call advances by 1 ...
    ticks = {"a": 1, "b": 5}  # ... and a call of "b" advances it by 5 more

    def make(name):
        def fn():
            calls.append(name)
            for _ in range(ticks[name]):
                next(clock)
        return fn

    monkeypatch.setattr(alt.time, "perf_counter", lambda: float(next(clock)))
    out = alt.median_times({"a": make("a"), "b": make("b")}, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert out == {"a": 2.0, "b": 6.0}
    with pytest.raises(ValueError, match="repeats"):
        alt.median_times({"a": make("a")}, repeats=0)


def test_layer_facts_and_frozen_batch_norm():
    bn = alt.layer_facts(lambda: nn.BatchNorm2d(4), (4, 4, 3, 3))
    gn = alt.layer_facts(lambda: nn.GroupNorm(2, 4), (4, 4, 3, 3))
    assert bn["batch_dependent"] and not bn["train_eq_eval"]
    assert bn["buffers"] == ["running_mean", "running_var", "num_batches_tracked"]
    assert not gn["batch_dependent"] and gn["train_eq_eval"] and gn["params"] == 8
    frozen = alt.FrozenBatchNorm2d(3).train()
    torch.manual_seed(0)
    for name in ("weight", "bias", "running_mean"):
        getattr(frozen, name).copy_(torch.randn(3))
    frozen.running_var.copy_(torch.rand(3) + 0.5)
    x = torch.randn(2, 3, 4, 4)
    view = (-1, 1, 1)
    by_hand = ((x - frozen.running_mean.view(view)) / (frozen.running_var.view(view) + 1e-5).sqrt()
               * frozen.weight.view(view) + frozen.bias.view(view))
    torch.testing.assert_close(frozen(x), by_hand)
    assert list(frozen.parameters()) == []


def test_small_cnn_shapes():
    model = alt.small_cnn(alt.make_norm("GN", image=True))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
