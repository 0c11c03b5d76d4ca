"""Questions of exercise 11, exercises/11_gradient_predictiveness.ipynb.

The landscape along the gradient (the loss, the change of the gradient, the effective
β-smoothness) on quadratics, and the gradient of a weight in front of a BN layer, which is
orthogonal to that weight.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch reader knows

from bnbook.grading.checks import Array, Check, CheckFailed, Question, StudentCall, compare, unpack
from bnbook.grading.references import np64, t64


def _spd(rng: np.random.Generator, dim: int, low: float, high: float) -> Array:
    """A random symmetric positive definite matrix with eigenvalues spread from low to high."""
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q @ np.diag(np.geomspace(low, high, dim)) @ q.T


def _probe_ref(a: Array, theta: Array, etas: Array) -> tuple[Array, Array, Array]:
    """Losses and gradient changes along θ − ηg, and g, by torch autograd in float64."""
    at = t64(a)

    def value_grad(point: Array) -> tuple[float, Array]:
        t = t64(point).requires_grad_()
        loss = 0.5 * t @ at @ t
        loss.backward()
        return loss.item(), np64(t.grad)

    _, g = value_grad(theta)
    losses, changes = [], []
    for eta in etas:
        value, grad = value_grad(theta - eta * g)
        losses.append(value)
        changes.append(np.linalg.norm(grad - g))
    return np.array(losses), np.array(changes), g


def _q_probe() -> Question:
    def make(dim: int, low: float, high: float, k: int) -> Callable[[StudentCall,
                                                                     np.random.Generator], None]:
        def run(call: StudentCall, rng: np.random.Generator) -> None:
            a = _spd(rng, dim, low, high)
            theta = rng.normal(size=dim)
            etas = np.sort(rng.uniform(0.01, 1.0 / high, size=k))
            losses, changes, g = _probe_ref(a, theta, etas)
            got_losses, got_changes = unpack(call(a, theta, etas), 2, "probe_quadratic")
            up = np.array([0.5 * (theta + e * g) @ a @ (theta + e * g) for e in etas])
            compare(got_losses, losses, [
                (up, "you walked up the gradient: the step goes to theta - eta * g."),
                (np.full(k, 0.5 * theta @ a @ theta), "these are all the loss at theta; "
                 "evaluate it at theta - eta * g for each eta.")], "losses", atol=1e-9)
            norm_diff = np.array([abs(np.linalg.norm(a @ (theta - e * g)) - np.linalg.norm(g))
                                  for e in etas])
            compare(got_changes, changes, [
                (norm_diff, "this is the difference of the norms |grad'| - |g|; take the norm "
                 "of the difference |grad' - g|."),
                (changes / etas, "that is the change divided by eta; return the change itself.")],
                "gradient changes", atol=1e-9)
        return run

    return Question("q1", "The loss and the gradient along the gradient", "probe_quadratic", [
        Check("random 6-dimensional quadratic, five step sizes", 2, make(6, 0.5, 5.0, 5)),
        Check("badly conditioned quadratic (curvatures 0.01 to 100), one step size", 1,
              make(8, 0.01, 100.0, 1)),
    ])


def _q_beta() -> Question:
    def from_quadratic(call: StudentCall, rng: np.random.Generator) -> None:
        a = _spd(rng, 5, 0.3, 6.0)
        theta = rng.normal(size=5)
        etas = np.sort(rng.uniform(0.01, 0.15, size=4))
        _, changes, g = _probe_ref(a, theta, etas)
        want = np.linalg.norm(a @ g) / np.linalg.norm(g)  # the closed form on a quadratic
        got = call(etas, changes, float(np.linalg.norm(g)))
        compare(got, np.array(want), [
            (np.array((changes / etas).max()), "divide by the distance moved, eta * |g|, not by "
             "eta alone."),
            (np.array(changes.max()), "that is the largest change; divide each change by the "
             "distance moved, eta * |g|.")], "beta", atol=1e-9)

    def random_changes(call: StudentCall, rng: np.random.Generator) -> None:
        k = int(rng.integers(3, 7))
        etas = np.sort(rng.uniform(0.05, 2.0, size=k))
        changes = rng.uniform(0.1, 3.0, size=k)
        grad_norm = float(rng.uniform(0.5, 4.0))
        ratios = changes / (etas * grad_norm)
        got = call(etas, changes, grad_norm)
        compare(got, np.array(ratios.max()), [
            (np.array(ratios.mean()), "take the largest ratio over the step sizes, not the mean."),
            (np.array((changes / etas).max()), "divide by the distance moved, eta * |g|, not by "
             "eta alone.")], "beta", atol=1e-9)

    return Question("q2", "The effective beta-smoothness", "effective_beta", [
        Check("changes measured on a quadratic: beta = |A g| / |g|", 1, from_quadratic),
        Check("random changes, three to six step sizes", 1, random_changes),
    ])


def _bn_loss(u: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, eps: float) -> torch.Tensor:
    h = u @ w.T  # (N, units)
    if eps > 0:
        y = F.batch_norm(h, None, None, training=True, eps=eps)
    else:  # torch refuses eps = 0 in training; the same steps, written out
        y = (h - h.mean(0)) / h.var(0, correction=0).sqrt()
    return (y * dy).sum()


def _q_weight_grad() -> Question:
    def make(eps: float) -> Callable[[StudentCall, np.random.Generator], None]:
        def run(call: StudentCall, rng: np.random.Generator) -> None:
            n, d_in, units = int(rng.integers(6, 12)), int(rng.integers(3, 6)), 4
            u = rng.normal(size=(n, d_in)) * 2 + 1
            w = rng.normal(size=(units, d_in))
            dy = rng.normal(size=(n, units))
            wt = t64(w).requires_grad_()
            _bn_loss(t64(u), wt, t64(dy), eps).backward()
            ref = np64(wt.grad)
            h = u @ w.T
            std = np.sqrt(h.var(0) + eps)
            xh = (h - h.mean(0)) / std
            frozen = (dy / std).T @ u
            mean_only = ((dy - dy.mean(0)) / std).T @ u
            unbiased_std = np.sqrt(h.var(0, ddof=1) + eps)
            unbiased = ((dy - dy.mean(0) - xh * (dy * xh).mean(0)) / unbiased_std).T @ u
            got = call(u, w, dy, eps)
            compare(got, ref, [
                (frozen, "you treated the batch mean and variance as constants; BN's gradient "
                 "flows through them, and without that path the gradient is not orthogonal to "
                 "W."),
                (mean_only, "you kept the gradient through the mean but dropped the one through "
                 "the variance: subtract x_hat * mean(dy * x_hat) too."),
                (unbiased, "BN divides by the biased standard deviation (divide by N).")],
                "dL/dW", atol=1e-8, rtol=1e-6)
            if eps == 0:
                dots = np.abs((np.asarray(got) * w).sum(1))  # (units,)
                scale = np.linalg.norm(got, axis=1) * np.linalg.norm(w, axis=1)
                if (dots > 1e-8 * scale).any():
                    raise CheckFailed("with eps = 0 each row of dL/dW must be orthogonal to the "
                                      "same row of W.")
        return run

    return Question("q3", "The gradient of a weight in front of BN", "bn_weight_grad", [
        Check("eps = 1e-5, a random batch", 2, make(1e-5)),
        Check("eps = 0: orthogonal to every row of W", 1, make(0.0)),
    ])


QUESTIONS: list[Question] = [_q_probe(), _q_beta(), _q_weight_grad()]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
