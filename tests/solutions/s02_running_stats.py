"""Reference solutions of exercises/02_running_stats.ipynb."""

import numpy as np


def update_running_stats(running_mean, running_var, x, momentum=0.1):
    n = x.shape[0]
    mean = x.mean(axis=0)  # (C,)
    var_unbiased = ((x - mean) ** 2).sum(axis=0) / (n - 1)  # (C,)
    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var = (1 - momentum) * running_var + momentum * var_unbiased
    return new_mean, new_var


def cumulative_running_stats(batches):
    means = [b.mean(axis=0) for b in batches]  # each (C,)
    variances = [b.var(axis=0, ddof=1) for b in batches]  # each (C,), unbiased
    return np.mean(means, axis=0), np.mean(variances, axis=0)


def batchnorm_inference(x, running_mean, running_var, weight, bias, eps=1e-5):
    return weight * (x - running_mean) / np.sqrt(running_var + eps) + bias
