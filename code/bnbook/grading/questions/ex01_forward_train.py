"""Questions of exercise 1, exercises/01_forward_train.ipynb.

The forward pass in training mode.
"""

from __future__ import annotations

import numpy as np

from bnbook.grading.checks import Check, Question, StudentCall, compare, unpack
from bnbook.grading.references import batch, bn_train_ref, norm_variants, vec


def _q_batch_stats() -> Question:
    def run_random(call: StudentCall, rng: np.random.Generator) -> None:
        n, c = int(rng.integers(5, 10)), int(rng.integers(11, 15))  # N != C: axis mix-ups show
        x = batch(rng, (n, c))
        mean, var = unpack(call(x), 2, "batch_stats")
        compare(mean, x.mean(axis=0), [
            (x.mean(axis=1), "you reduced over axis 1 (the features); batch statistics reduce "
                             "over axis 0, the batch."),
            (x.mean(), "you reduced over every axis; keep one statistic per feature (axis=0).")],
            "mean")
        compare(var, x.var(axis=0), [
            (x.var(axis=0, ddof=1), "you returned the unbiased variance (divided by N - 1). "
                                    "Batch norm normalises with the biased one (divide by N)."),
            (x.std(axis=0), "you returned the standard deviation; return the variance."),
            (x.var(axis=1), "you reduced over axis 1 (the features); reduce over axis 0."),
            (x.var(), "you reduced over every axis; keep one statistic per feature (axis=0).")],
            "var")

    def run_large_mean(call: StudentCall, rng: np.random.Generator) -> None:
        x = (1e4 + rng.normal(size=(3, 7))).astype(np.float32)
        mean, var = unpack(call(x), 2, "batch_stats")
        x64 = x.astype(np.float64)
        compare(mean, x64.mean(axis=0), [], "mean", atol=1e-2, rtol=1e-5)
        one_pass = (x * x).mean(axis=0) - x.mean(axis=0) ** 2
        compare(var, x64.var(axis=0), [
            (one_pass, "E[x^2] - E[x]^2 cancels catastrophically when the mean (1e4 here) is "
                       "large next to the spread: subtract the mean first, then square."),
            (x64.var(axis=0, ddof=1), "you returned the unbiased variance (divided by N - 1).")],
            "var (float32 input, mean 1e4)", atol=1e-2, rtol=1e-2)

    return Question("q1", "Batch mean and variance", "batch_stats", [
        Check("random (N, C) batch", 1, run_random),
        Check("ragged (3, 7) float32 batch with mean 1e4", 1, run_large_mean)])


def _q_forward() -> Question:
    def run_random(call: StudentCall, rng: np.random.Generator) -> None:
        n, c = int(rng.integers(6, 10)), int(rng.integers(11, 14))
        x = batch(rng, (n, c))
        w, b = vec(rng, c)
        ref = bn_train_ref(x, w, b, 1e-5)
        wrong_axis = ((x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
                      * w + b)
        compare(call(x, w, b, 1e-5), ref, norm_variants(x, w, b, 1e-5, (0,), [
            (wrong_axis, "you normalised each sample over its features (axis 1): that is "
                         "LayerNorm. Batch norm reduces over the batch, axis 0.")]), "y")

    def run_eps(call: StudentCall, rng: np.random.Generator) -> None:
        x = batch(rng, (5, 4))
        w, b = vec(rng, 4)
        compare(call(x, w, b, 0.5), bn_train_ref(x, w, b, 0.5),
                norm_variants(x, w, b, 0.5, (0,)), "y (eps=0.5)")

    def run_edge(call: StudentCall, rng: np.random.Generator) -> None:
        x = batch(rng, (3, 6))
        x[:, 1] = 2.5  # a constant channel: variance exactly 0
        x[:, 4] += 1e4  # a channel of mean 1e4
        w, b = vec(rng, 6)
        y = call(x, w, b, 1e-5)
        compare(y, bn_train_ref(x, w, b, 1e-5), norm_variants(x, w, b, 1e-5, (0,)),
                "y (N=3, a constant channel, a channel of mean 1e4)", atol=1e-5)

    return Question("q2", "Forward pass in training mode", "batchnorm_forward", [
        Check("random (N, C) batch, channels of mixed scale", 2, run_random),
        Check("eps argument honoured (eps=0.5)", 1, run_eps),
        Check("edge cases: N=3, constant channel, mean 1e4", 1, run_edge)])


QUESTIONS: list[Question] = [_q_batch_stats(), _q_forward()]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
