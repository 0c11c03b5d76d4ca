"""Planted mistakes in exercises/02_running_stats.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    ("q1", """
def update_running_stats(running_mean, running_var, x, momentum=0.1):
    return (momentum * running_mean + (1 - momentum) * x.mean(0),
            momentum * running_var + (1 - momentum) * x.var(0, ddof=1))
""", "momentum is used as a decay"),
    ("q1", """
def update_running_stats(running_mean, running_var, x, momentum=0.1):
    return ((1 - momentum) * running_mean + momentum * x.mean(0),
            (1 - momentum) * running_var + momentum * x.var(0))
""", "biased running_var"),
    ("q1", """
def update_running_stats(running_mean, running_var, x, momentum=0.1):
    return running_mean.copy(), running_var.copy()
""", "update is missing"),
    ("q2", """
def cumulative_running_stats(batches):
    allx = np.concatenate(batches)
    return allx.mean(0), allx.var(0, ddof=1)
""", "pooled all samples"),
    ("q3", """
def batchnorm_inference(x, running_mean, running_var, weight, bias, eps=1e-5):
    return weight * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + bias
""", "batch's statistics"),
]
