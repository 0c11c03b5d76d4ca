"""Planted mistakes in exercises/12_rms_renorm.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    ("q1", """
def rms_norm_forward(x, weight, eps=1e-6):
    xc = x - x.mean(-1, keepdims=True)
    return weight * xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
""", "that is LayerNorm"),
    ("q1", """
def rms_norm_forward(x, weight, eps=1e-6):
    return weight * x / (np.sqrt((x * x).mean(-1, keepdims=True)) + eps)
""", "eps is outside the square root"),
    ("q2", """
def rms_norm_backward(dy, x, weight, eps=1e-6):
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return dy * weight * r, (dy * x * r).sum(0)
""", "treated the RMS as a constant"),
    ("q3", """
def renorm_r_d(x, running_mean, running_var, eps, r_max, d_max):
    sigma = np.sqrt(running_var + eps)
    return np.sqrt(x.var(0) + eps) / sigma, (x.mean(0) - running_mean) / sigma
""", "clipped"),
    ("q3", """
def renorm_r_d(x, running_mean, running_var, eps, r_max, d_max):
    sigma = np.sqrt(running_var + eps)
    r = np.clip(np.sqrt(x.var(0, ddof=1) + eps) / sigma, 1 / r_max, r_max)
    return r, np.clip((x.mean(0) - running_mean) / sigma, -d_max, d_max)
""", "biased"),
]
