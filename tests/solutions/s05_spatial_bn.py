"""Reference solutions of exercises/05_spatial_bn.ipynb."""

import numpy as np


def spatial_batchnorm_forward(x, weight, bias, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)  # (1, C, 1, ...)
    var = x.var(axis=axes, keepdims=True)  # (1, C, 1, ...)
    x_hat = (x - mean) / np.sqrt(var + eps)
    return weight.reshape(shape) * x_hat + bias.reshape(shape)


def spatial_batchnorm_backward(dy, x, weight, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    istd = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)  # (1, C, 1, ...)
    x_hat = (x - x.mean(axis=axes, keepdims=True)) * istd
    sum_dy = dy.sum(axis=axes, keepdims=True)  # (1, C, 1, ...)
    sum_dy_xhat = (dy * x_hat).sum(axis=axes, keepdims=True)  # (1, C, 1, ...)
    dx = weight.reshape(shape) * istd / m * (m * dy - sum_dy - x_hat * sum_dy_xhat)
    return dx, sum_dy_xhat.ravel(), sum_dy.ravel()
