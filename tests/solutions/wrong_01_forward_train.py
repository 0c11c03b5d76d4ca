"""Planted mistakes in exercises/01_forward_train.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    # q1: the batch statistics
    ("q1", """
def batch_stats(x):
    return x.mean(axis=0), x.var(axis=0, ddof=1)
""", "unbiased variance"),
    ("q1", """
def batch_stats(x):
    return x.mean(axis=1), x.var(axis=1)
""", "reduced over axis 1"),
    ("q1", """
def batch_stats(x):
    mean = x.mean(axis=0)
    return mean, (x * x).mean(axis=0) - mean ** 2
""", "cancels catastrophically"),
    # q2: the forward pass
    ("q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return weight * (x - x.mean(0)) / (x.std(0) + eps) + bias
""", "eps is outside the square root"),
    ("q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return weight * (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps) + bias
""", "unbiased variance"),
    ("q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return weight * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + bias
""", "ignored the eps argument"),
    ("q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    with np.errstate(all="ignore"):
        return weight * (x - x.mean(0)) / x.std(0) + bias
""", "nan or inf"),
    ("q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    m, v = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    return weight * (x - m) / np.sqrt(v + eps) + bias
""", "that is LayerNorm"),
]
