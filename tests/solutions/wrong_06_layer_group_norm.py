"""Planted mistakes in exercises/06_layer_group_norm.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    # GroupNorm groups made of strided channels
    ("q2", """
def group_norm_forward(x, num_groups, weight, bias, eps=1e-5):
    n, c = x.shape[:2]
    xs = np.swapaxes(x.reshape((n, c // num_groups, num_groups) + x.shape[2:]), 1, 2)
    ax = tuple(range(2, xs.ndim))
    xh = (xs - xs.mean(ax, keepdims=True)) / np.sqrt(xs.var(ax, keepdims=True) + eps)
    sh = (1, -1) + (1,) * (x.ndim - 2)
    return np.swapaxes(xh, 1, 2).reshape(x.shape) * weight.reshape(sh) + bias.reshape(sh)
""", "consecutive channels"),
]
