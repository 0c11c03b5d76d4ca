"""Reference solutions of exercises/12_rms_renorm.ipynb (NumPy)."""

import numpy as np


def rms_norm_forward(x, weight, eps=1e-6):
    rms = np.sqrt((x * x).mean(-1, keepdims=True) + eps)  # (N, 1)
    return weight * x / rms


def rms_norm_backward(dy, x, weight, eps=1e-6):
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)  # (N, 1)
    x_hat = x * r
    g = dy * weight
    dx = r * (g - x_hat * (g * x_hat).mean(-1, keepdims=True))
    return dx, (dy * x_hat).sum(0)


def renorm_r_d(x, running_mean, running_var, eps, r_max, d_max):
    sigma_b = np.sqrt(x.var(0) + eps)  # (C,)
    sigma = np.sqrt(running_var + eps)
    r = np.clip(sigma_b / sigma, 1.0 / r_max, r_max)
    d = np.clip((x.mean(0) - running_mean) / sigma, -d_max, d_max)
    return r, d
