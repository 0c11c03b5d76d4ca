"""Questions of exercise 2, exercises/02_running_stats.ipynb.

Running statistics, momentum=None and eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch reader knows

from bnbook.grading.checks import Array, Check, Question, StudentCall, Variant, compare, unpack
from bnbook.grading.references import batch, bn_train_ref, np64, t64, vec


def _torch_running(rm: Array, rv: Array, batches: Sequence[Array], momentum: float | None
                   ) -> tuple[Array, Array]:
    bn = torch.nn.BatchNorm1d(rm.size, momentum=momentum, dtype=torch.float64).train()
    with torch.no_grad():
        bn.running_mean.copy_(t64(rm))
        bn.running_var.copy_(t64(rv))
        for xb in batches:
            bn(t64(xb))
    return np64(bn.running_mean), np64(bn.running_var)


def _q_update_running() -> Question:
    def variants(rm: Array, rv: Array, x: Array, m: float) -> tuple[list, list]:
        bm, bv, bvb = x.mean(0), x.var(0, ddof=1), x.var(0)
        vm = [(m * rm + (1 - m) * bm, "momentum is used as a decay (the 0.9 convention of "
               "Keras/TensorFlow). In PyTorch new = (1 - momentum) * old + momentum * batch."),
              (rm, "you returned the old running mean: the running-statistics update is missing."),
              (bm, "you returned the batch mean; blend it with the old running mean.")]
        vv = [((1 - m) * rv + m * bvb, "biased running_var: PyTorch stores the unbiased batch "
               "variance (divided by N - 1) in running_var, though it normalises with the "
               "biased one."),
              (m * rv + (1 - m) * bv, "momentum is used as a decay (the 0.9 convention). In "
               "PyTorch new = (1 - momentum) * old + momentum * batch."),
              (rv, "you returned the old running variance: the update is missing."),
              (bv, "you returned the batch variance; blend it with the old running variance.")]
        return vm, vv

    def one(call: StudentCall, rng: np.random.Generator, n: int, offset: float) -> None:
        c = 5
        rm, rv = rng.normal(size=c), rng.uniform(0.5, 2.0, c)
        x = batch(rng, (n, c), offset)
        m = float(rng.uniform(0.05, 0.45))
        ref_m, ref_v = _torch_running(rm, rv, [x], m)
        new_m, new_v = unpack(call(rm, rv, x, m), 2, "update_running_stats")
        vm, vv = variants(rm, rv, x, m)
        compare(new_m, ref_m, vm, "new running_mean", rtol=1e-7)
        compare(new_v, ref_v, vv, "new running_var", rtol=1e-7)

    return Question("q1", "Running statistics, PyTorch convention", "update_running_stats", [
        Check("random batch, random momentum", 2, lambda call, rng: one(call, rng, 9, 0.0)),
        Check("ragged batch (N=2) of mean 1e4", 1, lambda call, rng: one(call, rng, 2, 1e4))])


def _q_cumulative() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        c = 4
        sizes = rng.integers(2, 10, int(rng.integers(3, 6)))
        sizes[0], sizes[1] = 2, 9  # unequal sizes: pooling and averaging differ
        batches = [batch(rng, (int(s), c)) for s in sizes]
        ref_m, ref_v = _torch_running(np.zeros(c), np.ones(c), batches, None)
        ema_m, ema_v = _torch_running(np.zeros(c), np.ones(c), batches, 0.1)
        pooled = np.concatenate(batches)
        k = len(batches)
        mean, var = unpack(call(batches), 2, "cumulative_running_stats")
        pool_msg = ("you pooled all samples; momentum=None weighs every batch's statistic "
                    "equally, whatever the batch size.")
        ema_msg = ("this is the exponential average with momentum 0.1; momentum=None keeps the "
                   "plain average of the batch statistics.")
        init_msg = "you counted the initial running values (mean 0, var 1) as one more batch."
        compare(mean, ref_m, [(pooled.mean(0), pool_msg), (ema_m, ema_msg),
                              (ref_m * k / (k + 1), init_msg)], "running_mean")
        compare(var, ref_v, [
            (np.mean([b.var(0) for b in batches], 0), "biased running_var: average the "
             "unbiased batch variances (divided by N - 1)."),
            (pooled.var(0, ddof=1), pool_msg), (ema_v, ema_msg),
            ((ref_v * k + 1) / (k + 1), init_msg)], "running_var")

    return Question("q2", "momentum=None: the cumulative average", "cumulative_running_stats", [
        Check("3 to 5 batches of unequal sizes", 2, run)])


def _q_inference() -> Question:
    def one(call: StudentCall, rng: np.random.Generator, n: int) -> None:
        c = 6
        x = batch(rng, (n, c))
        rm, rv = rng.normal(size=c), rng.uniform(1e-4, 3.0, c)
        rv[0] = 1e-6  # tiny variance: eps placement matters
        w, b = vec(rng, c)
        ref = np64(F.batch_norm(t64(x), t64(rm), t64(rv), t64(w), t64(b), training=False, eps=1e-5))
        variants: list[Variant] = [
            (w * (x - rm) / (np.sqrt(rv) + 1e-5) + b, "eps is outside the square root."),
            (w * (x - rm) / (rv + 1e-5) + b, "you divided by the variance, not its square root."),
            ((x - rm) / np.sqrt(rv + 1e-5), "you forgot weight and bias.")]
        if n > 1:
            variants.insert(0, (bn_train_ref(x, w, b, 1e-5), "you normalised with the batch's "
                                "statistics; in eval mode batch norm uses running_mean and "
                                "running_var, so each sample's output ignores the rest."))
        compare(call(x, rm, rv, w, b, 1e-5), ref, variants, "y")

    return Question("q3", "Eval mode", "batchnorm_inference", [
        Check("random batch", 2, lambda call, rng: one(call, rng, 8)),
        Check("a single sample (N=1)", 1, lambda call, rng: one(call, rng, 1))])


QUESTIONS: list[Question] = [_q_update_running(), _q_cumulative(), _q_inference()]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
