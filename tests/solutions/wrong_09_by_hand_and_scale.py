"""Planted mistakes in exercises/09_by_hand_and_scale.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    ("q1", """
def hand_forward():
    return [-1.2321, -0.0774, -0.0774, 3.3868]
""", "unbiased variance 12"),
    ("q2", """
def scaled_stats(mean, var, a):
    return a * mean, a * var
""", "scales with a^2, not a"),
    ("q3", """
def effective_eps(eps, a):
    return eps
""", "exact only for eps = 0"),
    ("q4", """
def grad_after_scaling(grad_w, a):
    return grad_w * a
""", "gradient shrinks"),
]
