"""Reference solutions of exercises/06_layer_group_norm.ipynb."""

import numpy as np


def layer_norm_forward(x, weight, bias, eps=1e-5):
    axes = tuple(range(x.ndim - weight.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)  # (N, ..., 1, ...)
    var = x.var(axis=axes, keepdims=True)
    return weight * (x - mean) / np.sqrt(var + eps) + bias


def group_norm_forward(x, num_groups, weight, bias, eps=1e-5):
    n, c = x.shape[:2]
    xg = x.reshape((n, num_groups, c // num_groups) + x.shape[2:])
    axes = tuple(range(2, xg.ndim))
    mean = xg.mean(axis=axes, keepdims=True)  # (N, G, 1, ...)
    var = xg.var(axis=axes, keepdims=True)
    x_hat = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return weight.reshape(shape) * x_hat + bias.reshape(shape)


def layer_norm_backward(dy, x, weight, eps=1e-5):
    axes = tuple(range(x.ndim - weight.ndim, x.ndim))
    batch_axes = tuple(range(x.ndim - weight.ndim))
    m = int(np.prod(weight.shape))
    istd = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    x_hat = (x - x.mean(axis=axes, keepdims=True)) * istd
    g = dy * weight  # dL/dx_hat
    dx = istd / m * (m * g - g.sum(axis=axes, keepdims=True)
                     - x_hat * (g * x_hat).sum(axis=axes, keepdims=True))
    return dx, (dy * x_hat).sum(axis=batch_axes), dy.sum(axis=batch_axes)


def group_norm_backward(dy, x, num_groups, weight, eps=1e-5):
    n, c = x.shape[:2]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    gshape = (n, num_groups, c // num_groups) + x.shape[2:]
    xg = x.reshape(gshape)
    axes = tuple(range(2, xg.ndim))
    m = int(np.prod(xg.shape[2:]))
    istd = 1.0 / np.sqrt(xg.var(axis=axes, keepdims=True) + eps)  # (N, G, 1, ...)
    x_hat = (xg - xg.mean(axis=axes, keepdims=True)) * istd
    g = (dy * weight.reshape(shape)).reshape(gshape)  # dL/dx_hat, grouped
    dx = istd / m * (m * g - g.sum(axis=axes, keepdims=True)
                     - x_hat * (g * x_hat).sum(axis=axes, keepdims=True))
    red = (0,) + tuple(range(2, x.ndim))
    return dx.reshape(x.shape), (dy * x_hat.reshape(x.shape)).sum(axis=red), dy.sum(axis=red)
