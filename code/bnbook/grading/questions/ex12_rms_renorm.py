"""Questions of exercise 12, exercises/12_rms_renorm.ipynb.

RMSNorm forward and backward, and Batch Renormalization's r and d.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch reader knows

from bnbook.grading.checks import Array, Check, Question, StudentCall, compare, unpack
from bnbook.grading.references import np64, t64


def _rms_ref(x: Array, w: Array, eps: float) -> Array:
    return np64(F.rms_norm(t64(x), w.shape, t64(w), eps=eps))


def _q_rms_forward() -> Question:
    def run(which: str) -> Callable[[StudentCall, np.random.Generator], None]:
        def go(call: StudentCall, rng: np.random.Generator) -> None:
            n, d = int(rng.integers(3, 7)), int(rng.integers(5, 9))
            shift = 1e4 if which == "mean 1e4" else 2.0
            x = rng.normal(size=(n, d)) + shift
            if which == "constant":
                x[0] = 3.0
            w = rng.normal(1, 0.5, d)
            # A large eps, so that where it goes changes the answer (not at mean 1e4).
            eps = 1e-6 if which == "mean 1e4" else float(rng.uniform(0.05, 0.2))
            ms = (x * x).mean(-1, keepdims=True)
            variants = [
                (w * (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps),
                 "you subtracted the mean: that is LayerNorm. RMSNorm divides by the root mean "
                 "square of x itself."),
                (w * x / (np.sqrt(ms) + eps), "eps is outside the square root."),
                (w * x / np.sqrt((x * x).sum(-1, keepdims=True) + eps),
                 "use the mean of the squares, not their sum."),
                (w * x / np.sqrt((x * x).mean(0, keepdims=True) + eps),
                 "you reduced over the batch axis; RMSNorm works on each sample's features."),
            ]
            compare(call(x, w, eps), _rms_ref(x, w, eps), variants, "y", atol=1e-5, rtol=1e-6)
        return go

    return Question("q1", "RMSNorm, forward", "rms_norm_forward", [
        Check("random (N, D)", 1, run("random")),
        Check("constant row", 1, run("constant")),
        Check("mean 1e4", 1, run("mean 1e4"))])


def _q_rms_backward() -> Question:
    def go(call: StudentCall, rng: np.random.Generator) -> None:
        n, d = int(rng.integers(3, 7)), int(rng.integers(5, 9))
        x = rng.normal(size=(n, d)) * 2 + 1
        w = rng.normal(1, 0.5, d)
        dy = rng.normal(size=(n, d))
        eps = 1e-6
        xt, wt = t64(x).requires_grad_(), t64(w).requires_grad_()
        y = F.rms_norm(xt, (d,), wt, eps=eps)
        dx_ref, dw_ref = torch.autograd.grad(y, (xt, wt), t64(dy))
        dx, dw = unpack(call(dy, x, w, eps), 2, "rms_norm_backward")
        r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        compare(dx, np64(dx_ref), [
            (dy * w * r, "you treated the RMS as a constant: it depends on x, which adds "
                         "-x_hat * mean(g * x_hat) inside the bracket."),
            (r * (dy * w - (dy * w).mean(-1, keepdims=True)
                  - x * r * (dy * w * x * r).mean(-1, keepdims=True)),
             "you subtracted mean(g): that term belongs to LayerNorm, whose output is centred."),
        ], "dx", atol=1e-6)
        compare(dw, np64(dw_ref), [((dy * x).sum(0), "dweight is sum(dy * x_hat), with "
                                                     "x_hat = x / RMS(x), not sum(dy * x).")],
                "dweight", atol=1e-6)

    return Question("q2", "RMSNorm, backward", "rms_norm_backward", [
        Check("random (N, D)", 3, go)])


def _renorm_ref(x: Array, running_mean: Array, running_var: Array, eps: float, r_max: float,
                d_max: float) -> tuple[Array, Array]:
    mu = x.mean(0)
    sigma_b = np.sqrt(x.var(0) + eps)
    sigma = np.sqrt(running_var + eps)
    return np.clip(sigma_b / sigma, 1 / r_max, r_max), np.clip((mu - running_mean) / sigma,
                                                               -d_max, d_max)


def _q_renorm() -> Question:
    def run(which: str) -> Callable[[StudentCall, np.random.Generator], None]:
        def go(call: StudentCall, rng: np.random.Generator) -> None:
            n, c = int(rng.integers(4, 9)), int(rng.integers(5, 9))
            x = rng.normal(size=(n, c)) * rng.uniform(0.5, 3, c) + rng.normal(0, 2, c)
            rm = rng.normal(0, 2, c)
            rv = rng.uniform(0.2, 4, c)
            r_max, d_max = (3.0, 5.0) if which == "random" else (1.5, 0.3)
            ref_r, ref_d = _renorm_ref(x, rm, rv, 1e-5, r_max, d_max)
            r, d = unpack(call(x, rm, rv, 1e-5, r_max, d_max), 2, "renorm_r_d")
            sb, s = np.sqrt(x.var(0) + 1e-5), np.sqrt(rv + 1e-5)
            compare(r, ref_r, [
                (np.clip(np.sqrt(x.var(0, ddof=1) + 1e-5) / s, 1 / r_max, r_max),
                 "the batch std is the biased one (/ N), as in BatchNorm's forward."),
                (np.clip(s / sb, 1 / r_max, r_max), "r is sigma_batch / sigma_running, "
                                                    "not the other way round."),
                (sb / s, "r must be clipped to [1/r_max, r_max]."),
            ], "r", atol=1e-6)
            compare(d, ref_d, [
                ((x.mean(0) - rm) / s, "d must be clipped to [-d_max, d_max]."),
                (np.clip((x.mean(0) - rm) / sb, -d_max, d_max),
                 "d divides by the running std, not the batch std."),
            ], "d", atol=1e-6)
        return go

    return Question("q3", "Batch Renormalization, r and d", "renorm_r_d", [
        Check("random (N, C), r_max=3, d_max=5", 2, run("random")),
        Check("clipping active, r_max=1.5, d_max=0.3", 2, run("clip"))])


QUESTIONS: list[Question] = [_q_rms_forward(), _q_rms_backward(), _q_renorm()]
