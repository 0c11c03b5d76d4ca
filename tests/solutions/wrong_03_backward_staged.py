"""Planted mistakes in exercises/03_backward_staged.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    # the path through the mean left out; x where x_hat belongs
    ("q2", """
def bn_backward_staged(dy, x, weight, eps=1e-5):
    std = np.sqrt(x.var(0) + eps)
    xh = (x - x.mean(0)) / std
    dx = weight / std * (dy - xh * (dy * xh).mean(0))
    return dx, (dy * xh).sum(0), dy.sum(0)
""", "sum over the batch of dx is not 0"),
    ("q1", """
def bn_param_grads(dy, x, eps=1e-5):
    return (dy * x).sum(0), dy.sum(0)
""", "you used x"),
]
