"""Reference solutions of exercises/10_batch_noise.ipynb."""

import numpy as np


def batch_stats(batches):
    mu = batches.mean(axis=1)  # (B,)
    var = ((batches - mu[:, None]) ** 2).mean(axis=1)  # (B,): biased, as BN
    return mu, var


def batch_noise_theory(values, m):
    centred = values - values.mean()  # (N,)
    s2 = np.mean(centred**2)
    mu4 = np.mean(centred**4)
    var_of_var = (m - 1) ** 2 / m**3 * (mu4 - (m - 3) / (m - 1) * s2**2)
    return s2 / m, (m - 1) / m * s2, var_of_var


def var_of_mean_without_replacement(values, m):
    n = len(values)
    return values.var() / m * (n - m) / (n - 1)
