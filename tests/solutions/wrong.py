"""Planted wrong solutions and the feedback each must get.

Each entry: (notebook, question id, source defining the student's function, a phrase the
grader's feedback must contain). The sources are run with ``np`` and ``torch`` available.
"""

WRONG: list[tuple[str, str, str, str]] = [
    # 01: the batch statistics
    ("01_forward_train", "q1", """
def batch_stats(x):
    return x.mean(axis=0), x.var(axis=0, ddof=1)
""", "unbiased variance"),
    ("01_forward_train", "q1", """
def batch_stats(x):
    return x.mean(axis=1), x.var(axis=1)
""", "reduced over axis 1"),
    ("01_forward_train", "q1", """
def batch_stats(x):
    mean = x.mean(axis=0)
    return mean, (x * x).mean(axis=0) - mean ** 2
""", "cancels catastrophically"),
    # 01: the forward pass
    ("01_forward_train", "q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return weight * (x - x.mean(0)) / (x.std(0) + eps) + bias
""", "eps is outside the square root"),
    ("01_forward_train", "q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return weight * (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps) + bias
""", "unbiased variance"),
    ("01_forward_train", "q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return weight * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + bias
""", "ignored the eps argument"),
    ("01_forward_train", "q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    with np.errstate(all="ignore"):
        return weight * (x - x.mean(0)) / x.std(0) + bias
""", "nan or inf"),
    ("01_forward_train", "q2", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    m, v = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    return weight * (x - m) / np.sqrt(v + eps) + bias
""", "that is LayerNorm"),
    # 02: running statistics and eval mode
    ("02_running_stats", "q1", """
def update_running_stats(running_mean, running_var, x, momentum=0.1):
    return (momentum * running_mean + (1 - momentum) * x.mean(0),
            momentum * running_var + (1 - momentum) * x.var(0, ddof=1))
""", "momentum is used as a decay"),
    ("02_running_stats", "q1", """
def update_running_stats(running_mean, running_var, x, momentum=0.1):
    return ((1 - momentum) * running_mean + momentum * x.mean(0),
            (1 - momentum) * running_var + momentum * x.var(0))
""", "biased running_var"),
    ("02_running_stats", "q1", """
def update_running_stats(running_mean, running_var, x, momentum=0.1):
    return running_mean.copy(), running_var.copy()
""", "update is missing"),
    ("02_running_stats", "q2", """
def cumulative_running_stats(batches):
    allx = np.concatenate(batches)
    return allx.mean(0), allx.var(0, ddof=1)
""", "pooled all samples"),
    ("02_running_stats", "q3", """
def batchnorm_inference(x, running_mean, running_var, weight, bias, eps=1e-5):
    return weight * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + bias
""", "batch's statistics"),
    # 03 and 04: backward passes
    ("03_backward_staged", "q2", """
def bn_backward_staged(dy, x, weight, eps=1e-5):
    std = np.sqrt(x.var(0) + eps)
    xh = (x - x.mean(0)) / std
    dx = weight / std * (dy - xh * (dy * xh).mean(0))
    return dx, (dy * xh).sum(0), dy.sum(0)
""", "sum over the batch of dx is not 0"),
    ("03_backward_staged", "q1", """
def bn_param_grads(dy, x, eps=1e-5):
    return (dy * x).sum(0), dy.sum(0)
""", "you used x"),
    ("04_backward_compact", "q1", """
def bn_backward_compact(dy, x, weight, eps=1e-5):
    return weight * dy / np.sqrt(x.var(0) + eps)
""", "misses the paths through the mean and the variance"),
    ("04_backward_compact", "q2", """
def compare_speed(f, g, repeats, clock):
    tf, tg = [], []
    for _ in range(repeats):
        t0 = clock(); f(); t1 = clock(); g(); t2 = clock()
        tf.append(t1 - t0); tg.append(t2 - t1)
    return float(np.mean(tf)), float(np.mean(tg))
""", "drags the mean"),
    ("04_backward_compact", "q2", """
def compare_speed(f, g, repeats, clock):
    out = []
    for fn in (f, g):
        ts = []
        for _ in range(repeats):
            t0 = clock(); fn(); ts.append(clock() - t0)
        out.append(float(np.median(ts)))
    return tuple(out)
""", "not interleaved"),
    # 05: spatial
    ("05_spatial_bn", "q1", """
def spatial_batchnorm_forward(x, weight, bias, eps=1e-5):
    ax = tuple(range(2, x.ndim)); sh = (1, -1) + (1,) * (x.ndim - 2)
    m, v = x.mean(ax, keepdims=True), x.var(ax, keepdims=True)
    return weight.reshape(sh) * (x - m) / np.sqrt(v + eps) + bias.reshape(sh)
""", "InstanceNorm"),
    ("05_spatial_bn", "q1", """
def spatial_batchnorm_forward(x, weight, bias, eps=1e-5):
    sh = (1, -1) + (1,) * (x.ndim - 2)
    m, v = x.mean(0, keepdims=True), x.var(0, keepdims=True)
    return weight.reshape(sh) * (x - m) / np.sqrt(v + eps) + bias.reshape(sh)
""", "batch axis only"),
    # 06: GroupNorm groups made of strided channels
    ("06_layer_group_norm", "q2", """
def group_norm_forward(x, num_groups, weight, bias, eps=1e-5):
    n, c = x.shape[:2]
    xs = np.swapaxes(x.reshape((n, c // num_groups, num_groups) + x.shape[2:]), 1, 2)
    ax = tuple(range(2, xs.ndim))
    xh = (xs - xs.mean(ax, keepdims=True)) / np.sqrt(xs.var(ax, keepdims=True) + eps)
    sh = (1, -1) + (1,) * (x.ndim - 2)
    return np.swapaxes(xh, 1, 2).reshape(x.shape) * weight.reshape(sh) + bias.reshape(sh)
""", "consecutive channels"),
    # 07: folding
    ("07_folding", "q1", """
def fold_bn_into_linear(weight, bias, running_mean, running_var, bn_weight, bn_bias, eps=1e-5):
    s = bn_weight / np.sqrt(running_var)
    b = 0 if bias is None else bias
    return weight * s[:, None], (b - running_mean) * s + bn_bias
""", "eps is missing"),
    ("07_folding", "q2", """
def fold_bn_into_conv(weight, bias, running_mean, running_var, bn_weight, bn_bias, eps=1e-5):
    s = bn_weight / np.sqrt(running_var + eps)
    b = np.zeros_like(running_mean) if bias is None else bias
    return weight * s[:, None, None, None], b * s + bn_bias
""", "subtract running_mean"),
    # 08: the buggy script as given, and a fix that forgets to restore the mode
    ("08_find_the_bug", "q1", """
def predict(model, x):
    with torch.no_grad():
        return model(x)
""", "missing model.eval()"),
    ("08_find_the_bug", "q1", """
def predict(model, x):
    with torch.no_grad():
        return model(x)
""", "updated by inference data"),
    ("08_find_the_bug", "q1", """
def predict(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)
""", "left in eval mode"),
    ("08_find_the_bug", "q2", """
def recalibrate_bn(model, batches):
    model.train()
    with torch.no_grad():
        for xb in batches:
            model(xb)
    model.eval()
""", "stale statistics dominate"),
    # 09: seed 004's problems
    ("09_by_hand_and_scale", "q1", """
def hand_forward():
    return [-1.2321, -0.0774, -0.0774, 3.3868]
""", "unbiased variance 12"),
    ("09_by_hand_and_scale", "q2", """
def scaled_stats(mean, var, a):
    return a * mean, a * var
""", "scales with a^2, not a"),
    ("09_by_hand_and_scale", "q3", """
def effective_eps(eps, a):
    return eps
""", "exact only for eps = 0"),
    ("09_by_hand_and_scale", "q4", """
def grad_after_scaling(grad_w, a):
    return grad_w * a
""", "gradient shrinks"),
]

# Functions that misbehave rather than compute wrongly: each must get zero with this message.
MISBEHAVING: list[tuple[str, str, str]] = [
    ("raises", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return x / 0 if False else weight @ x.T @ bias @ x
""", "raised ValueError"),
    ("wrong shape", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return (x - x.mean(0)).mean(0)
""", "has shape"),
    ("wrong type", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return torch.from_numpy(x)
""", "is a torch.Tensor; return a NumPy array"),
    ("mutates", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    x -= x.mean(0)
    x /= np.sqrt((x ** 2).mean(0) + eps)
    return weight * x + bias
""", "changed its input `x` in place"),
    ("never returns", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    while True:
        pass
""", "did not return within"),
    ("torch by name", """
import torch.nn.functional as F
def batchnorm_forward(x, weight, bias, eps=1e-5):
    t = torch.from_numpy(x)
    return F.batch_norm(t, None, None, torch.from_numpy(weight), torch.from_numpy(bias),
                        training=True, eps=eps).numpy()
""", "uses batch_norm"),
    ("torch hidden", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    layer = getattr(torch.nn.functional, "batch" + "_norm")
    t = torch.from_numpy(x)
    try:
        return layer(t, None, None, torch.from_numpy(weight), torch.from_numpy(bias),
                     training=True, eps=eps).numpy()
    except BaseException:
        return x
""", "calls torch.nn.functional.batch_norm"),
    ("module hidden", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    layer = getattr(torch.nn, "Batch" + "Norm1d")(x.shape[1], eps=eps, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight)); layer.bias.copy_(torch.from_numpy(bias))
        return layer(torch.from_numpy(x)).numpy()
""", "calls torch.nn.BatchNorm.forward"),
    ("bnbook hidden", """
import importlib
def batchnorm_forward(x, weight, bias, eps=1e-5):
    ref = importlib.import_module("bnbook.reference")
    return getattr(ref, "batch_norm" + "_forward")(x, weight, bias, eps)[0]
""", "calls bnbook.reference.batch_norm_forward"),
    ("stub", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    raise NotImplementedError
""", "not attempted yet"),
]
