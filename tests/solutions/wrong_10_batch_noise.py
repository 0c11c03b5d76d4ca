"""Planted mistakes in exercises/10_batch_noise.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    ("q1", """
def batch_stats(batches):
    return batches.mean(axis=1), batches.var(axis=1, ddof=1)
""", "divided by m - 1"),
    ("q2", """
def batch_noise_theory(values, m):
    s2 = values.var()
    return s2 / m, s2, 2 * (m - 1) * s2**2 / m**2
""", "low by the factor (m - 1) / m"),
    ("q2", """
def batch_noise_theory(values, m):
    s2 = values.var()
    return s2 / m, (m - 1) / m * s2, 2 * (m - 1) * s2**2 / m**2
""", "Gaussian value"),
    ("q3", """
def var_of_mean_without_replacement(values, m):
    return values.var() / m
""", "finite-population factor"),
]
