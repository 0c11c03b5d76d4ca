"""bnbook.gradcheck against known derivatives, torch autograd, and planted bugs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnbook import gradcheck as gc
from bnbook import reference as ref
from bnbook.figures import backprop as bp


def test_numerical_vjp_of_a_linear_map_is_its_transpose() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 6))
    x, dy = rng.normal(size=6), rng.normal(size=4)
    got = gc.numerical_vjp(lambda v: a @ v, x, dy)
    np.testing.assert_allclose(got, a.T @ dy, rtol=1e-8, atol=1e-9)


def test_numerical_vjp_matches_torch_autograd_on_a_coupled_function() -> None:
    """softmax couples every output to every input, like batch normalization does."""
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))

    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)  # (3, 5)

    tx = torch.tensor(x, requires_grad=True)
    torch.softmax(tx, dim=1).backward(torch.from_numpy(dy))
    got = gc.numerical_vjp(softmax, x, dy)
    np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-7, atol=1e-9)


def test_numerical_vjp_leaves_x_untouched() -> None:
    x = np.arange(6.0).reshape(2, 3)
    before = x.copy()
    gc.numerical_vjp(np.sin, x, np.ones_like(x))
    np.testing.assert_array_equal(x, before)


def _bn_problem(seed: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(1.5, 2.0, size=(8, 3)), rng.normal(size=3), rng.normal(size=3)


def _vjp(backward, w: np.ndarray, b: np.ndarray):
    return lambda x_, dy: backward(dy, ref.batch_norm_forward(x_, w, b)[1])


@pytest.mark.parametrize(
    "backward",
    [lambda dy, c: ref.batch_norm_backward_staged(dy, c)[0],
     lambda dy, c: ref.batch_norm_backward(dy, c)[0]],
    ids=["staged", "compact"],
)
def test_gradcheck_passes_the_reference_backward(backward) -> None:
    x, w, b = _bn_problem()
    result = gc.gradcheck(lambda v: ref.batch_norm_forward(v, w, b)[0], _vjp(backward, w, b), x)
    assert result.relative_error < 1e-8 and result.passed()
    assert result.dy.shape == x.shape and np.abs(result.dy).max() > 0.5


@pytest.mark.parametrize("bug", list(bp.PLANTED_BUGS))
def test_gradcheck_fails_a_planted_bug_with_its_default_random_dy(bug: str) -> None:
    x, w, b = _bn_problem()
    fn = lambda v: ref.batch_norm_forward(v, w, b)[0]  # noqa: E731
    result = gc.gradcheck(fn, _vjp(bp.PLANTED_BUGS[bug], w, b), x)
    assert result.relative_error > 1e-2 and not result.passed()


def test_default_dy_is_not_the_data_stream_of_the_same_seed() -> None:
    """x drawn with default_rng(0) and dy from the same stream would make dy affine in x."""
    x = np.random.default_rng(0).standard_normal((8, 3))
    result = gc.gradcheck(lambda v: 2.0 * v, lambda v, dy: 2.0 * dy, x, seed=0)
    assert abs(np.corrcoef(result.dy.ravel(), x.ravel())[0, 1]) < 0.9


def test_all_ones_dy_cannot_see_the_variance_path_bug() -> None:
    """The blind spot the chapter demonstrates: every gradient involved is ~0 under dy = 1."""
    x, w, b = _bn_problem()
    fn = lambda v: ref.batch_norm_forward(v, w, b)[0]  # noqa: E731
    ones = np.ones_like(x)
    wrong = gc.gradcheck(fn, _vjp(bp.backward_without_variance_path, w, b), x, ones)
    assert wrong.max_abs_error < 1e-6  # an absolute check passes the bug ...
    right = gc.gradcheck(fn, _vjp(lambda dy, c: ref.batch_norm_backward(dy, c)[0], w, b), x, ones)
    assert right.relative_error > 0.5  # ... and a relative one fails the right answer


def test_relative_error_edge_cases() -> None:
    a = np.array([3.0, -4.0])
    assert gc.relative_error(a, a) == 0.0
    assert gc.relative_error(a, -a) == pytest.approx(1.0)
    assert gc.relative_error(a, np.zeros(2)) == pytest.approx(1.0)
    assert gc.relative_error(np.zeros(2), np.zeros(2)) == 0.0
    b = np.array([3.0, -4.5])
    assert gc.relative_error(a, b) == pytest.approx(0.5 / (5.0 + np.sqrt(29.25)))
    assert gc.relative_error(a, b) == gc.relative_error(b, a)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: gc.numerical_vjp(np.sin, np.ones(3, np.float32), np.ones(3)),
         "x must be float64"),
        (lambda: gc.numerical_vjp(np.sin, np.ones(3), np.ones(3, np.float32)),
         "dy must be float64"),
        (lambda: gc.numerical_vjp(np.sin, np.ones(3), np.ones(4)), "dy must have the shape"),
        (lambda: gc.numerical_vjp(np.sin, np.ones(3), np.ones(3), h=0.0), "h must be > 0"),
        (lambda: gc.relative_error(np.ones(3), np.ones(2)), "same shape"),
        (lambda: gc.gradcheck(np.sin, lambda v, d: d[:2], np.ones(3)), "vjp must return"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
