"""Planted mistakes in exercises/05_spatial_bn.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    ("q1", """
def spatial_batchnorm_forward(x, weight, bias, eps=1e-5):
    ax = tuple(range(2, x.ndim)); sh = (1, -1) + (1,) * (x.ndim - 2)
    m, v = x.mean(ax, keepdims=True), x.var(ax, keepdims=True)
    return weight.reshape(sh) * (x - m) / np.sqrt(v + eps) + bias.reshape(sh)
""", "InstanceNorm"),
    ("q1", """
def spatial_batchnorm_forward(x, weight, bias, eps=1e-5):
    sh = (1, -1) + (1,) * (x.ndim - 2)
    m, v = x.mean(0, keepdims=True), x.var(0, keepdims=True)
    return weight.reshape(sh) * (x - m) / np.sqrt(v + eps) + bias.reshape(sh)
""", "batch axis only"),
]
