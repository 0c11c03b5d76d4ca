"""Questions of exercise 13, exercises/13_sync_batch_norm.ipynb.

Synchronised batch norm simulated in one process: merging per-rank statistics with Chan's
formula, the forward pass and the input gradient over shards held by different ranks.
"""

from __future__ import annotations

import numpy as np

from bnbook.grading.checks import Array, Check, CheckFailed, Question, StudentCall, compare, unpack
from bnbook.grading.references import batch, bn_grads_ref, bn_train_ref, vec

EPS = 1e-5


def _shards(rng: np.random.Generator, sizes: list[int], c: int, offset: float = 0.0
            ) -> list[Array]:
    """Shards of one batch: each rank's part of it, with the ranks' means drifting apart."""
    whole = batch(rng, (sum(sizes), c), offset)
    whole += np.repeat(np.arange(len(sizes), dtype=float), sizes)[:, None] * rng.normal(0, 2, c)
    return np.split(whole, np.cumsum(sizes)[:-1])


def _part_stats(parts: list[Array]) -> tuple[Array, Array, Array]:
    c = parts[0].shape[1]
    count = np.array([float(len(p)) for p in parts])
    mean = np.stack([p.mean(0) if len(p) else np.zeros(c) for p in parts])  # (K, C)
    m2 = np.stack([((p - p.mean(0)) ** 2).sum(0) if len(p) else np.zeros(c)
                   for p in parts])  # (K, C)
    return count, mean, m2


def _check_list(out: object, sizes: list[int], what: str) -> Array:
    if not isinstance(out, list | tuple) or len(out) != len(sizes):
        raise CheckFailed(f"{what} should be a list with one array per rank ({len(sizes)}), "
                          f"got {type(out).__name__}.")
    parts = [np.asarray(o, dtype=np.float64) for o in out]
    for r, (p, n) in enumerate(zip(parts, sizes, strict=True)):
        if p.ndim != 2 or p.shape[0] != n:
            raise CheckFailed(f"{what}[{r}] has shape {p.shape}; rank {r} holds {n} examples.")
    return np.concatenate(parts)


def _q_merge() -> Question:
    def run(call: StudentCall, rng: np.random.Generator, sizes: list[int], offset: float) -> None:
        c = int(rng.integers(3, 6))
        parts = _shards(rng, sizes, c, offset)
        count, mean, m2 = _part_stats(parts)
        whole = np.concatenate(parts)
        n, got_mean, got_m2 = unpack(call(count, mean, m2), 3, "merge_stats")
        if not np.isclose(float(np.asarray(n, dtype=np.float64).ravel()[0]), len(whole)):
            raise CheckFailed(f"the total count should be {len(whole)}, got {n}.")
        ref_mean = whole.mean(0)
        nonempty = count > 0
        unweighted = "the parts' means must be weighted by their counts n_k."
        compare(got_mean, ref_mean, [(mean[nonempty].mean(0), unweighted),
                                     (mean.mean(0), unweighted)],
            "mean", atol=1e-8, rtol=1e-10)
        ref_m2 = ((whole - ref_mean) ** 2).sum(0)
        compare(got_m2, ref_m2, [
            (m2.sum(0), "you added the parts' M2 but not the spread between their means, "
             "Σ n_k (mean_k - mean)²."),
            ((m2[nonempty] / count[nonempty, None]).mean(0) * len(whole),
             "you averaged the parts' variances: that drops the spread between their means."),
        ], "M2", atol=1e-6, rtol=1e-8)

    def unequal(call: StudentCall, rng: np.random.Generator) -> None:
        k = int(rng.integers(2, 5))
        run(call, rng, [int(s) for s in rng.choice(np.arange(1, 10), k, replace=False)], 0.0)

    def empty_and_large(call: StudentCall, rng: np.random.Generator) -> None:
        run(call, rng, [int(rng.integers(2, 6)), 0, int(rng.integers(2, 6))], 1e4)

    return Question("q1", "Merge per-rank statistics (Chan)", "merge_stats", [
        Check("parts of unequal sizes and different means", 2, unequal),
        Check("an empty part, mean 1e4", 1, empty_and_large)])


def _global(x: Array) -> tuple[Array, Array]:
    return x.mean(0), x.var(0)


def _q_forward() -> Question:
    def run(call: StudentCall, rng: np.random.Generator, sizes: list[int], offset: float) -> None:
        c = int(rng.integers(3, 6))
        shards = _shards(rng, sizes, c, offset)
        w, b = vec(rng, c)
        whole = np.concatenate(shards)
        got = _check_list(call(shards, w, b, EPS), sizes, "sync_forward's output")
        ref = bn_train_ref(whole, w, b, EPS)
        per_shard = np.concatenate([
            (w * (s - s.mean(0)) / np.sqrt(s.var(0) + EPS) + b) if len(s) > 1 else s * 0 + b
            for s in shards])
        mean, var = _global(whole)
        n = len(whole)
        compare(got, ref, [
            (per_shard, "each rank normalised its shard with the shard's own statistics: that "
             "is what plain batch norm under data parallelism computes, not SyncBatchNorm."),
            (w * (whole - mean) / np.sqrt(var * n / (n - 1) + EPS) + b,
             "you normalised with the unbiased variance (N - 1); batch norm uses the biased one."),
        ], "the outputs", atol=1e-6, rtol=1e-6)

    def unequal(call: StudentCall, rng: np.random.Generator) -> None:
        k = int(rng.integers(2, 5))
        run(call, rng, [int(s) for s in rng.choice(np.arange(2, 10), k, replace=False)], 0.0)

    def empty_rank(call: StudentCall, rng: np.random.Generator) -> None:
        run(call, rng, [int(rng.integers(2, 6)), 0, int(rng.integers(3, 7))], 1e4)

    return Question("q2", "The synchronised forward pass", "sync_forward", [
        Check("ranks with unequal shard sizes", 2, unequal),
        Check("a rank with no examples, mean 1e4", 1, empty_rank)])


def _q_backward() -> Question:
    def run(call: StudentCall, rng: np.random.Generator, sizes: list[int]) -> None:
        c = int(rng.integers(3, 6))
        shards = _shards(rng, sizes, c)
        dys = [rng.normal(size=s.shape) for s in shards]
        w, _ = vec(rng, c)
        whole, dy = np.concatenate(shards), np.concatenate(dys)
        got = _check_list(call(dys, shards, w, EPS), sizes, "sync_backward's output")
        ref, _, _ = bn_grads_ref(dy, whole, w, EPS)
        mean, var = _global(whole)
        invstd = 1 / np.sqrt(var + EPS)
        local = []
        for s, g in zip(shards, dys, strict=True):
            xhat = (s - mean) * invstd
            local.append(w * invstd * (g - g.mean(0) - xhat * (g * xhat).mean(0)))
        compare(got, ref, [
            (np.concatenate(local), "you used the means of dy and dy·x̂ over your own shard; "
             "they must be over the whole batch (the backward all_reduce of Σdy and Σdy·x̂)."),
            (w * invstd * (dy - dy.mean(0)), "the term x̂ · mean(dy·x̂) is missing."),
        ], "dx", atol=1e-7, rtol=1e-6)

    def unequal(call: StudentCall, rng: np.random.Generator) -> None:
        k = int(rng.integers(2, 5))
        run(call, rng, [int(s) for s in rng.choice(np.arange(2, 10), k, replace=False)])

    def single(call: StudentCall, rng: np.random.Generator) -> None:
        run(call, rng, [1, int(rng.integers(3, 7)), 1])

    return Question("q3", "The synchronised input gradient", "sync_backward", [
        Check("ranks with unequal shard sizes", 2, unequal),
        Check("ranks holding N=1 example", 1, single)])


QUESTIONS: list[Question] = [_q_merge(), _q_forward(), _q_backward()]
