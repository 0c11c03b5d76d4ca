"""Questions of exercise 9, exercises/09_by_hand_and_scale.ipynb.

A forward pass by hand, and scale invariance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch reader knows

from bnbook.grading.checks import Array, Check, CheckFailed, Question, StudentCall, compare, unpack
from bnbook.grading.references import bn_train_ref, np64, t64

HAND_X = np.array([1.0, 3.0, 3.0, 9.0])
HAND_WEIGHT, HAND_BIAS, HAND_EPS = 2.0, 0.5, 1e-5


def _q_hand() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        x = HAND_X.reshape(4, 1)
        ref = bn_train_ref(x, np.array([HAND_WEIGHT]), np.array([HAND_BIAS]), HAND_EPS).ravel()
        out = call()
        mean, var = HAND_X.mean(), HAND_X.var()
        xh = (HAND_X - mean) / np.sqrt(var + HAND_EPS)
        ub = HAND_X.var(ddof=1)
        compare(out, ref, [
            (HAND_WEIGHT * (HAND_X - mean) / np.sqrt(ub) + HAND_BIAS,
             f"you used the unbiased variance {ub:g} (divided by 3); divide by 4: {var:g}."),
            (xh, "these are the normalised values x_hat; apply y = 2 * x_hat + 0.5."),
            (HAND_WEIGHT * (HAND_X - mean) / var + HAND_BIAS,
             "you divided by the variance; divide by the standard deviation."),
            (HAND_BIAS * xh + HAND_WEIGHT, "gamma and beta are swapped: y = 2 * x_hat + 0.5.")],
            "your four outputs", atol=2e-3, rtol=0)

    return Question("q1", "The forward pass by hand", "hand_forward",
                    [Check("the four outputs for x = (1, 3, 3, 9)", 2, run)])


def _q_scaled_stats() -> Question:
    def one(sign: float) -> Callable[[StudentCall, np.random.Generator], None]:
        def run(call: StudentCall, rng: np.random.Generator) -> None:
            z = rng.normal(size=(7, 3)) * 2 + 1
            a = sign * float(rng.uniform(0.3, 4.0))
            mean, var = z.mean(0), z.var(0)
            m2, v2 = unpack(call(mean, var, a), 2, "scaled_stats")
            compare(m2, (a * t64(z)).mean(0).numpy(), [(mean, "the mean scales with a.")],
                    "mean of a*z")
            compare(v2, (a * t64(z)).var(0, correction=0).numpy(), [
                (a * var, "the variance scales with a^2, not a."),
                (abs(a) * var, "the variance scales with a^2, not |a|."),
                (var, "the variance scales with a^2.")], "variance of a*z")
        return run

    return Question("q2", "Statistics of a scaled pre-activation", "scaled_stats", [
        Check("a > 0", 1, one(1.0)), Check("a < 0", 1, one(-1.0))], forbid_library_norms=True)


def _q_effective_eps() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        a = float(rng.uniform(0.2, 5.0))
        eps = float(10 ** rng.uniform(-3, -1))
        z = rng.normal(size=(9, 4))
        lhs = np64(F.batch_norm(t64(a * z), None, None, training=True, eps=eps))
        got = call(eps, a)
        if isinstance(got, np.ndarray) and got.ndim == 0:
            got = float(got)
        if not isinstance(got, float | int | np.floating) or not got > 0:
            raise CheckFailed(f"effective_eps should return a positive number, got {got!r}.")
        rhs = np64(F.batch_norm(t64(z), None, None, training=True, eps=float(got)))
        if np.allclose(lhs, rhs, atol=1e-9, rtol=1e-9):
            return
        for wrong, why in ((eps / a, "you divided by a; a^2 leaves the square root as a."),
                           (eps, "eps does not scale with the input, so the identity is exact "
                                 "only for eps = 0; with eps > 0 the effective eps is eps / a^2."),
                           (eps * a * a, "inverted: a * z has variance a^2 var, so "
                                         "(a z - a mean) / sqrt(a^2 var + eps) = "
                                         "(z - mean) / sqrt(var + eps / a^2).")):
            if np.isclose(float(got), wrong, rtol=1e-9):
                raise CheckFailed(why)
        raise CheckFailed(f"with your eps' = {float(got):.4g}, BN_eps(a*z) != BN_eps'(z) "
                          f"(a = {a:.3g}, eps = {eps:.3g}).")

    return Question("q3", "Scale invariance with eps > 0", "effective_eps",
                    [Check("BN_eps(a z) = BN_eps'(z) holds numerically", 2, run)])


def _q_grad_scaling() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        n, d_in, d_out = 8, 3, 4
        u, c = rng.normal(size=(n, d_in)), rng.normal(size=(n, d_out))
        w = rng.normal(size=(d_out, d_in))
        a = float(rng.uniform(0.3, 5.0))

        def grad_at(scale: float) -> Array:
            wt = t64(scale * w).requires_grad_()
            y = F.batch_norm(t64(u) @ wt.T, None, None, training=True, eps=1e-12)
            (y * t64(c)).sum().backward()
            return np64(wt.grad)

        g1, ga = grad_at(1.0), grad_at(a)
        compare(call(g1, a), ga, [
            (g1 * a, "the gradient shrinks as the weights grow: dL/d(aW) = (1/a) dL/dW."),
            (g1, "BN makes the loss invariant to the scale, not its gradient: dL/d(aW) = "
                 "(1/a) dL/dW."),
            (g1 / a ** 2, "one factor 1/a: differentiate L(aW) = L(W) with respect to W.")],
            "gradient at a*W", atol=1e-7, rtol=1e-5)

    return Question("q4", "Gradient at scaled weights", "grad_after_scaling",
                    [Check("matches autograd at a*W", 2, run)])


QUESTIONS: list[Question] = [_q_hand(), _q_scaled_stats(), _q_effective_eps(), _q_grad_scaling()]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
