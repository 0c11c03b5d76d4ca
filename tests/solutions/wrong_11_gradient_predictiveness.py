"""Planted mistakes in exercises/11_gradient_predictiveness.ipynb and the feedback each must get.

Each entry: (question id, source defining the student's function, a phrase the grader's feedback
must contain). The sources run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str]] = [
    ("q1", """
def probe_quadratic(A, theta, etas):
    g = A @ theta
    points = [theta + eta * g for eta in etas]
    return (np.array([0.5 * p @ A @ p for p in points]),
            np.array([np.linalg.norm(A @ p - g) for p in points]))
""", "walked up the gradient"),
    ("q1", """
def probe_quadratic(A, theta, etas):
    g = A @ theta
    points = [theta - eta * g for eta in etas]
    return (np.array([0.5 * p @ A @ p for p in points]),
            np.array([abs(np.linalg.norm(A @ p) - np.linalg.norm(g)) for p in points]))
""", "difference of the norms"),
    ("q2", """
def effective_beta(etas, grad_changes, grad_norm):
    return float(np.max(np.asarray(grad_changes) / np.asarray(etas)))
""", "distance moved"),
    ("q2", """
def effective_beta(etas, grad_changes, grad_norm):
    return float(np.mean(np.asarray(grad_changes) / (np.asarray(etas) * grad_norm)))
""", "not the mean"),
    ("q3", """
def bn_weight_grad(u, weight, upstream, eps):
    h = u @ weight.T
    std = np.sqrt(h.var(axis=0) + eps)
    return (upstream / std).T @ u
""", "as constants"),
    ("q3", """
def bn_weight_grad(u, weight, upstream, eps):
    h = u @ weight.T
    std = np.sqrt(h.var(axis=0) + eps)
    return ((upstream - upstream.mean(axis=0)) / std).T @ u
""", "dropped the one through the variance"),
]
