"""The "Why normalize" chapter's numbers and figures, checked against independent computations.

Saturation statistics are recomputed with torch.sigmoid, autograd slopes and
torch.nn.functional.batch_norm; the runaway-bias runs are checked against their closed form and
against finite differences of the loss, with and without the mean held fixed.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
import torch

import figure_html
from bnbook import experiments
from bnbook.figures import why_normalize as wn_fig

# -- saturation --------------------------------------------------------------------------------


def _autograd_slope(x: np.ndarray) -> np.ndarray:
    """g'(x) from torch.sigmoid and autograd, independent of experiments.sigmoid_slope."""
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.sigmoid(t).sum().backward()
    return t.grad.numpy()


def test_sigmoid_and_slope_match_torch() -> None:
    xs = np.linspace(-40.0, 40.0, 801)
    np.testing.assert_allclose(experiments.sigmoid(xs), torch.sigmoid(torch.tensor(xs)).numpy(),
                               rtol=1e-13, atol=1e-300)
    # Autograd's slope s·(1 − s) loses digits where s rounds towards 1, so it is the reference
    # only for x <= 0; the positive side follows from the symmetry g'(x) = g'(−x).
    negative = xs[xs <= 0]
    np.testing.assert_allclose(experiments.sigmoid_slope(negative), _autograd_slope(negative),
                               rtol=1e-12, atol=0)
    np.testing.assert_array_equal(experiments.sigmoid_slope(xs), experiments.sigmoid_slope(-xs))
    np.testing.assert_allclose(experiments.sigmoid_slope(xs[xs > 0]),
                               _autograd_slope(xs[xs > 0]), rtol=0, atol=1e-15)
    assert experiments.sigmoid_slope(0.0) == 0.25
    assert experiments.sigmoid_slope(5.0) == pytest.approx(0.0066, abs=5e-5)


def test_flat_edge_is_where_the_slope_falls_to_a_tenth_of_its_peak() -> None:
    edge = experiments.FLAT_EDGE
    peak = _autograd_slope(np.array([0.0]))[0]
    assert _autograd_slope(np.array([edge]))[0] == pytest.approx(0.1 * peak, rel=1e-12)
    inside, outside = _autograd_slope(np.array([edge - 1e-6, edge + 1e-6]))
    assert inside > 0.1 * peak > outside


def _independent_stats(drift: float, bn: bool, m: int = 256, seed: int = 0,
                       eps: float = 1e-5) -> tuple[float, float]:
    z = np.random.default_rng(seed).normal(size=m)
    z = (z - z.mean()) / z.std()
    x = torch.tensor(drift + z, dtype=torch.float64).reshape(m, 1)  # (m, C=1)
    if bn:
        x = torch.nn.functional.batch_norm(x, None, None, training=True, eps=eps)
    slope = _autograd_slope(x.ravel().numpy())
    peak = _autograd_slope(np.array([0.0]))[0]
    return float(np.mean(slope < 0.1 * peak)), float(slope.mean())


@pytest.mark.parametrize("drift", [-6.0, -3.5, 0.0, 2.0, 4.0, 5.0])
@pytest.mark.parametrize("bn", [False, True])
def test_saturation_stats_match_an_independent_computation(drift: float, bn: bool) -> None:
    fraction, mean_slope = experiments.saturation_stats(drift, bn)
    want_fraction, want_slope = _independent_stats(drift, bn)
    assert fraction == want_fraction
    assert mean_slope == pytest.approx(want_slope, rel=1e-10)


def test_drift_flattens_the_batch_and_batch_norm_undoes_it() -> None:
    off = [experiments.saturation_stats(d, False) for d in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)]
    fractions, slopes = zip(*off, strict=True)
    assert fractions[0] == 0.0 and fractions[-1] > 0.95
    assert all(a <= b for a, b in zip(fractions, fractions[1:], strict=False))
    assert all(a > b for a, b in zip(slopes, slopes[1:], strict=False))
    on = [experiments.saturation_stats(d, True) for d in np.arange(-6.0, 6.5, 1.0)]
    assert all(f == 0.0 for f, _ in on)
    assert max(s for _, s in on) - min(s for _, s in on) < 1e-12
    assert on[0][1] == pytest.approx(off[0][1], rel=1e-4)  # standardised = undrifted (up to eps)


def test_slope_through_depth_is_the_mean_product_of_slopes() -> None:
    assert experiments.slope_through_depth(4.0, False, 1) == pytest.approx(
        experiments.saturation_stats(4.0, False)[1], rel=1e-14)
    for bn in (False, True):
        product = np.ones(256)
        for seed in range(3):
            z = np.random.default_rng(seed).normal(size=256)
            z = (z - z.mean()) / z.std()
            x = torch.tensor(2.0 + z).reshape(256, 1)
            if bn:
                x = torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)
            product *= _autograd_slope(x.ravel().numpy())
        got = experiments.slope_through_depth(2.0, bn, 3)
        assert got == pytest.approx(product.mean(), rel=1e-10)


# -- the runaway bias --------------------------------------------------------------------------


def _loss(run: experiments.RunawayBiasRun, b: float, frozen_mean: float | None) -> float:
    """ℓ(b) in float64 NumPy; with ``frozen_mean`` the mean is held fixed (the naive view)."""
    x = run.u + b
    mean = x.mean() if frozen_mean is None else frozen_mean
    return 0.5 * float(np.mean((x - mean - run.target) ** 2))


def test_naive_bias_runs_away_at_the_predicted_rate_while_nothing_else_moves() -> None:
    run = experiments.runaway_bias("naive", steps=60, lr=0.05, target_mean=-2.0, seed=3)
    grad_xhat = (run.x_hat[0] - run.target) / run.u.size  # ∂ℓ/∂x̂, (m,)
    rate = run.lr * abs(grad_xhat.sum())
    assert rate == pytest.approx(0.05 * 2.0, rel=1e-12)  # |Σ ∂ℓ/∂x̂| = |mean(t)|
    np.testing.assert_allclose(run.bias, -0.1 * np.arange(61), rtol=0, atol=1e-12)
    np.testing.assert_allclose(run.grad, grad_xhat.sum(), rtol=0, atol=1e-12)
    assert np.ptp(run.loss) < 1e-13
    assert np.abs(run.x_hat - run.x_hat[0]).max() < 1e-13
    assert run.target.mean() == pytest.approx(-2.0, abs=1e-14)


@pytest.mark.parametrize("step", [0, 7])
def test_naive_gradient_is_the_derivative_with_the_mean_held_fixed(step: int) -> None:
    run = experiments.runaway_bias("naive", steps=10, lr=0.3, target_mean=0.7, seed=1)
    b = run.bias[step]
    frozen = float((run.u + b).mean())
    h = 1e-5
    fd = (_loss(run, b + h, frozen) - _loss(run, b - h, frozen)) / (2 * h)
    assert run.grad[step] == pytest.approx(fd, abs=1e-8)
    assert abs(run.grad[step]) > 0.5  # far from the true derivative, 0
    true_fd = (_loss(run, b + h, None) - _loss(run, b - h, None)) / (2 * h)
    assert abs(true_fd) < 1e-9


def test_aware_gradient_is_zero_to_rounding_and_matches_finite_differences() -> None:
    run = experiments.runaway_bias("aware", steps=50, lr=0.1, target_mean=1.0)
    assert np.abs(run.grad).max() < 4 * np.finfo(np.float64).eps
    assert np.abs(run.bias).max() < 1e-14
    assert np.ptp(run.loss) < 1e-15
    h = 1e-4
    fd = (_loss(run, h, None) - _loss(run, -h, None)) / (2 * h)
    assert abs(fd) < 1e-10 and abs(run.grad[0] - fd) < 1e-10
    # Same batch and target as the naive run, so both start from the same loss and x̂.
    naive = experiments.runaway_bias("naive", steps=50, lr=0.1, target_mean=1.0)
    assert naive.loss[0] == run.loss[0]
    np.testing.assert_array_equal(naive.x_hat[0], run.x_hat[0])


def test_float32_runs_agree_with_float64_to_float32_rounding() -> None:
    for mode in ("naive", "aware"):
        r32 = experiments.runaway_bias(mode, steps=20, dtype=torch.float32)
        r64 = experiments.runaway_bias(mode, steps=20, dtype=torch.float64)
        np.testing.assert_allclose(r32.bias, r64.bias, rtol=0, atol=1e-5)
        np.testing.assert_allclose(r32.loss, r64.loss, rtol=1e-6)
    aware32 = experiments.runaway_bias("aware", steps=20, dtype=torch.float32)
    assert np.abs(aware32.grad).max() < 4 * np.finfo(np.float32).eps


def test_a_zero_mean_target_gives_the_naive_bias_nothing_to_chase() -> None:
    run = experiments.runaway_bias("naive", steps=30, target_mean=0.0)
    assert np.abs(run.bias).max() < 1e-13


def test_run_shapes() -> None:
    run = experiments.runaway_bias("naive", steps=5, m=9)
    assert run.bias.shape == run.loss.shape == (6,)
    assert run.grad.shape == (5,) and run.x_hat.shape == (6, 9)
    assert run.u.shape == run.target.shape == (9,)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: experiments.runaway_bias("lazy"), ValueError, "mode must be one of"),
        (lambda: experiments.runaway_bias(steps=-1), ValueError, "steps must be >= 0"),
        (lambda: experiments.runaway_bias(steps=2.5), TypeError, "steps must be an int"),
        (lambda: experiments.runaway_bias(lr=0.0), ValueError, "lr must be > 0"),
        (lambda: experiments.runaway_bias(lr=math.nan), ValueError, "lr must be finite"),
        (lambda: experiments.runaway_bias(m=1), ValueError, "m must be >= 2"),
        (lambda: experiments.runaway_bias(dtype=torch.int64), ValueError, "dtype must be"),
        (lambda: experiments.runaway_bias(target_mean="1"), TypeError, "target_mean must be"),
        (lambda: experiments.saturation_stats(1.0, bn="yes"), TypeError, "bn must be True"),
        (lambda: experiments.saturation_stats(1.0, True, eps=0.0), ValueError, "eps must be"),
        (lambda: experiments.saturation_batch(math.inf), ValueError, "drift must be finite"),
        (lambda: experiments.slope_through_depth(1.0, False, 0), ValueError, "layers must be"),
    ],
)
def test_bad_arguments_are_named(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


# -- the figures -------------------------------------------------------------------------------
# Each figure's static form is rendered once (every state) and shared by the tests below.




class _Rendered:
    def __init__(self, figure) -> None:
        self.figure = figure
        self.payload = figure_html.payload(figure.static_html())
        self.frames = [base64.b64decode(f) for f in self.payload["frames"]]

    def picture(self, **params) -> bytes:
        """The static form's picture for one state, looked up as the page's script does."""
        key = ",".join(str(c.index_of(params[c.name])) for c in self.figure.controls)
        return self.frames[self.payload["index"][key]]


@pytest.fixture(scope="module")
def saturation() -> _Rendered:
    return _Rendered(wn_fig.saturation_explorer())


@pytest.fixture(scope="module")
def runaway() -> _Rendered:
    return _Rendered(wn_fig.runaway_bias_explorer())


@pytest.mark.parametrize("name", ["saturation", "runaway"])
def test_every_state_renders_as_its_own_picture(name: str, request) -> None:
    rendered = request.getfixturevalue(name)
    states = rendered.figure.states()
    assert len(states) <= 60
    assert len(rendered.payload["index"]) == len(states)
    assert all(f.startswith(b"\x89PNG") for f in rendered.frames)
    # every position of every control shows a different picture
    assert len(rendered.frames) == len(states)
    defaults = rendered.figure.defaults
    assert rendered.picture(**defaults) == rendered.figure.png(**defaults)


def test_batch_norm_toggle_changes_the_saturation_picture(saturation: _Rendered) -> None:
    for drift in (-4.0, 0.0, 5.0):
        assert saturation.picture(drift=drift, bn=True) != saturation.picture(drift=drift,
                                                                              bn=False)
    assert saturation.picture(drift=5.0, bn=False) != saturation.picture(drift=-5.0, bn=False)


def test_runaway_figure_modes_differ_and_the_steps_move_it(runaway: _Rendered) -> None:
    assert runaway.picture(step=50, mode="naive") != runaway.picture(step=50, mode="aware")
    assert runaway.picture(step=10, mode="naive") != runaway.picture(step=20, mode="naive")
    assert {c.name for c in runaway.figure.controls} == {"step", "mode"}
