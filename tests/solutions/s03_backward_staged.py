"""Reference solutions of exercises/03_backward_staged.ipynb."""

import numpy as np


def bn_param_grads(dy, x, eps=1e-5):
    x_hat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)
    return (dy * x_hat).sum(axis=0), dy.sum(axis=0)  # (C,), (C,)


def bn_backward_staged(dy, x, weight, eps=1e-5):
    n = x.shape[0]
    mean = x.mean(axis=0)  # (C,)
    xc = x - mean
    var = (xc ** 2).mean(axis=0)  # (C,)
    istd = 1.0 / np.sqrt(var + eps)
    x_hat = xc * istd
    dbias = dy.sum(axis=0)  # (C,)
    dweight = (dy * x_hat).sum(axis=0)  # (C,)
    dx_hat = dy * weight
    dxc = dx_hat * istd
    distd = (dx_hat * xc).sum(axis=0)  # (C,)
    dvar = distd * -0.5 * (var + eps) ** -1.5
    dxc = dxc + dvar * 2.0 * xc / n
    dmean = -dxc.sum(axis=0)  # (C,)
    dx = dxc + dmean / n
    return dx, dweight, dbias
