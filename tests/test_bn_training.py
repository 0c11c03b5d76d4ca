"""The runs of "What BN does to training", checked against independent computations.

Nets are checked layer by layer; the unit read-out against a hand-written forward pass with
torch.nn.functional; percentiles against numpy; batch-statistic noise against exact enumeration
and a large Monte Carlo sample; the paper's step bounds against their definition; every figure
state is drawn from short runs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnbook.experiments import bn_training as bt
from bnbook.experiments import digits
from bnbook.figures import bn_training as fig


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load()


# -- nets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bn", [False, True])
def test_net_is_built_as_specified(bn: bool) -> None:
    torch.manual_seed(0)
    model = bt.net(bn=bn, depth=3, width=100, activation="sigmoid", init_std=0.1)
    kinds = [type(m) for m in model]
    hidden = [nn.Linear, nn.BatchNorm1d, nn.Sigmoid] if bn else [nn.Linear, nn.Sigmoid]
    assert kinds == hidden * 3 + [nn.Linear]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 100), (100, 100),
                                                                  (100, 100), (100, 10)]
    # BN replaces the bias of the layer it follows (the paper's g(BN(Wu))); the output keeps it
    assert all((m.bias is None) == bn for m in linears[:3])
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.1, rel=0.03)


def test_net_dropout_and_relu() -> None:
    model = bt.net(bn=False, depth=2, width=8, activation="relu", dropout=0.5)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.5 for d in drops)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"bn": 1}, "bn"), ({"bn": True, "depth": 0}, "depth"),
    ({"bn": True, "activation": "tanh"}, "activation"),
    ({"bn": True, "init_std": -1.0}, "init_std"), ({"bn": True, "dropout": 1.0}, "dropout"),
])
def test_net_rejects_bad_settings(kwargs: dict, word: str) -> None:
    with pytest.raises((TypeError, ValueError), match=word):
        bt.net(**kwargs)


def test_a_short_run_is_deterministic(data: digits.Digits) -> None:
    runs = [bt.run(data, steps=30, lr=0.5, seed=3, record_every=10, bn=True, dropout=0.2)
            for _ in range(2)]
    assert runs[0].test_accuracy == runs[1].test_accuracy
    assert runs[0].train_loss == runs[1].train_loss
    other = bt.run(data, steps=30, lr=0.5, seed=4, record_every=10, bn=True, dropout=0.2)
    assert other.train_loss != runs[0].train_loss


# -- reading one unit, percentiles -------------------------------------------------------------


def _by_hand(model: nn.Sequential, x: torch.Tensor, bn: bool) -> tuple[torch.Tensor, ...]:
    """Last hidden layer's sigmoid input and BN input, with F.linear and F.batch_norm."""
    layers = list(model)
    h, step = x, 3 if bn else 2
    for i in range(3):
        lin = layers[i * step]
        pre = F.linear(h, lin.weight, lin.bias)
        z = pre
        if bn:
            norm = layers[i * step + 1]
            z = F.batch_norm(pre, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                             training=False, eps=norm.eps)
        h = torch.sigmoid(z)
    return z, pre


@pytest.mark.parametrize("bn", [False, True])
def test_unit_inputs_match_a_forward_pass_by_hand(data: digits.Digits, bn: bool) -> None:
    torch.manual_seed(1)
    model = bt.net(bn=bn, init_std=0.3)
    digits.train(model, data, steps=20, lr=0.5)  # running statistics move off (0, 1)
    model.train()
    with torch.no_grad():
        z, pre = _by_hand(model, data.x_test, bn)
    got = bt.unit_inputs(model, data.x_test, unit=7)
    torch.testing.assert_close(got, z[:, 7])
    assert model.training  # the read-out restores the mode
    if bn:
        torch.testing.assert_close(bt.unit_inputs(model, data.x_test, unit=7, norm=True),
                                   pre[:, 7])
    else:
        with pytest.raises(ValueError, match="BatchNorm1d"):
            bt.unit_inputs(model, data.x_test, norm=True)


def test_percentiles_match_numpy() -> None:
    values = torch.randn(397, generator=torch.Generator().manual_seed(0)) * 3 + 1
    np.testing.assert_allclose(bt.percentiles(values),
                               np.percentile(values.numpy().astype(np.float64), [15, 50, 85]),
                               rtol=1e-12)


def test_activation_run_records_the_paper_quantities(data: digits.Digits) -> None:
    r = bt.activation_run(data, bn=True, steps=40, lr=0.1, record_every=20, unit=3)
    assert list(r.steps) == [0, 20, 40]
    assert r.inputs.shape == (3, len(data.x_test))
    np.testing.assert_allclose(r.percentiles, np.percentile(r.inputs, [15, 50, 85], axis=1).T,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r.inputs[-1], bt.unit_inputs(r.model, data.x_test, 3).numpy())
    assert r.curves.steps == [20, 40]


# -- sweeps ------------------------------------------------------------------------------------


def test_sweep_runs_each_value_with_and_without_bn(data: digits.Digits) -> None:
    s = bt.sweep(data, "lr", (0.1, 1.0), steps=20, record_every=10, activation="relu")
    assert s.values == (0.1, 1.0) and len(s.plain) == len(s.bn) == 2
    again = bt.run(data, steps=20, lr=1.0, record_every=10, bn=True, activation="relu")
    assert s.bn[1].test_accuracy == again.test_accuracy
    np.testing.assert_array_equal(s.final(True), [c.test_accuracy[-1] for c in s.bn])
    assert s.trained(True, threshold=0.0) == s.values
    assert s.trained(True, threshold=1.01) == ()
    with pytest.raises(ValueError, match="name"):
        bt.sweep(data, "momentum", (0.1,), steps=1)
    with pytest.raises(ValueError, match="increasing"):
        bt.sweep(data, "lr", (1.0, 0.1), steps=1)
    with pytest.raises(ValueError, match="lr"):
        bt.sweep(data, "init_std", (0.1,), steps=1)


# -- the noise of batch statistics -------------------------------------------------------------


def test_batch_noise_theory_is_exact_on_an_enumerable_population() -> None:
    """Every ordered batch of m = 3 draws (with replacement) from N = 5 values, enumerated."""
    pop = np.array([0.0, 1.0, 1.5, 4.0, -2.0])
    batches = np.array(list(itertools.product(pop, repeat=3)))  # (125, 3)
    mu = batches.mean(1)
    var = batches.var(1)  # biased, as BN
    th = bt.batch_statistics_theory(pop, 3)
    assert th.var_of_mean == pytest.approx(mu.var(), rel=1e-12)
    assert th.mean_of_var == pytest.approx(var.mean(), rel=1e-12)
    assert th.var_of_var == pytest.approx(var.var(), rel=1e-12)
    # without replacement: every 3-subset (order does not change the statistics)
    subsets = np.array(list(itertools.combinations(pop, 3)))  # (10, 3)
    th = bt.batch_statistics_theory(pop, 3, replace=False)
    assert th.var_of_mean == pytest.approx(subsets.mean(1).var(), rel=1e-12)
    assert th.mean_of_var == pytest.approx(subsets.var(1).mean(), rel=1e-12)
    assert th.var_of_var is None


@pytest.mark.parametrize("replace", [True, False])
def test_sampled_batch_statistics_agree_with_theory(replace: bool) -> None:
    pop = np.random.default_rng(0).gamma(2.0, size=500)  # skewed: μ₄ matters
    m, n = 8, 40_000
    mu, var = bt.batch_statistics(pop, m, n, replace=replace, seed=1)
    th = bt.batch_statistics_theory(pop, m, replace=replace)
    # standard errors of these Monte Carlo estimates are < 1.5% of the values at n = 40,000
    assert mu.mean() == pytest.approx(pop.mean(), abs=4 * math.sqrt(th.var_of_mean / n))
    assert mu.var() == pytest.approx(th.var_of_mean, rel=0.05)
    assert var.mean() == pytest.approx(th.mean_of_var, rel=0.03)
    if replace:
        assert var.var() == pytest.approx(th.var_of_var, rel=0.1)
    # each batch's statistics are those of its examples
    one_mu, one_var = bt.batch_statistics(pop, m, 1, replace=replace, seed=1)
    assert one_mu[0] == pytest.approx(mu[0]) and one_var[0] == pytest.approx(var[0])


def test_batch_statistics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        bt.batch_statistics(np.arange(5.0), 6, 10)
    with pytest.raises(ValueError, match="values"):
        bt.batch_statistics_theory(np.ones((2, 2)), 2)


# -- the paper's numbers -----------------------------------------------------------------------


def test_steps_to_target_follows_from_the_published_numbers() -> None:
    inception, baseline, x5, x30, sigmoid = bt.PAPER_RESULTS
    assert bt.steps_to_target(inception, 72.2) == (31.0e6, 31.0e6)
    assert bt.steps_to_target(x5, 72.2) == (2.1e6, 2.1e6)
    assert round(31.0 / 2.1) == 15  # the paper's "14 times fewer" rounds 14.8 down
    assert bt.steps_to_target(x5, 70.0) == (0.0, 2.1e6)  # crossed 70% before 72.2%
    assert bt.steps_to_target(x5, 72.5) == (2.1e6, None)  # after 72.2%, no upper bound
    assert bt.steps_to_target(x30, 74.0) == (2.7e6, 6.0e6)
    assert bt.steps_to_target(x30, 74.8) == (6.0e6, 6.0e6)
    assert bt.steps_to_target(inception, 72.3) == (math.inf, math.inf)
    assert bt.steps_to_target(baseline, 73.0) == (math.inf, math.inf)
    assert bt.steps_to_target(sigmoid, 60.0) == (0.0, None)


# -- figures -----------------------------------------------------------------------------------


def test_every_figure_state_renders(data: digits.Digits) -> None:
    plain = bt.activation_run(data, bn=False, steps=20, lr=0.1, record_every=5)
    normed = bt.activation_run(data, bn=True, steps=20, lr=0.1, record_every=5)
    lr = bt.sweep(data, "lr", (0.1, 10.0), steps=10, record_every=5, activation="relu")
    init = bt.sweep(data, "init_std", (0.1, 1.0), steps=10, lr=0.3, record_every=5)
    reg = bt.regularisation_runs(data, seeds=(0,), dropout=0.5, steps=10, lr=0.1,
                                 record_every=5, depth=1, width=16)
    pop = bt.unit_inputs(normed.model, data.x_train, norm=True).numpy()
    figures = [fig.activations_explorer(plain, normed), fig.lr_explorer(lr),
               fig.init_explorer(init), fig.regularisation_explorer(reg),
               fig.batch_noise_explorer(pop), fig.steps_to_target_explorer()]
    for f in figures:
        frames, index = f.frames()
        assert len(index) == len(f.states())
        assert len(frames) == len(index), f"{f}: two states draw the same picture"
        assert "bnfig-data" in f.static_html()
