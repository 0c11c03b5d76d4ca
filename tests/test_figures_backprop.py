"""The backpropagation chapter's figures: the graph stepper follows the staged code, and the
planted bugs are wrong exactly where the chapter says they are."""

from __future__ import annotations

import base64
import inspect
import re

import numpy as np
import pytest
import torch

import figure_html
from bnbook import reference as ref
from bnbook.figures import backprop as bp


def _source_lines(fn) -> list[str]:
    """The code lines of ``fn``, comments and surrounding blanks stripped."""
    return [line.split("#")[0].strip() for line in inspect.getsource(fn).splitlines()]


def test_stepper_shows_the_staged_code_line_for_line_and_in_order() -> None:
    lines = _source_lines(ref.batch_norm_backward_staged)
    shown = [code for step in bp.BACKWARD_STEPS for code in step.code]
    positions = [lines.index(code) for code in shown]  # raises if a line is not in the source
    assert positions == sorted(positions)
    # Every line of the staged code that computes a gradient (d<name> = / +=) is in some step.
    grads = [ln for ln in lines if re.match(r"^d(?!y )\w+ \+?= ", ln)]
    assert sorted(grads) == sorted(shown)


def test_every_forward_edge_carries_gradient_back_exactly_once() -> None:
    traversed = [(p, c) for step in bp.BACKWARD_STEPS for p, c, _ in step.edges]
    assert sorted(traversed) == sorted(bp.GRAPH_EDGES)
    assert len(set(traversed)) == len(traversed)


def test_stepper_draws_a_different_picture_per_step() -> None:
    fig = bp.backward_graph_stepper()
    assert len(fig.states()) == len(bp.BACKWARD_STEPS) + 1 <= 60
    pictures = {fig.png(step=float(s)) for s in range(len(bp.BACKWARD_STEPS) + 1)}
    assert len(pictures) == len(bp.BACKWARD_STEPS) + 1
    with pytest.raises(ValueError, match="step must be in"):
        fig.png(step=float(len(bp.BACKWARD_STEPS) + 1))


def _cache_and_dy(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(10, 4))
    w, b = rng.normal(size=4), rng.normal(size=4)
    return ref.batch_norm_forward(x, w, b)[1], rng.normal(size=x.shape)


def test_planted_bugs_miss_exactly_the_term_they_are_named_after() -> None:
    cache, dy = _cache_and_dy()
    dx, _, _ = ref.batch_norm_backward(dy, cache)
    k = cache.weight * cache.inv_std / cache.m  # (1, C)
    sum_dy = dy.sum(axis=0, keepdims=True)  # (1, C)
    sum_dy_xhat = (dy * cache.x_hat).sum(axis=0, keepdims=True)  # (1, C)
    # Leaving out the variance path loses -k * x_hat * sum(dy * x_hat) ...
    np.testing.assert_allclose(bp.backward_without_variance_path(dy, cache) - dx,
                               k * cache.x_hat * sum_dy_xhat, rtol=1e-9, atol=1e-12)
    # ... and leaving out the mean path loses -k * sum(dy), the same for every example.
    np.testing.assert_allclose(bp.backward_without_mean_path(dy, cache) - dx,
                               np.broadcast_to(k * sum_dy, dx.shape), rtol=1e-9, atol=1e-12)


def test_all_ones_dy_hides_the_variance_bug_but_not_the_mean_bug() -> None:
    cache, _ = _cache_and_dy(1)
    ones = np.ones_like(cache.x)
    dx, _, _ = ref.batch_norm_backward(ones, cache)
    assert np.abs(dx).max() < 1e-12
    assert np.abs(bp.backward_without_variance_path(ones, cache)).max() < 1e-12
    caught = bp.backward_without_mean_path(ones, cache)
    np.testing.assert_allclose(caught, np.broadcast_to(cache.weight * cache.inv_std, dx.shape),
                               rtol=1e-9)


def test_blend_gradients_match_torch_and_are_linear_in_t() -> None:
    cache, r = bp.blend_problem()
    x_hat, dy, dx, _ = bp.blend_gradients(0.5, "variance path dropped")
    np.testing.assert_allclose(dy, 0.5 + 0.5 * r.ravel(), rtol=1e-12)
    tx = torch.tensor(cache.x, requires_grad=True)
    y = torch.nn.functional.batch_norm(tx, None, None, torch.tensor([1.5], dtype=torch.float64),
                                       torch.tensor([0.5], dtype=torch.float64), training=True)
    y.backward(torch.from_numpy(dy.reshape(-1, 1)))
    np.testing.assert_allclose(dx, tx.grad.numpy().ravel(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(x_hat, cache.x_hat.ravel())
    # dx is linear in dy and dx(ones) = 0, so dx(t) = t * dx(1): the figure's error grows from 0.
    for bug in bp.PLANTED_BUGS:
        _, _, dx1, wrong1 = bp.blend_gradients(1.0, bug)
        _, _, dxt, wrongt = bp.blend_gradients(0.25, bug)
        np.testing.assert_allclose(dxt, 0.25 * dx1, atol=1e-12)
        if bug == "variance path dropped":
            np.testing.assert_allclose(wrongt, 0.25 * wrong1, atol=1e-12)
    with pytest.raises(ValueError, match="bug must be one of"):
        bp.blend_gradients(0.5, "no such bug")


def test_blend_explorer_static_form_has_one_picture_per_state() -> None:
    fig = bp.upstream_blend_explorer()
    html = fig.static_html()
    payload = figure_html.payload(html)
    assert len(payload["index"]) == len(fig.states()) <= 60
    assert len(payload["frames"]) == len(fig.states())  # every state draws its own picture
    first = base64.b64decode(payload["frames"][payload["index"]["0,0"]])
    assert first == fig.png()
