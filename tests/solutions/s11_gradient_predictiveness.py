"""Reference solutions of exercises/11_gradient_predictiveness.ipynb."""

import numpy as np


def probe_quadratic(A, theta, etas):
    g = A @ theta
    losses, changes = [], []
    for eta in etas:
        point = theta - eta * g
        losses.append(0.5 * point @ A @ point)
        changes.append(np.linalg.norm(A @ point - g))
    return np.array(losses), np.array(changes)


def effective_beta(etas, grad_changes, grad_norm):
    return float(np.max(np.asarray(grad_changes) / (np.asarray(etas) * grad_norm)))


def bn_weight_grad(u, weight, upstream, eps):
    h = u @ weight.T  # (N, units)
    std = np.sqrt(h.var(axis=0) + eps)  # (units,): biased, as BN in training
    x_hat = (h - h.mean(axis=0)) / std
    dh = (upstream - upstream.mean(axis=0) - x_hat * (upstream * x_hat).mean(axis=0)) / std
    return dh.T @ u
