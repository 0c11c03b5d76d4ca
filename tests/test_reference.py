"""bnbook.reference against torch (forward) and central finite differences (backward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnbook import reference as ref
from bnbook.gradcheck import numerical_vjp

SHAPES = [(7, 3), (4, 3, 5), (3, 2, 4, 5), (2, 3, 2, 3, 4)]


def _data(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input away from zero mean and unit variance, and non-trivial weight and bias."""
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=1.5, scale=2.0, size=shape)
    weight = rng.normal(size=shape[1])
    bias = rng.normal(size=shape[1])
    return x, weight, bias


def _numeric_grads(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, dy: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central differences of L = sum(y * dy) with respect to each input, so dL/dy is dy."""
    return (
        numerical_vjp(lambda x_: ref.batch_norm_forward(x_, weight, bias, eps)[0], x, dy),
        numerical_vjp(lambda w_: ref.batch_norm_forward(x, w_, bias, eps)[0], weight, dy),
        numerical_vjp(lambda b_: ref.batch_norm_forward(x, weight, b_, eps)[0], bias, dy),
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_torch(shape: tuple[int, ...]) -> None:
    x, w, b = _data(shape)
    y, cache = ref.batch_norm_forward(x, w, b, eps=1e-3)
    expected = torch.nn.functional.batch_norm(
        torch.from_numpy(x), None, None, torch.from_numpy(w), torch.from_numpy(b),
        training=True, eps=1e-3,
    )
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-12, atol=1e-12)
    assert y.shape == x.shape
    # The cache holds the biased variance (divided by m), the one used to normalise.
    axes = (0, *range(2, x.ndim))
    np.testing.assert_allclose(cache.var.ravel(), x.var(axis=axes, ddof=0), rtol=1e-12)
    assert cache.m == x.size // x.shape[1]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backward", [ref.batch_norm_backward_staged, ref.batch_norm_backward])
def test_backward_matches_finite_differences(shape: tuple[int, ...], backward) -> None:
    x, w, b = _data(shape, seed=1)
    # A random upstream gradient: with dy = 1 the true dx is 0 and a wrong formula can pass.
    dy = np.random.default_rng(2).normal(size=shape)
    _, cache = ref.batch_norm_forward(x, w, b, eps=1e-3)
    dx, dw, db = backward(dy, cache)
    ndx, ndw, ndb = _numeric_grads(x, w, b, dy, eps=1e-3)
    np.testing.assert_allclose(dx, ndx, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, ndw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, ndb, rtol=1e-5, atol=1e-7)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_torch_autograd(shape: tuple[int, ...]) -> None:
    x, w, b = _data(shape, seed=3)
    dy = np.random.default_rng(4).normal(size=shape)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    y = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True)
    y.backward(torch.from_numpy(dy))
    _, cache = ref.batch_norm_forward(x, w, b)
    want = (tx.grad, tw.grad, tb.grad)
    for got, w_ in zip(ref.batch_norm_backward(dy, cache), want, strict=True):
        np.testing.assert_allclose(got, w_.numpy(), rtol=1e-9, atol=1e-11)


def test_all_ones_upstream_gradient_hides_bugs() -> None:
    """With dy = 1 every output moves together, so dL/dx is 0 for ANY weight.

    A backward pass that forgot the whole x_hat (variance) term still returns ~0 here, so
    checking gradients with dy = 1 (as ``y.sum().backward()`` does) proves little. (Forgetting
    the mean term instead returns gamma * istd, which this check does catch.)
    """
    x, w, b = _data((6, 3, 4), seed=5)
    dy = np.ones_like(x)
    _, cache = ref.batch_norm_forward(x, w, b)
    dx, _, _ = ref.batch_norm_backward(dy, cache)
    np.testing.assert_allclose(dx, 0.0, atol=1e-12)
    # A wrong backward that drops the x_hat * sum(dy * x_hat) term is also ~0 under dy = 1 ...
    axes, m = cache.axes, cache.m
    sum_dy = dy.sum(axis=axes, keepdims=True)
    wrong = cache.weight * cache.inv_std / m * (m * dy - sum_dy)
    np.testing.assert_allclose(wrong, 0.0, atol=1e-12)
    # ... but a random dy tells the wrong formula from the right one.
    dy = np.random.default_rng(6).normal(size=x.shape)
    right, _, _ = ref.batch_norm_backward(dy, cache)
    sum_dy = dy.sum(axis=axes, keepdims=True)
    wrong = cache.weight * cache.inv_std / m * (m * dy - sum_dy)
    assert np.abs(right - wrong).max() > 1e-2


@pytest.mark.parametrize("shape", SHAPES)
def test_staged_equals_compact(shape: tuple[int, ...]) -> None:
    x, w, b = _data(shape, seed=7)
    dy = np.random.default_rng(8).normal(size=shape)
    _, cache = ref.batch_norm_forward(x, w, b)
    for staged, compact in zip(
        ref.batch_norm_backward_staged(dy, cache), ref.batch_norm_backward(dy, cache), strict=True
    ):
        np.testing.assert_allclose(staged, compact, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 9),
    c=st.integers(1, 5),
    spatial=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties_over_ragged_shapes(n: int, c: int, spatial: list[int], seed: int) -> None:
    shape = (n, c, *spatial)
    x, w, b = _data(shape, seed)
    dy = np.random.default_rng(seed + 1).normal(size=shape)
    y, cache = ref.batch_norm_forward(x, w, b)
    axes = cache.axes

    # x_hat has zero mean and (up to eps) unit biased variance per channel.
    np.testing.assert_allclose(cache.x_hat.mean(axis=axes), 0.0, atol=1e-10)
    var = x.var(axis=axes)
    np.testing.assert_allclose(cache.x_hat.var(axis=axes), var / (var + 1e-5), rtol=1e-9)

    dx, dw, db = ref.batch_norm_backward(dy, cache)
    sdx, sdw, sdb = ref.batch_norm_backward_staged(dy, cache)
    np.testing.assert_allclose(sdx, dx, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sdw, dw, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sdb, db, rtol=1e-8, atol=1e-10)

    # Invariants. Adding a constant to all of a channel's inputs does not change y, so dx sums
    # to 0 per channel. Scaling a channel about its mean would not change y either if eps were
    # 0, so dx is orthogonal to x_hat up to a term of relative size eps / (var + eps):
    # sum(dx * x_hat) = weight * inv_std * sum(dy * x_hat) * eps / (var + eps).
    scale = np.abs(dx).max() * dx.size + 1.0
    np.testing.assert_allclose(dx.sum(axis=axes), 0.0, atol=1e-12 * scale)
    eps_term = (cache.weight * cache.inv_std * cache.eps / (cache.var + cache.eps)).ravel() * dw
    np.testing.assert_allclose((dx * cache.x_hat).sum(axis=axes), eps_term, atol=1e-12 * scale)
    _, cache0 = ref.batch_norm_forward(x, w, b, eps=1e-300)  # eps -> 0: exactly orthogonal
    dx0, _, _ = ref.batch_norm_backward(dy, cache0)
    np.testing.assert_allclose((dx0 * cache0.x_hat).sum(axis=axes), 0.0, atol=1e-12 * scale)

    expected = torch.nn.functional.batch_norm(
        torch.from_numpy(x), None, None, torch.from_numpy(w), torch.from_numpy(b), training=True
    )
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-10, atol=1e-10)


def test_inference_matches_torch_eval() -> None:
    x, w, b = _data((5, 3, 4), seed=9)
    rng = np.random.default_rng(10)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    y = ref.batch_norm_inference(x, mean, var, w, b, eps=1e-4)
    expected = torch.nn.functional.batch_norm(
        *(torch.from_numpy(a) for a in (x, mean, var, w, b)), training=False, eps=1e-4
    )
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
def test_update_running_stats_matches_torch(momentum: float) -> None:
    x, _, _ = _data((6, 3, 2), seed=11)
    rng = np.random.default_rng(12)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    new_mean, new_var = ref.update_running_stats(mean, var, x, momentum=momentum)
    t_mean, t_var = torch.from_numpy(mean.copy()), torch.from_numpy(var.copy())
    torch.nn.functional.batch_norm(
        torch.from_numpy(x), t_mean, t_var, training=True, momentum=momentum
    )
    np.testing.assert_allclose(new_mean, t_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(new_var, t_var.numpy(), rtol=1e-12)
    # The inputs are not modified, and the stored variance is the unbiased one.
    assert not np.shares_memory(new_mean, mean)
    if momentum == 1.0:
        np.testing.assert_allclose(new_var, x.var(axis=(0, 2), ddof=1), rtol=1e-12)
        assert not np.allclose(new_var, x.var(axis=(0, 2), ddof=0))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: ref.batch_norm_forward(np.ones(4), np.ones(4), np.zeros(4)), "x"),
        (lambda: ref.batch_norm_forward(np.ones((4, 3)), np.ones(2), np.zeros(3)), "weight"),
        (lambda: ref.batch_norm_forward(np.ones((4, 3)), np.ones(3), np.zeros((3, 1))), "bias"),
        (lambda: ref.batch_norm_forward(np.ones((4, 3)), np.ones(3), np.zeros(3), eps=0), "eps"),
        (
            lambda: ref.batch_norm_inference(
                np.ones((4, 3)), np.zeros(2), np.ones(3), np.ones(3), np.zeros(3)
            ),
            "running_mean",
        ),
        (
            lambda: ref.batch_norm_inference(
                np.ones((4, 3)), np.zeros(3), np.ones(4), np.ones(3), np.zeros(3)
            ),
            "running_var",
        ),
        (lambda: ref.update_running_stats(np.zeros(3), np.ones(3), np.ones((1, 3))), "x"),
        (
            lambda: ref.update_running_stats(np.zeros(3), np.ones(3), np.ones((2, 3)), 1.5),
            "momentum",
        ),
    ],
)
def test_bad_arguments_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()


@pytest.mark.parametrize("backward", [ref.batch_norm_backward_staged, ref.batch_norm_backward])
def test_backward_rejects_misshapen_dy(backward) -> None:
    x, w, b = _data((4, 3), seed=13)
    _, cache = ref.batch_norm_forward(x, w, b)
    with pytest.raises(ValueError, match=r"^dy\b"):
        backward(np.ones((4, 2)), cache)
