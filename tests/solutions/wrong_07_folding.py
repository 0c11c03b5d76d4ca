"""Planted mistakes in exercises/07_folding.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    ("q1", """
def fold_bn_into_linear(weight, bias, running_mean, running_var, bn_weight, bn_bias, eps=1e-5):
    s = bn_weight / np.sqrt(running_var)
    b = 0 if bias is None else bias
    return weight * s[:, None], (b - running_mean) * s + bn_bias
""", "eps is missing"),
    ("q2", """
def fold_bn_into_conv(weight, bias, running_mean, running_var, bn_weight, bn_bias, eps=1e-5):
    s = bn_weight / np.sqrt(running_var + eps)
    b = np.zeros_like(running_mean) if bias is None else bias
    return weight * s[:, None, None, None], b * s + bn_bias
""", "subtract running_mean"),
]
