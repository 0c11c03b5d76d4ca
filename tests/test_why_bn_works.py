"""The measurements of "Why it works", checked against independent computations.

ICS against a direct computation with module copies and load_state_dict; the gradient probe
against a quadratic whose answers are known in closed form; scale invariance against its two
identities; the gradient-explosion factor against π/(π − 1); and every figure state renders.
"""

from __future__ import annotations

import base64
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import figure_html
from bnbook.experiments import digits
from bnbook.experiments import why_bn_works as wbw
from bnbook.figures import why_bn_works as fig

# -- ICS -------------------------------------------------------------------------------------


def _direct_ics(model: nn.Sequential, x, y, lr: float) -> np.ndarray:
    """‖G_i − G'_i‖ with plain modules: step a copy with SGD, then paste layers below i."""
    linear_at = [k for k, m in enumerate(model) if isinstance(m, nn.Linear)]
    start = copy.deepcopy(model).train()
    stepped = copy.deepcopy(model).train()
    opt = torch.optim.SGD(stepped.parameters(), lr=lr)
    F.cross_entropy(stepped(x), y).backward()
    opt.step()
    base = copy.deepcopy(start)
    F.cross_entropy(base(x), y).backward()
    out = []
    for i, k in enumerate(linear_at):
        mixed = copy.deepcopy(start)
        stop = linear_at[i]  # every module before layer i's Linear takes its stepped values
        for j in range(stop):
            mixed[j].load_state_dict(stepped[j].state_dict())  # buffers: unused in train mode
        F.cross_entropy(mixed(x), y).backward()
        out.append((base[k].weight.grad - mixed[k].weight.grad).norm().item())
    return np.array(out)


@pytest.mark.parametrize("kind", ["standard", "bn"])
def test_ics_matches_a_direct_computation(kind: str) -> None:
    torch.manual_seed(0)
    model = wbw.net(kind, (12, 9, 8, 7, 5)).double()
    x = torch.randn(40, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (40,))
    distance, cosine = wbw.ics(model, x, y, lr=0.3)
    want = _direct_ics(model, x, y, 0.3)
    np.testing.assert_allclose(distance, want, rtol=1e-9, atol=1e-12)
    assert distance[0] == 0.0 and cosine[0] == pytest.approx(1.0)  # nothing below layer 1
    assert (distance[1:] > 1e-4).all()


def test_ics_leaves_the_model_alone() -> None:
    torch.manual_seed(1)
    model = wbw.net("noisy_bn", (6, 5, 4, 3))
    state = copy.deepcopy(model.state_dict())
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    wbw.ics(model, x, y, 0.1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_layer_groups_put_bn_parameters_with_their_linear() -> None:
    model = wbw.net("bn", (6, 5, 4, 3))
    assert wbw.layer_groups(model) == [["0.weight", "1.weight", "1.bias"],
                                       ["3.weight", "4.weight", "4.bias"],
                                       ["6.weight", "6.bias"]]


# -- the gradient probe on a quadratic ---------------------------------------------------------


def test_probe_on_a_quadratic_matches_the_closed_form() -> None:
    # L(θ) = ½ θᵀAθ: g = Aθ, L(θ − ηg) = ½ (θ − ηg)ᵀA(θ − ηg), ∇ change = ηA g,
    # effective β = max_η ‖ηAg‖/‖ηg‖ = ‖Ag‖/‖g‖.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a = q @ np.diag([0.5, 1.0, 2.0, 4.0, 9.0]) @ q.T
    theta = rng.normal(size=5)
    etas = [0.01, 0.05, 0.1, 0.3]
    at = torch.tensor(a)
    probe = wbw.probe_along_gradient(lambda t: 0.5 * t @ at @ t, torch.tensor(theta), etas)
    g = a @ theta
    want_loss = [0.5 * (theta - e * g) @ a @ (theta - e * g) for e in etas]
    want_change = [np.linalg.norm(e * a @ g) for e in etas]
    np.testing.assert_allclose(probe.loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(probe.grad_change, want_change, rtol=1e-10)
    assert probe.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
    assert probe.beta == pytest.approx(np.linalg.norm(a @ g) / np.linalg.norm(g), rel=1e-10)
    assert probe.predictiveness == pytest.approx(max(want_change), rel=1e-10)
    assert probe.loss_range == pytest.approx(max(want_loss) - min(want_loss), rel=1e-10)
    assert probe.beta <= 9.0 + 1e-9  # never above the largest curvature


def test_landscape_probe_of_a_linear_net_matches_the_generic_probe() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    probe = wbw.landscape_probe(model, x, y, [0.1, 0.5])

    def loss(flat):
        w, b = flat[:12].reshape(3, 4), flat[12:]
        return F.cross_entropy(x @ w.T + b, y)

    theta = torch.cat([model[0].weight.detach().flatten(), model[0].bias.detach()])
    want = wbw.probe_along_gradient(loss, theta, [0.1, 0.5])
    np.testing.assert_allclose(probe.loss, want.loss, rtol=1e-12)
    np.testing.assert_allclose(probe.grad_change, want.grad_change, rtol=1e-10)


# -- scale invariance --------------------------------------------------------------------------


def test_scale_invariant_gradient_is_orthogonal_and_scales_as_one_over_a() -> None:
    scales = [0.1, 0.5, 1.0, 3.0, 20.0]
    out = wbw.scale_invariance(scales)
    assert np.ptp(out["loss"]) < 1e-10 * abs(out["loss"]).max()
    assert np.abs(out["cosine"]).max() < 1e-12
    np.testing.assert_allclose(out["grad_norm"] * np.array(scales),
                               out["grad_norm"][2], rtol=1e-10)
    np.testing.assert_allclose(out["w_norm"] / np.array(scales), out["w_norm"][2], rtol=1e-12)


def test_measured_run_norm_grows_by_lr_squared_grad_squared_without_decay() -> None:
    data = digits.load()
    run = wbw.measured_run("bn", data, steps=30, lr=0.5, record_every=30)
    assert np.abs(run.grad_cosine).max() < 1e-3  # BN's eps breaks exactness only slightly
    np.testing.assert_allclose(run.norm_growth, run.predicted_growth, rtol=0.02,
                               atol=1e-6 * run.weight_norm.max() ** 2)
    assert (np.diff(run.weight_norm) > 0).all()


# -- gradient explosion ------------------------------------------------------------------------


def test_relu_bn_factor_is_one_half_over_the_relu_variance() -> None:
    # E[ReLU(z)²] = 1/2 and E[ReLU(z)] = 1/√(2π) for z ~ N(0, 1), by numerical integration
    z = np.linspace(-12, 12, 400_001)
    pdf = np.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    relu = np.maximum(z, 0)
    second, first = np.trapezoid(relu**2 * pdf, z), np.trapezoid(relu * pdf, z)
    assert wbw.RELU_BN_FACTOR == pytest.approx(0.5 / (second - first**2), rel=1e-9)
    assert wbw.RELU_BN_FACTOR == pytest.approx(1.4669, abs=1e-4)


def test_measured_factor_is_close_to_pi_over_pi_minus_one_at_large_batch() -> None:
    bn = [wbw.per_layer_factor(wbw.init_gradient_norms(24, 512, bn=True, width=256, seed=s))
          for s in range(2)]
    plain = wbw.per_layer_factor(wbw.init_gradient_norms(24, 512, bn=False, width=256))
    assert np.mean(bn) == pytest.approx(wbw.RELU_BN_FACTOR, rel=0.03)
    assert plain == pytest.approx(1.0, abs=0.05)
    small = wbw.per_layer_factor(wbw.init_gradient_norms(24, 4, bn=True, width=256))
    assert small > 1.5 * wbw.RELU_BN_FACTOR  # small batches explode faster


def test_per_layer_factor_recovers_a_geometric_sequence() -> None:
    norms = 3.0 * 1.3 ** np.arange(20)[::-1]
    assert wbw.per_layer_factor(norms) == pytest.approx(1.3, rel=1e-12)


# -- the other experiments ---------------------------------------------------------------------


def test_decoupled_least_squares_converges_and_starts_at_the_best_length() -> None:
    res = wbw.decoupled_least_squares(50.0, steps=400)
    assert res["gd"][-1] < 1e-6 * res["gd"][0]
    assert res["decoupled"][-1] < 1e-6 * res["decoupled"][0]
    assert (res["decoupled"] >= -1e-9).all() and (res["gd"] >= -1e-9).all()
    assert res["decoupled"][0] <= res["gd"][0]  # the optimal length for the start direction


@pytest.mark.parametrize("land", [fig.JAGGED, fig.SMOOTH])
def test_stability_limit_is_two_over_curvature(land) -> None:
    h = 1e-4
    curvature = (land.loss(h) - 2 * land.loss(0.0) + land.loss(-h)) / h**2
    assert curvature == pytest.approx(land.curvature, rel=1e-6)
    below = wbw.descend_1d(land.grad, 0.01, 0.95 * land.limit, 400)
    above = wbw.descend_1d(land.grad, 0.01, 1.05 * land.limit, 400)
    assert abs(below[-1]) < 1e-6 and abs(above[-1]) > 1e-3


def test_runs_are_deterministic() -> None:
    data = digits.load()
    a = wbw.measured_run("noisy_bn", data, steps=20, lr=0.1, measure_every=10, record_every=20)
    b = wbw.measured_run("noisy_bn", data, steps=20, lr=0.1, measure_every=10, record_every=20)
    assert a.curves.test_accuracy == b.curves.test_accuracy
    np.testing.assert_array_equal(a.ics, b.ics)
    np.testing.assert_array_equal(a.weight_norm, b.weight_norm)
    assert a.measured_steps == [1, 10, 20]
    # measuring does not change the run: the same run unmeasured has the same curves
    c = wbw.measured_run("noisy_bn", data, steps=20, lr=0.1, record_every=20)
    assert c.curves.test_accuracy == a.curves.test_accuracy
    np.testing.assert_array_equal(c.weight_norm, a.weight_norm)


def test_noisy_shift_draws_every_step_and_holds_when_asked() -> None:
    layer = wbw.NoisyShift(3, 2.0)
    x = torch.ones(4, 3)
    first, second = layer(x), layer(x)
    assert not torch.equal(first, second)
    layer.hold()
    assert torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), 2.0 * x)
    assert torch.equal(wbw.NoisyShift(3, 0.0).train()(x), x)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: wbw.net("whitened"), ValueError, "kind must be one of"),
        (lambda: wbw.NoisyShift(3, -1.0), ValueError, "magnitude must be"),
        (lambda: wbw.ics(wbw.net("bn"), torch.zeros(4, 64), torch.zeros(4).long(), 0.0),
         ValueError, "lr must be"),
        (lambda: wbw.probe_along_gradient(lambda t: t.sum(), torch.zeros(2, 2), [0.1]),
         ValueError, "theta must be a flat vector"),
        (lambda: wbw.probe_along_gradient(lambda t: t.sum(), torch.zeros(2), [-1.0]),
         ValueError, "each eta must be"),
        (lambda: wbw.init_gradient_norms(1, 8, bn=True), ValueError, "depth must be >= 2"),
        (lambda: wbw.init_gradient_norms(5, 1, bn=True), ValueError, "batch_size must be"),
        (lambda: wbw.per_layer_factor(np.ones(4)), ValueError, "norms must be 1-D"),
        (lambda: wbw.decoupled_least_squares(0.5), ValueError, "condition must be >= 1"),
        (lambda: wbw.descend_1d(float, 1.0, 0.0, 3), ValueError, "lr must be"),
    ],
)
def test_bad_arguments_are_named(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


# -- the figures -------------------------------------------------------------------------------




@pytest.mark.parametrize("factory", [fig.stability_explorer, fig.gradient_explosion_explorer])
def test_every_state_renders(factory) -> None:
    figure = factory()
    payload = figure_html.payload(figure.static_html())
    states = figure.states()
    assert 7 <= len(states) <= 30
    assert len(payload["index"]) == len(states)
    frames = [base64.b64decode(f) for f in payload["frames"]]
    assert all(f.startswith(b"\x89PNG") for f in frames)
    assert len(frames) == len(states)  # every state draws its own picture
    key = ",".join(str(c.index_of(c.default)) for c in figure.controls)
    assert frames[payload["index"][key]] == figure.png()


def test_stability_verdicts_follow_the_limits() -> None:
    verdicts = {}
    for lr in fig.STABILITY_RATES:
        verdicts[lr] = [fig.outcome(land, lr) for land in (fig.JAGGED, fig.SMOOTH)]
    for lr, (jagged, smooth) in verdicts.items():
        assert (jagged == "converges") == (lr < fig.JAGGED.limit)
        assert (smooth == "converges") == (lr < fig.SMOOTH.limit)
    assert {"converges", "does not settle", "diverges"} <= {v[0] for v in verdicts.values()}


def test_static_pictures_render() -> None:
    data = digits.load()
    runs = {k: wbw.measured_run(k, data, steps=20, lr=0.1, measure_every=10, record_every=10)
            for k in wbw.KINDS}
    pictures = [
        fig.picture(fig.draw_noise, curves={k: r.curves for k, r in runs.items()},
                    sweep={0.0: runs["bn"].curves, 1.0: runs["noisy_bn"].curves}),
        fig.picture(fig.draw_ics, runs=runs),
        fig.picture(fig.draw_smoothness, runs=runs),
        fig.picture(fig.draw_scale, runs={"no decay": runs["bn"]}, lr=0.1),
        fig.picture(fig.draw_decoupling, results={10.0: wbw.decoupled_least_squares(10.0)}),
    ]
    assert all(p.startswith(b"\x89PNG") for p in pictures)
    assert len(set(pictures)) == len(pictures)
