"""Reference solutions of exercises/09_by_hand_and_scale.ipynb."""


def hand_forward():
    # mean 4, deviations (-3, -1, -1, 5), variance 36 / 4 = 9, std 3 (eps shifts it by 2e-6)
    return [-1.5, -0.16667, -0.16667, 3.83333]


def scaled_stats(mean, var, a):
    return a * mean, a ** 2 * var


def effective_eps(eps, a):
    return eps / a ** 2


def grad_after_scaling(grad_w, a):
    return grad_w / a
