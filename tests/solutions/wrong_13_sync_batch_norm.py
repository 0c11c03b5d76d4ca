"""Planted mistakes in exercises/13_sync_batch_norm.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    ("q1", """
def merge_stats(count, mean, m2):
    n = count.sum()
    return n, (count[:, None] * mean).sum(0) / n, m2.sum(0)
""", "spread between their means"),
    ("q1", """
def merge_stats(count, mean, m2):
    n = count.sum()
    merged = mean.mean(0)
    return n, merged, m2.sum(0) + (count[:, None] * (mean - merged) ** 2).sum(0)
""", "weighted by their counts"),
    ("q2", """
def sync_forward(shards, weight, bias, eps):
    return [weight * (s - s.mean(0)) / np.sqrt(s.var(0) + eps) + bias for s in shards]
""", "shard's own statistics"),
    ("q2", """
def sync_forward(shards, weight, bias, eps):
    whole = np.concatenate(shards)
    mu, var = whole.mean(0), whole.var(0, ddof=1)
    return [weight * (s - mu) / np.sqrt(var + eps) + bias for s in shards]
""", "unbiased variance"),
    ("q3", """
def sync_backward(dy_shards, x_shards, weight, eps):
    whole = np.concatenate(x_shards)
    mu, var = whole.mean(0), whole.var(0)
    invstd = 1 / np.sqrt(var + eps)
    out = []
    for g, s in zip(dy_shards, x_shards):
        xh = (s - mu) * invstd
        out.append(weight * invstd * (g - g.mean(0) - xh * (g * xh).mean(0)))
    return out
""", "over your own shard"),
]
