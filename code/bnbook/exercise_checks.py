"""The questions of every exercise notebook and the checks that grade them.

Every check draws a fresh input, computes the right answer with an independent reference
(torch in float64: ``torch.nn.functional``, ``torch.nn`` modules, autograd) and compares the
student's output with it. When the output is wrong, it is compared with the outputs of known-wrong
variants computed on the same input (unbiased variance, eps outside the square root, wrong axes,
...); a match names the mistake. :mod:`bnbook.grading` runs the checks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch reader knows

from bnbook.grading import Check, CheckFailed, Question, StudentCall

Array = np.ndarray
Variant = tuple[Any, str]  # (wrong output, what the student most likely did)

# ---------------------------------------------------------------------------- helpers


def _t(a: Array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _np(t: torch.Tensor) -> Array:
    return t.detach().numpy().astype(np.float64)


def _as_array(out: Any, what: str) -> Array:
    """The student's output as a float array, or a failure naming the wrong type."""
    if isinstance(out, torch.Tensor):
        raise CheckFailed(f"{what} is a torch.Tensor; return a NumPy array.")
    if isinstance(out, np.ndarray | float | int | np.floating | list | tuple):
        arr = np.asarray(out, dtype=np.float64)
        return arr
    raise CheckFailed(f"{what} should be a NumPy array, got {type(out).__name__}.")


def _unpack(out: Any, n: int, what: str) -> tuple[Any, ...]:
    if not isinstance(out, tuple | list) or len(out) != n:
        got = f"a {type(out).__name__}" + (f" of length {len(out)}"
                                          if isinstance(out, tuple | list) else "")
        raise CheckFailed(f"{what} should return a tuple of {n} values, got {got}.")
    return tuple(out)


def compare(got: Any, ref: Array, variants: Sequence[Variant], what: str,
            atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Pass if ``got`` matches ``ref``; otherwise fail naming the variant it matches.

    Args:
        got: the student's output.
        ref: the right answer.
        variants: ``(wrong output, explanation)`` pairs, most specific first.
        what: the output's name in the message.
        atol: absolute tolerance.
        rtol: relative tolerance.
    """
    arr = _as_array(got, what)
    ref = np.asarray(ref, dtype=np.float64)

    def close(a: Array, b: Array) -> bool:
        return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol))

    if close(arr, ref):
        return
    for wrong, why in variants:
        wrong = np.asarray(wrong, dtype=np.float64)
        if wrong.shape == arr.shape and np.all(np.isfinite(wrong)) and close(arr, wrong):
            raise CheckFailed(f"{what} is wrong: {why}")
    if arr.shape != ref.shape:
        raise CheckFailed(f"{what} has shape {arr.shape}; expected {ref.shape}.")
    if not np.all(np.isfinite(arr)):
        raise CheckFailed(f"{what} contains nan or inf (a division by zero? a constant channel "
                          "has variance 0, and only eps inside the square root keeps it finite).")
    err = np.abs(arr - ref)
    idx = np.unravel_index(int(np.argmax(err)), err.shape)
    where = tuple(int(i) for i in idx)
    raise CheckFailed(f"{what} is wrong: largest error {err[idx]:.3g} at index {where}"
                      f" (expected {ref[idx]:.6g}, got {arr[idx]:.6g}).")


def _batch(rng: np.random.Generator, shape: tuple[int, ...], offset: float = 0.0) -> Array:
    """A batch whose channels differ in scale (1e-3 to 10) and offset, axis 1 the channels."""
    c = shape[1]
    scale = 10.0 ** rng.uniform(-3, 1, c)
    scale[rng.integers(c)] = 1e-3  # a small variance: eps inside vs outside the sqrt differ
    bshape = (1, c) + (1,) * (len(shape) - 2)
    return (rng.normal(size=shape) * scale.reshape(bshape)
            + (offset + rng.normal(0, 3, c)).reshape(bshape))


def _vec(rng: np.random.Generator, c: int) -> tuple[Array, Array]:
    return rng.normal(1.0, 0.5, c), rng.normal(0.0, 1.0, c)


def _chan(v: Array, ndim: int) -> Array:
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def _axes(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def _norm_variants(x: Array, w: Array, b: Array, eps: float, axes: tuple[int, ...],
                   extra: Sequence[Variant] = ()) -> list[Variant]:
    """Outputs of the usual wrong normalisations over ``axes`` (affine per channel of axis 1)."""
    wc, bc = _chan(w, x.ndim), _chan(b, x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    n = x.size // mean.size
    out: list[Variant] = list(extra)
    out.append((wc * (x - mean) / np.sqrt(var * n / max(n - 1, 1) + eps) + bc,
                "you normalised with the unbiased variance (divided by N - 1). Batch norm divides "
                "by N: the biased variance of the batch."))
    out.append((wc * (x - mean) / (np.sqrt(var) + eps) + bc,
                "eps is outside the square root: use (x - mean) / sqrt(var + eps), not "
                "(x - mean) / (sqrt(var) + eps)."))
    out.append((wc * (x - mean) / np.sqrt(var + 1e-5) + bc,
                "you ignored the eps argument and used 1e-5."))
    out.append(((x - mean) / np.sqrt(var + eps), "you forgot the scale and shift (weight, bias)."))
    out.append((bc * (x - mean) / np.sqrt(var + eps) + wc,
                "weight and bias are swapped: y = weight * x_hat + bias."))
    out.append((wc * (x - mean) / (var + eps) + bc,
                "you divided by the variance; divide by the standard deviation sqrt(var + eps)."))
    return out


# ---------------------------------------------------------------------------- torch references


def bn_train_ref(x: Array, w: Array, b: Array, eps: float) -> Array:
    """Batch norm in training mode, by torch in float64."""
    return _np(F.batch_norm(_t(x), None, None, _t(w), _t(b), training=True, eps=eps))


def _grads(fn: Callable[..., torch.Tensor], dy: Array, x: Array, w: Array, b: Array
           ) -> tuple[Array, Array, Array]:
    xt, wt, bt = (_t(a).requires_grad_() for a in (x, w, b))
    fn(xt, wt, bt).backward(_t(dy))
    return _np(xt.grad), _np(wt.grad), _np(bt.grad)


def bn_grads_ref(dy: Array, x: Array, w: Array, eps: float) -> tuple[Array, Array, Array]:
    """(dx, dweight, dbias) of training-mode batch norm, by torch autograd."""
    fn = lambda xt, wt, bt: F.batch_norm(xt, None, None, wt, bt, training=True, eps=eps)
    return _grads(fn, dy, x, w, np.zeros_like(w))


# ---------------------------------------------------------------------------- 01 forward


def _q_batch_stats() -> Question:
    def run_random(call: StudentCall, rng: np.random.Generator) -> None:
        n, c = int(rng.integers(5, 10)), int(rng.integers(11, 15))  # N != C: axis mix-ups show
        x = _batch(rng, (n, c))
        mean, var = _unpack(call(x), 2, "batch_stats")
        compare(mean, x.mean(axis=0), [
            (x.mean(axis=1), "you reduced over axis 1 (the features); batch statistics reduce "
                             "over axis 0, the batch."),
            (x.mean(), "you reduced over every axis; keep one statistic per feature (axis=0).")],
            "mean")
        compare(var, x.var(axis=0), [
            (x.var(axis=0, ddof=1), "you returned the unbiased variance (divided by N - 1). "
                                    "Batch norm normalises with the biased one (divide by N)."),
            (x.std(axis=0), "you returned the standard deviation; return the variance."),
            (x.var(axis=1), "you reduced over axis 1 (the features); reduce over axis 0."),
            (x.var(), "you reduced over every axis; keep one statistic per feature (axis=0).")],
            "var")

    def run_large_mean(call: StudentCall, rng: np.random.Generator) -> None:
        x = (1e4 + rng.normal(size=(3, 7))).astype(np.float32)
        mean, var = _unpack(call(x), 2, "batch_stats")
        x64 = x.astype(np.float64)
        compare(mean, x64.mean(axis=0), [], "mean", atol=1e-2, rtol=1e-5)
        one_pass = (x * x).mean(axis=0) - x.mean(axis=0) ** 2
        compare(var, x64.var(axis=0), [
            (one_pass, "E[x^2] - E[x]^2 cancels catastrophically when the mean (1e4 here) is "
                       "large next to the spread: subtract the mean first, then square."),
            (x64.var(axis=0, ddof=1), "you returned the unbiased variance (divided by N - 1).")],
            "var (float32 input, mean 1e4)", atol=1e-2, rtol=1e-2)

    return Question("q1", "Batch mean and variance", "batch_stats", [
        Check("random (N, C) batch", 1, run_random),
        Check("ragged (3, 7) float32 batch with mean 1e4", 1, run_large_mean)])


def _q_forward() -> Question:
    def run_random(call: StudentCall, rng: np.random.Generator) -> None:
        n, c = int(rng.integers(6, 10)), int(rng.integers(11, 14))
        x = _batch(rng, (n, c))
        w, b = _vec(rng, c)
        ref = bn_train_ref(x, w, b, 1e-5)
        wrong_axis = ((x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
                      * w + b)
        compare(call(x, w, b, 1e-5), ref, _norm_variants(x, w, b, 1e-5, (0,), [
            (wrong_axis, "you normalised each sample over its features (axis 1): that is "
                         "LayerNorm. Batch norm reduces over the batch, axis 0.")]), "y")

    def run_eps(call: StudentCall, rng: np.random.Generator) -> None:
        x = _batch(rng, (5, 4))
        w, b = _vec(rng, 4)
        compare(call(x, w, b, 0.5), bn_train_ref(x, w, b, 0.5),
                _norm_variants(x, w, b, 0.5, (0,)), "y (eps=0.5)")

    def run_edge(call: StudentCall, rng: np.random.Generator) -> None:
        x = _batch(rng, (3, 6))
        x[:, 1] = 2.5  # a constant channel: variance exactly 0
        x[:, 4] += 1e4  # a channel of mean 1e4
        w, b = _vec(rng, 6)
        y = call(x, w, b, 1e-5)
        compare(y, bn_train_ref(x, w, b, 1e-5), _norm_variants(x, w, b, 1e-5, (0,)),
                "y (N=3, a constant channel, a channel of mean 1e4)", atol=1e-5)

    return Question("q2", "Forward pass in training mode", "batchnorm_forward", [
        Check("random (N, C) batch, channels of mixed scale", 2, run_random),
        Check("eps argument honoured (eps=0.5)", 1, run_eps),
        Check("edge cases: N=3, constant channel, mean 1e4", 1, run_edge)])


# ---------------------------------------------------------------------------- 02 running stats


def _torch_running(rm: Array, rv: Array, batches: Sequence[Array], momentum: float | None
                   ) -> tuple[Array, Array]:
    bn = torch.nn.BatchNorm1d(rm.size, momentum=momentum, dtype=torch.float64).train()
    with torch.no_grad():
        bn.running_mean.copy_(_t(rm))
        bn.running_var.copy_(_t(rv))
        for xb in batches:
            bn(_t(xb))
    return _np(bn.running_mean), _np(bn.running_var)


def _q_update_running() -> Question:
    def variants(rm: Array, rv: Array, x: Array, m: float) -> tuple[list, list]:
        bm, bv, bvb = x.mean(0), x.var(0, ddof=1), x.var(0)
        vm = [(m * rm + (1 - m) * bm, "momentum is used as a decay (the 0.9 convention of "
               "Keras/TensorFlow). In PyTorch new = (1 - momentum) * old + momentum * batch."),
              (rm, "you returned the old running mean: the running-statistics update is missing."),
              (bm, "you returned the batch mean; blend it with the old running mean.")]
        vv = [((1 - m) * rv + m * bvb, "biased running_var: PyTorch stores the unbiased batch "
               "variance (divided by N - 1) in running_var, though it normalises with the "
               "biased one."),
              (m * rv + (1 - m) * bv, "momentum is used as a decay (the 0.9 convention). In "
               "PyTorch new = (1 - momentum) * old + momentum * batch."),
              (rv, "you returned the old running variance: the update is missing."),
              (bv, "you returned the batch variance; blend it with the old running variance.")]
        return vm, vv

    def one(call: StudentCall, rng: np.random.Generator, n: int, offset: float) -> None:
        c = 5
        rm, rv = rng.normal(size=c), rng.uniform(0.5, 2.0, c)
        x = _batch(rng, (n, c), offset)
        m = float(rng.uniform(0.05, 0.45))
        ref_m, ref_v = _torch_running(rm, rv, [x], m)
        new_m, new_v = _unpack(call(rm, rv, x, m), 2, "update_running_stats")
        vm, vv = variants(rm, rv, x, m)
        compare(new_m, ref_m, vm, "new running_mean", rtol=1e-7)
        compare(new_v, ref_v, vv, "new running_var", rtol=1e-7)

    return Question("q1", "Running statistics, PyTorch convention", "update_running_stats", [
        Check("random batch, random momentum", 2, lambda call, rng: one(call, rng, 9, 0.0)),
        Check("ragged batch (N=2) of mean 1e4", 1, lambda call, rng: one(call, rng, 2, 1e4))])


def _q_cumulative() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        c = 4
        sizes = rng.integers(2, 10, int(rng.integers(3, 6)))
        sizes[0], sizes[1] = 2, 9  # unequal sizes: pooling and averaging differ
        batches = [_batch(rng, (int(s), c)) for s in sizes]
        ref_m, ref_v = _torch_running(np.zeros(c), np.ones(c), batches, None)
        ema_m, ema_v = _torch_running(np.zeros(c), np.ones(c), batches, 0.1)
        pooled = np.concatenate(batches)
        k = len(batches)
        mean, var = _unpack(call(batches), 2, "cumulative_running_stats")
        pool_msg = ("you pooled all samples; momentum=None weighs every batch's statistic "
                    "equally, whatever the batch size.")
        ema_msg = ("this is the exponential average with momentum 0.1; momentum=None keeps the "
                   "plain average of the batch statistics.")
        init_msg = "you counted the initial running values (mean 0, var 1) as one more batch."
        compare(mean, ref_m, [(pooled.mean(0), pool_msg), (ema_m, ema_msg),
                              (ref_m * k / (k + 1), init_msg)], "running_mean")
        compare(var, ref_v, [
            (np.mean([b.var(0) for b in batches], 0), "biased running_var: average the "
             "unbiased batch variances (divided by N - 1)."),
            (pooled.var(0, ddof=1), pool_msg), (ema_v, ema_msg),
            ((ref_v * k + 1) / (k + 1), init_msg)], "running_var")

    return Question("q2", "momentum=None: the cumulative average", "cumulative_running_stats", [
        Check("3 to 5 batches of unequal sizes", 2, run)])


def _q_inference() -> Question:
    def one(call: StudentCall, rng: np.random.Generator, n: int) -> None:
        c = 6
        x = _batch(rng, (n, c))
        rm, rv = rng.normal(size=c), rng.uniform(1e-4, 3.0, c)
        rv[0] = 1e-6  # tiny variance: eps placement matters
        w, b = _vec(rng, c)
        ref = _np(F.batch_norm(_t(x), _t(rm), _t(rv), _t(w), _t(b), training=False, eps=1e-5))
        variants: list[Variant] = [
            (w * (x - rm) / (np.sqrt(rv) + 1e-5) + b, "eps is outside the square root."),
            (w * (x - rm) / (rv + 1e-5) + b, "you divided by the variance, not its square root."),
            ((x - rm) / np.sqrt(rv + 1e-5), "you forgot weight and bias.")]
        if n > 1:
            variants.insert(0, (bn_train_ref(x, w, b, 1e-5), "you normalised with the batch's "
                                "statistics; in eval mode batch norm uses running_mean and "
                                "running_var, so each sample's output ignores the rest."))
        compare(call(x, rm, rv, w, b, 1e-5), ref, variants, "y")

    return Question("q3", "Eval mode", "batchnorm_inference", [
        Check("random batch", 2, lambda call, rng: one(call, rng, 8)),
        Check("a single sample (N=1)", 1, lambda call, rng: one(call, rng, 1))])


# ---------------------------------------------------------------------------- 03/04 backward


def _dx_variants(dy: Array, x: Array, w: Array, eps: float) -> list[Variant]:
    axes = _axes(x.ndim)
    wc = _chan(w, x.ndim)
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    std = np.sqrt(var + eps)
    xh = (x - mean) / std
    m = x.size // w.size
    mdy = dy.mean(axes, keepdims=True)
    mdyx = (dy * xh).mean(axes, keepdims=True)
    unb = np.sqrt(var * m / (m - 1) + eps)
    xc = x - mean
    return [
        (wc * dy / std, "dx = weight * dy / std misses the paths through the mean and the "
                        "variance; the batch statistics depend on x too."),
        (wc / std * (dy - mdy), "the path through the variance is missing (the term "
                                "-x_hat * mean(dy * x_hat))."),
        (wc / std * (dy - xh * mdyx), "the path through the mean is missing: sum over the "
                                      "batch of dx must be 0."),
        ((dy - mdy - xh * mdyx) / std, "weight is missing from dx (dL/dx_hat = weight * dy)."),
        (wc / unb * (dy - mdy - xc * (dy * xc).sum(axes, keepdims=True) / ((m - 1) * unb ** 2)),
         "you used the unbiased variance; the forward pass normalises with the biased one."),
    ]


def _sum_dx_feedback(dx: Array, x: Array) -> None:
    """Fail with the invariant the gradient breaks, if it breaks one."""
    axes = _axes(x.ndim)
    scale = np.abs(dx).sum(axes) + 1e-12
    s = np.abs(dx.sum(axes)) / scale
    if np.max(s) > 1e-6:
        raise CheckFailed(f"sum over the batch of dx is not 0 (relative {np.max(s):.2g}): adding "
                          "a constant to a channel does not change the output, so the gradient "
                          "along it must vanish; the path through the mean is missing or wrong.")


def _backward_question(qid: str, title: str, fn: str, returns_all: bool,
                       shapes: Sequence[tuple[str, int, Callable]]) -> Question:
    """A backward question: the student returns dx (or (dx, dweight, dbias))."""

    def make(shape_fn: Callable[[np.random.Generator], tuple[int, ...]], offset: float,
             part: str) -> Callable[[StudentCall, np.random.Generator], None]:
        def run(call: StudentCall, rng: np.random.Generator) -> None:
            shape = shape_fn(rng)
            x = _batch(rng, shape, offset)
            w, _ = _vec(rng, shape[1])
            dy = rng.normal(size=shape)
            dx_ref, dw_ref, db_ref = bn_grads_ref(dy, x, w, 1e-5)
            out = call(dy, x, w, 1e-5)
            if returns_all:
                dx, dw, db = _unpack(out, 3, fn)
            else:
                dx, dw, db = out, None, None
            if part in ("dx", "invariants"):
                arr = _as_array(dx, "dx")
                if part == "invariants" and arr.shape == x.shape:
                    _sum_dx_feedback(arr, x)
                compare(dx, dx_ref, _dx_variants(dy, x, w, 1e-5), "dx", atol=1e-6, rtol=1e-4)
            if part == "params":
                axes = _axes(x.ndim)
                xh = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)
                compare(db, db_ref, [(dy.mean(axes), "you averaged over the batch; the loss "
                                      "sums the gradients of all samples."),
                                     (dy.sum(0), "sum over N and every spatial axis.")], "dbias")
                compare(dw, dw_ref, [
                    ((dy * x).sum(axes), "you used x; dweight = sum of dy * x_hat."),
                    (db_ref, "dweight and dbias are swapped."),
                    ((dy * xh).mean(axes), "you averaged over the batch; sum instead."),
                    ((dy * xh).sum(0), "sum over N and every spatial axis.")], "dweight")
        return run

    checks = [Check(name, pts, make(shape_fn, 1e4 if "1e4" in name else 0.0,
                                    "params" if "dweight" in name else
                                    "invariants" if "sum" in name else "dx"))
              for name, pts, shape_fn in shapes]
    return Question(qid, title, fn, checks)


def _q_param_grads() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        n, c = int(rng.integers(4, 9)), int(rng.integers(10, 13))
        x = _batch(rng, (n, c))
        dy = rng.normal(size=(n, c))
        _, dw_ref, db_ref = bn_grads_ref(dy, x, np.ones(c), 1e-5)
        xh = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
        dw, db = _unpack(call(dy, x, 1e-5), 2, "bn_param_grads")
        compare(db, db_ref, [(dy.mean(0), "you averaged over the batch; the loss sums the "
                              "gradients of all samples."),
                             (dy.sum(1), "you summed over axis 1; sum over the batch, axis 0.")],
                "dbias")
        compare(dw, dw_ref, [((dy * x).sum(0), "you used x; dweight = sum over the batch of "
                              "dy * x_hat (the normalised input)."),
                             (db_ref, "dweight and dbias are swapped."),
                             ((dy * xh).mean(0), "you averaged over the batch; sum instead."),
                             ((dy * xh).sum(1), "you summed over axis 1; sum over axis 0.")],
                "dweight")

    return Question("q1", "Gradients of weight and bias", "bn_param_grads",
                    [Check("random (N, C) batch", 2, run)])


def _nc(lo: int, hi: int) -> Callable[[np.random.Generator], tuple[int, ...]]:
    return lambda rng: (int(rng.integers(lo, hi)), int(rng.integers(3, 7)))


def _q_staged() -> Question:
    return _backward_question("q2", "Backward through the staged graph", "bn_backward_staged",
                              True, [("dx on a random (N, C) batch", 2, _nc(5, 10)),
                                     ("dweight and dbias", 1, _nc(5, 10)),
                                     ("sum of dx is 0, on N=3 with mean 1e4", 1, _nc(3, 4))])


def _q_compact() -> Question:
    return _backward_question("q1", "The compact backward", "bn_backward_compact", False,
                              [("dx on a random (N, C) batch", 2, _nc(5, 10)),
                               ("sum of dx is 0, on N=2 with mean 1e4", 1, _nc(2, 3))])


class FakeClock:
    """A clock that only moves when the timed functions run: timings the grader controls.

    Calls are made ``k``-th in global order; call ``k`` of a function lasts its base duration
    times ``1 + drift * k``, which a non-interleaved measurement turns into a bias; call
    ``outlier`` of ``f`` lasts 200 times longer, which a mean cannot hide.
    """

    def __init__(self, base_f: float, base_g: float, drift: float, outlier: int) -> None:
        self.now = 1000.0
        self.base = {"f": base_f, "g": base_g}
        self.drift, self.outlier = drift, outlier
        self.log: list[str] = []

    def __call__(self) -> float:
        return self.now

    def make(self, name: str) -> Callable[[], None]:
        def fn(*args: Any, **kwargs: Any) -> None:
            k = len(self.log)
            nth = self.log.count(name)
            self.log.append(name)
            d = self.base[name] * (1 + self.drift * k)
            if name == "f" and nth == self.outlier:
                d *= 200
            self.now += d
        return fn


def _q_speed() -> Question:
    def setup(rng: np.random.Generator) -> tuple[FakeClock, int]:
        repeats = int(rng.integers(9, 16))
        return FakeClock(float(rng.uniform(1, 2)) * 1e-3, float(rng.uniform(2, 3)) * 1e-3,
                         0.02, int(rng.integers(2, repeats - 1))), repeats

    def run_call(call: StudentCall, clock: FakeClock, repeats: int) -> tuple[Any, list[str]]:
        return call.call((clock.make("f"), clock.make("g"), repeats, clock), {},
                         check_mutation=False, after=lambda f, g, r, clk: clk.log)

    def expected(log: list[str], clock: FakeClock, name: str, how: str) -> float:
        ds = []
        count = 0
        for k, who in enumerate(log):
            if who == name:
                d = clock.base[name] * (1 + clock.drift * k)
                if name == "f" and count == clock.outlier:
                    d *= 200
                ds.append(d)
                count += 1
        ds = ds[-clock.repeats_timed:] if getattr(clock, "repeats_timed", 0) else ds
        return {"median": np.median, "mean": np.mean, "sum": np.sum}[how](ds)

    def run_medians(call: StudentCall, rng: np.random.Generator) -> None:
        clock, repeats = setup(rng)
        out, log = run_call(call, clock, repeats)
        mf, mg = (float(v) for v in _unpack(out, 2, "compare_speed"))
        clock.repeats_timed = repeats  # warm-up calls before the timed ones are allowed
        want = (expected(log, clock, "f", "median"), expected(log, clock, "g", "median"))
        got = np.array([mf, mg])
        # A median over a window of drifting calls: allow the drift across one call either way.
        if np.allclose(got, want, rtol=0.06):
            return
        for how, why in (("mean", "the one slow outlier call drags the mean; report the median "
                                  "of the repeats."),
                         ("sum", "you returned the total time; report the median per call.")):
            alt = (expected(log, clock, "f", how), expected(log, clock, "g", how))
            if np.allclose(got, alt, rtol=0.06):
                raise CheckFailed(f"timings are wrong: {why}")
        if not np.any(got):
            raise CheckFailed("both timings are 0: read the time with the clock argument, "
                              "clock(), before and after each call.")
        if np.allclose(got[::-1], want, rtol=0.06):
            raise CheckFailed("the two timings are swapped: return (time of f, time of g).")
        raise CheckFailed(f"timings are wrong: expected about ({want[0]:.3g}, {want[1]:.3g}) s "
                          f"per call, got ({mf:.3g}, {mg:.3g}).")

    def run_interleaved(call: StudentCall, rng: np.random.Generator) -> None:
        clock, repeats = setup(rng)
        _, log = run_call(call, clock, repeats)
        seq = "".join(log)
        if seq.count("f") < repeats or seq.count("g") < repeats:
            raise CheckFailed(f"each function should run at least repeats={repeats} times; f ran "
                              f"{seq.count('f')} and g {seq.count('g')} times.")
        if max(len(run) for run in seq.replace("fg", "f g").replace("gf", "g f").split()) > 2:
            raise CheckFailed("the calls are not interleaved (you ran all of one function's "
                              "repeats, then the other's): slow drift of the machine (clock "
                              "boost, caches, other processes) then biases one side. Alternate "
                              "f and g in one loop.")

    return Question("q2", "A fair speed comparison", "compare_speed", [
        Check("returns the median time per call of each", 1, run_medians),
        Check("interleaves the two functions", 1, run_interleaved)], forbid_library_norms=False)


# ---------------------------------------------------------------------------- 05 spatial


def _spatial_shape(kind: str) -> Callable[[np.random.Generator], tuple[int, ...]]:
    def shape(rng: np.random.Generator) -> tuple[int, ...]:
        if kind == "4d":
            return (int(rng.integers(2, 5)), int(rng.integers(3, 6)), int(rng.integers(3, 6)),
                    int(rng.integers(2, 5)))
        if kind == "3d":
            return (2, int(rng.integers(3, 6)), 5)
        return (2, 3, 2, 3, 1)
    return shape


def _q_spatial_forward() -> Question:
    def one(shape_fn: Callable, edge: bool) -> Callable[[StudentCall, np.random.Generator], None]:
        def run(call: StudentCall, rng: np.random.Generator) -> None:
            shape = shape_fn(rng)
            x = _batch(rng, shape)
            if edge:
                x[:, 0] = -1.5  # a constant channel
                x[:, -1] += 1e4
            w, b = _vec(rng, shape[1])
            wc, bc = _chan(w, x.ndim), _chan(b, x.ndim)

            def over(axes: tuple[int, ...]) -> Array:
                mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
                return wc * (x - mean) / np.sqrt(var + 1e-5) + bc

            sp = tuple(range(2, x.ndim))
            extra = [(over((0,)), "you reduced over the batch axis only (one statistic per "
                                  "channel AND position); spatial batch norm shares one mean and "
                                  "variance per channel across N and every spatial axis."),
                     (over(sp), "you reduced over the spatial axes only, per sample: that is "
                                "InstanceNorm. Include the batch axis."),
                     (over((1,) + sp), "you normalised each sample over (C, *spatial): that is "
                                       "LayerNorm. Reduce over N and the spatial axes.")]
            compare(call(x, w, b, 1e-5), bn_train_ref(x, w, b, 1e-5),
                    _norm_variants(x, w, b, 1e-5, _axes(x.ndim), extra), "y", atol=1e-5)
        return run

    return Question("q1", "Spatial batch norm, forward", "spatial_batchnorm_forward", [
        Check("random (N, C, H, W) batch", 2, one(_spatial_shape("4d"), False)),
        Check("(N, C, L) and (N, C, D, H, W) inputs", 1,
              lambda call, rng: (one(_spatial_shape("3d"), False)(call, rng),
                                 one(_spatial_shape("5d"), False)(call, rng))),
        Check("a constant channel and a channel of mean 1e4", 1,
              one(_spatial_shape("4d"), True))])


def _q_spatial_backward() -> Question:
    return _backward_question("q2", "Spatial batch norm, backward", "spatial_batchnorm_backward",
                              True, [("dx on a random (N, C, H, W) batch", 2,
                                      _spatial_shape("4d")),
                                     ("dweight and dbias, (N, C, H, W)", 1, _spatial_shape("4d")),
                                     ("sum of dx is 0 on (N, C, L) with mean 1e4", 1,
                                      _spatial_shape("3d"))])


# ---------------------------------------------------------------------------- 06 LN / GN


def _ln_ref(x: Array, w: Array, b: Array, eps: float) -> Array:
    return _np(F.layer_norm(_t(x), w.shape, _t(w), _t(b), eps=eps))


def _gn_ref(x: Array, g: int, w: Array, b: Array, eps: float) -> Array:
    return _np(F.group_norm(_t(x), g, _t(w), _t(b), eps=eps))


def _ln_shapes(rng: np.random.Generator, k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if k == 0:
        return (int(rng.integers(3, 7)), int(rng.integers(5, 9))), (1,)
    if k == 1:
        return (2, int(rng.integers(3, 5)), int(rng.integers(5, 8))), (1,)
    return (3, 4, 2, 5), (3,)  # normalised over the last three axes


def _ln_variants(x: Array, w: Array, b: Array, eps: float) -> list[Variant]:
    nd = w.ndim
    axes = tuple(range(x.ndim - nd, x.ndim))

    def over(ax: tuple[int, ...], ddof: int = 0) -> Array:
        mean = x.mean(ax, keepdims=True)
        var = x.var(ax, keepdims=True, ddof=ddof)
        return w * (x - mean) / np.sqrt(var + eps) + b

    out: list[Variant] = [
        (over((0,)), "you reduced over the batch axis: that is batch norm. LayerNorm normalises "
                     "each sample over its trailing (normalised) axes."),
        (over(axes, 1), "you used the unbiased variance; LayerNorm divides by the count."),
        (w * (x - x.mean(axes, keepdims=True)) / (x.std(axes, keepdims=True) + eps) + b,
         "eps is outside the square root.")]
    if nd > 1:
        out.insert(0, (over((x.ndim - 1,)), "you reduced over the last axis only; reduce over "
                                            "all the axes weight covers (normalized_shape)."))
    return out


def _q_ln_forward() -> Question:
    def run(k: int) -> Callable[[StudentCall, np.random.Generator], None]:
        def go(call: StudentCall, rng: np.random.Generator) -> None:
            shape, nd = _ln_shapes(rng, k)
            x = rng.normal(size=shape) * 3 + rng.normal(size=shape[-1])
            w = rng.normal(1, 0.5, shape[-nd[0]:])
            b = rng.normal(0, 1, shape[-nd[0]:])
            compare(call(x, w, b, 1e-5), _ln_ref(x, w, b, 1e-5), _ln_variants(x, w, b, 1e-5),
                    "y", atol=1e-5)
        return go

    return Question("q1", "LayerNorm, forward", "layer_norm_forward", [
        Check("(N, D) input", 1, run(0)), Check("(N, T, D) input", 1, run(1)),
        Check("(N, C, H, W) normalised over (C, H, W)", 1, run(2))])


def _gn_variants(x: Array, g: int, w: Array, b: Array, eps: float) -> list[Variant]:
    n, c = x.shape[:2]
    wc, bc = _chan(w, x.ndim), _chan(b, x.ndim)
    # Groups made of channels c, c + G, c + 2G, ...: the reshape the wrong way round.
    xs = np.swapaxes(x.reshape((n, c // g, g) + x.shape[2:]), 1, 2)
    ax = tuple(range(2, xs.ndim))
    strided = (xs - xs.mean(ax, keepdims=True)) / np.sqrt(xs.var(ax, keepdims=True) + eps)
    strided = np.swapaxes(strided, 1, 2).reshape(x.shape) * wc + bc
    xg = x.reshape((n, g, c // g) + x.shape[2:])
    per_group_ch = (xg - xg.mean(2, keepdims=True)) / np.sqrt(xg.var(2, keepdims=True) + eps)
    ax2 = tuple(range(2, xg.ndim))
    unb = (xg - xg.mean(ax2, keepdims=True)) / np.sqrt(xg.var(ax2, keepdims=True, ddof=1) + eps)
    return [(strided, "your groups are channels c, c+G, c+2G, ...; a group is a run of C/G "
                      "consecutive channels: reshape x to (N, G, C/G, *spatial)."),
            (per_group_ch.reshape(x.shape) * wc + bc, "you reduced over the group's channels "
             "only; a group's statistics also cover every spatial position."),
            (unb.reshape(x.shape) * wc + bc, "you used the unbiased variance.")]


def _q_gn_forward() -> Question:
    def run(which: str) -> Callable[[StudentCall, np.random.Generator], None]:
        def go(call: StudentCall, rng: np.random.Generator) -> None:
            g = int(rng.integers(2, 4))
            c = g * int(rng.integers(2, 4))
            x = rng.normal(size=(2, c, 3, int(rng.integers(2, 5)))) * 2 + 1
            groups = {"random": g, "one": 1, "all": c}[which]
            w, b = _vec(rng, c)
            compare(call(x, groups, w, b, 1e-5), _gn_ref(x, groups, w, b, 1e-5),
                    _gn_variants(x, groups, w, b, 1e-5), f"y (num_groups={groups})", atol=1e-5)
        return go

    return Question("q2", "GroupNorm, forward", "group_norm_forward", [
        Check("random (N, C, H, W), 2 or 3 groups", 2, run("random")),
        Check("num_groups = 1 (LayerNorm over C, H, W)", 1, run("one")),
        Check("num_groups = C (InstanceNorm)", 1, run("all"))])


def _norm_backward_question(qid: str, title: str, fn: str, kind: str) -> Question:
    def run(k: int) -> Callable[[StudentCall, np.random.Generator], None]:
        def go(call: StudentCall, rng: np.random.Generator) -> None:
            if kind == "ln":
                shape, nd = _ln_shapes(rng, k)
                pshape = shape[-nd[0]:]
                x = rng.normal(size=shape) * 2 + 1
                w = rng.normal(1, 0.5, pshape)
                fwd = lambda xt, wt, bt: F.layer_norm(xt, pshape, wt, bt, eps=1e-5)
                args: tuple = (x, w, 1e-5)
                axes = tuple(range(x.ndim - len(pshape), x.ndim))
                batch_axes = tuple(range(x.ndim - len(pshape)))
            else:
                g = 2
                c = 2 * int(rng.integers(2, 4))
                shape = (2 + k, c, 3, 2)
                x = rng.normal(size=shape) * 2 + 1
                w = rng.normal(1, 0.5, c)
                fwd = lambda xt, wt, bt: F.group_norm(xt, g, wt, bt, eps=1e-5)
                args = (x, g, w, 1e-5)
                batch_axes = (0, 2, 3)
            dy = rng.normal(size=shape)
            dx_ref, dw_ref, db_ref = _grads(fwd, dy, x, w, np.zeros_like(w))
            dx, dw, db = _unpack(call(*((dy,) + args)), 3, fn)
            variants: list[Variant] = []
            if kind == "ln":
                xh = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)
                std = np.sqrt(x.var(axes, keepdims=True) + 1e-5)
                variants = [(w * dy / std, "dx misses the paths through the mean and variance "
                                           "of each sample.")]
                dwv = [((dy * xh).sum(axes), "dweight sums over the batch axes (every axis "
                                             "weight does not cover), not the normalised ones.")]
            else:
                dwv = [((dy * x).sum(batch_axes), "dweight is the sum of dy * x_hat, not dy * x.")]
            compare(dx, dx_ref, variants, "dx", atol=1e-6, rtol=1e-4)
            compare(db, db_ref, [(dy.sum(0), "sum dbias over every axis except the channel "
                                             "(or normalised) axes.")], "dbias")
            compare(dw, dw_ref, dwv, "dweight", atol=1e-6, rtol=1e-4)
        return go

    names = (["(N, D) input", "(N, T, D) input"] if kind == "ln"
             else ["(2, C, 3, 2), 2 groups", "(3, C, 3, 2), 2 groups"])
    return Question(qid, title, fn, [Check(names[0], 2, run(0)), Check(names[1], 1, run(1))])


# ---------------------------------------------------------------------------- 07 folding


def _fold_question(qid: str, conv: bool) -> Question:
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

    fn = "fold_bn_into_conv" if conv else "fold_bn_into_linear"

    def run(with_bias: bool) -> Callable[[StudentCall, np.random.Generator], None]:
        def go(call: StudentCall, rng: np.random.Generator) -> None:
            cout, cin = int(rng.integers(4, 7)), int(rng.integers(2, 4))  # never square
            wshape = (cout, cin, 3, 3) if conv else (cout, cin)
            weight = rng.normal(size=wshape)
            bias = rng.normal(size=cout) if with_bias else None
            rm, rv = rng.normal(size=cout), rng.uniform(1e-4, 2.0, cout)
            rv[0] = 1e-6
            gw, gb = _vec(rng, cout)
            eps = 1e-5
            fuse = fuse_conv_bn_weights if conv else fuse_linear_bn_weights
            tb = _t(bias if with_bias else np.zeros(cout))
            fused = fuse(_t(weight), tb, _t(rm), _t(rv), eps, _t(gw), _t(gb))
            ref_w, ref_b = (_np(t) for t in fused)
            # The composite check: the folded layer equals layer-then-BN in eval mode.
            xin = _t(rng.normal(size=(3, cin, 5, 5) if conv else (3, cin)))
            lin = F.conv2d if conv else F.linear
            composite = F.batch_norm(lin(xin, _t(weight), _t(bias) if with_bias else None),
                                     _t(rm), _t(rv), _t(gw), _t(gb), training=False, eps=eps)
            folded = _np(lin(xin, _t(ref_w), _t(ref_b)))
            assert np.allclose(folded, _np(composite), atol=1e-8), "torch fusion disagrees"
            new_w, new_b = _unpack(call(weight, bias, rm, rv, gw, gb, eps), 2, fn)
            b0 = bias if with_bias else np.zeros(cout)
            sh = (-1,) + (1,) * (weight.ndim - 1)
            s = gw / np.sqrt(rv + eps)
            wv: list[Variant] = [
                (weight * (gw / np.sqrt(rv)).reshape(sh), "eps is missing: scale by "
                 "weight_bn / sqrt(running_var + eps)."),
                (weight * (gw / (rv + eps)).reshape(sh), "you divided by the variance, not "
                 "the standard deviation."),
                (weight * gw.reshape(sh), "you scaled by the BN weight only; divide by "
                 "sqrt(running_var + eps) as well.")]
            compare(new_w, ref_w, wv, "folded weight", atol=1e-8, rtol=1e-6)
            bv: list[Variant] = [
                (b0 * s + gb, "you forgot to subtract running_mean: b' = (b - mean) * s + beta."),
                ((b0 - rm) * s, "you forgot the BN bias (beta)."),
                (b0 - rm * s + gb, "the layer's own bias must be scaled too: b' = (b - mean) * s "
                                   "+ beta."),
                ((b0 - rm) * gw / np.sqrt(rv) + gb, "eps is missing from the bias.")]
            compare(new_b, ref_b, bv, "folded bias", atol=1e-8, rtol=1e-6)
        return go

    what = "Conv2d" if conv else "Linear"
    return Question(qid, f"Fold BN into a preceding {what}", fn, [
        Check(f"{what} with bias", 2, run(True)),
        Check(f"{what} without bias (bias=None)", 1, run(False))])


# ---------------------------------------------------------------------------- 08 find the bug


def make_model(seed: int) -> torch.nn.Sequential:
    """A small float64 MLP with batch norm whose running statistics are already trained.

    Args:
        seed: seeds the weights and statistics.

    Returns:
        The model, in training mode.
    """
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        model[1].running_mean.normal_(0.0, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].num_batches_tracked.fill_(100)
    return model.train()


def buggy_predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The script's prediction step, with its bug (shown in the exercise; do not copy)."""
    with torch.no_grad():
        return model(x)


def buggy_recalibrate(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate the batch-norm statistics after a weight change, wrongly."""
    model.train()
    with torch.no_grad():
        for xb in batches:
            model(xb)


def _bn_state(model: torch.nn.Module) -> dict[str, Any]:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return {"mean": [_np(m.running_mean) for m in bns], "var": [_np(m.running_var) for m in bns],
            "momentum": [m.momentum for m in bns], "training": model.training,
            "weights": [_np(p) for p in model.parameters()]}


def _q_predict() -> Question:
    def setup(rng: np.random.Generator) -> tuple[torch.nn.Module, torch.Tensor]:
        return make_model(int(rng.integers(1 << 30))), _t(rng.normal(size=(6, 4)) * 2 + 1)

    def outputs(call: StudentCall, rng: np.random.Generator) -> None:
        model, x = setup(rng)
        ref = copy.deepcopy(model).eval()
        train_copy = copy.deepcopy(model).train()
        with torch.no_grad():
            want, train_out = _np(ref(x)), _np(train_copy(x))
        out, _ = call.call((model, x), check_mutation=False)
        got = _np(out) if isinstance(out, torch.Tensor) else out
        compare(got, want, [(train_out, "missing model.eval(): in training mode batch norm "
                             "normalises with this batch's statistics, so a prediction depends "
                             "on the other samples of the batch.")], "predictions")

    def stats(call: StudentCall, rng: np.random.Generator) -> None:
        model, x = setup(rng)
        before = _bn_state(model)
        _, after = call.call((model, x), check_mutation=False, after=lambda m, x: _bn_state(m))
        if not all(np.array_equal(a, b) for a, b in zip(before["mean"] + before["var"],
                                                        after["mean"] + after["var"], strict=True)):
            raise CheckFailed("the running statistics changed: they were updated by inference "
                              "data, because the forward pass ran in training mode.")

    def mode(call: StudentCall, rng: np.random.Generator) -> None:
        model, x = setup(rng)
        _, after = call.call((model, x), check_mutation=False, after=lambda m, x: _bn_state(m))
        if not after["training"]:
            raise CheckFailed("the model is left in eval mode: training that resumes after this "
                              "call would stop updating the running statistics. Restore the "
                              "mode the model came in with.")

    return Question("q1", "Fix the prediction step", "predict", [
        Check("predictions are eval-mode outputs", 2, outputs),
        Check("running statistics untouched by inference data", 1, stats),
        Check("the model's training mode is restored", 1, mode)], forbid_library_norms=False)


def _q_recalibrate() -> Question:
    def setup(rng: np.random.Generator) -> tuple[torch.nn.Module, list[torch.Tensor]]:
        model = make_model(int(rng.integers(1 << 30)))
        sizes = [int(s) for s in rng.integers(3, 9, 4)]
        return model, [_t(rng.normal(size=(s, 4)) * 2 + 1) for s in sizes]

    def reference(model: torch.nn.Module, batches: list[torch.Tensor],
                  reset: bool, momentum: float | None) -> dict[str, Any]:
        m = copy.deepcopy(model)
        bn = m[1]
        if reset:
            bn.reset_running_stats()
        bn.momentum = momentum
        m.train()
        with torch.no_grad():
            for xb in batches:
                m(xb)
        return _bn_state(m)

    def run_stats(call: StudentCall, rng: np.random.Generator) -> None:
        model, batches = setup(rng)
        want = reference(model, batches, True, None)
        _, got = call.call((model, batches), check_mutation=False,
                           after=lambda m, b: _bn_state(m))
        if not all(np.array_equal(a, b) for a, b in zip(want["weights"], got["weights"],
                                                        strict=True)):
            raise CheckFailed("the weights changed: recalibration only re-estimates the "
                              "batch-norm statistics.")
        variants = [(reference(model, batches, False, None)["mean"][0],
                     "you did not reset the statistics first: the stale values are averaged in "
                     "(bn.reset_running_stats())."),
                    (reference(model, batches, True, 0.1)["mean"][0],
                     "with momentum 0.1 the result is an exponential average dominated by "
                     "the initial values; set momentum=None for the plain average of the batches."),
                    (reference(model, batches, False, 0.1)["mean"][0],
                     "missing reset and momentum=None: the stale statistics dominate.")]
        compare(got["mean"][0], want["mean"][0], variants, "running_mean", atol=1e-10)
        compare(got["var"][0], want["var"][0], [], "running_var", atol=1e-10)

    def run_state(call: StudentCall, rng: np.random.Generator) -> None:
        model, batches = setup(rng)
        _, got = call.call((model, batches), check_mutation=False,
                           after=lambda m, b: _bn_state(m))
        if got["momentum"][0] != 0.1:
            raise CheckFailed(f"momentum is left at {got['momentum'][0]}; restore it to 0.1 so "
                              "later training uses the usual running average.")
        if got["training"]:
            raise CheckFailed("the model is left in training mode; recalibration ends in "
                              "eval mode, ready to predict.")

    return Question("q2", "Fix the recalibration", "recalibrate_bn", [
        Check("running statistics = plain average over the batches", 2, run_stats),
        Check("momentum restored, model left in eval mode", 1, run_state)],
        forbid_library_norms=False)


# ---------------------------------------------------------------------------- 09 seed problems


HAND_X = np.array([1.0, 3.0, 3.0, 9.0])
HAND_WEIGHT, HAND_BIAS, HAND_EPS = 2.0, 0.5, 1e-5


def _q_hand() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        x = HAND_X.reshape(4, 1)
        ref = bn_train_ref(x, np.array([HAND_WEIGHT]), np.array([HAND_BIAS]), HAND_EPS).ravel()
        out = call()
        mean, var = HAND_X.mean(), HAND_X.var()
        xh = (HAND_X - mean) / np.sqrt(var + HAND_EPS)
        ub = HAND_X.var(ddof=1)
        compare(out, ref, [
            (HAND_WEIGHT * (HAND_X - mean) / np.sqrt(ub) + HAND_BIAS,
             f"you used the unbiased variance {ub:g} (divided by 3); divide by 4: {var:g}."),
            (xh, "these are the normalised values x_hat; apply y = 2 * x_hat + 0.5."),
            (HAND_WEIGHT * (HAND_X - mean) / var + HAND_BIAS,
             "you divided by the variance; divide by the standard deviation."),
            (HAND_BIAS * xh + HAND_WEIGHT, "gamma and beta are swapped: y = 2 * x_hat + 0.5.")],
            "your four outputs", atol=2e-3, rtol=0)

    return Question("q1", "The forward pass by hand", "hand_forward",
                    [Check("the four outputs for x = (1, 3, 3, 9)", 2, run)])


def _q_scaled_stats() -> Question:
    def one(sign: float) -> Callable[[StudentCall, np.random.Generator], None]:
        def run(call: StudentCall, rng: np.random.Generator) -> None:
            z = rng.normal(size=(7, 3)) * 2 + 1
            a = sign * float(rng.uniform(0.3, 4.0))
            mean, var = z.mean(0), z.var(0)
            m2, v2 = _unpack(call(mean, var, a), 2, "scaled_stats")
            compare(m2, (a * _t(z)).mean(0).numpy(), [(mean, "the mean scales with a.")],
                    "mean of a*z")
            compare(v2, (a * _t(z)).var(0, correction=0).numpy(), [
                (a * var, "the variance scales with a^2, not a."),
                (abs(a) * var, "the variance scales with a^2, not |a|."),
                (var, "the variance scales with a^2.")], "variance of a*z")
        return run

    return Question("q2", "Statistics of a scaled pre-activation", "scaled_stats", [
        Check("a > 0", 1, one(1.0)), Check("a < 0", 1, one(-1.0))], forbid_library_norms=True)


def _q_effective_eps() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        a = float(rng.uniform(0.2, 5.0))
        eps = float(10 ** rng.uniform(-3, -1))
        z = rng.normal(size=(9, 4))
        lhs = _np(F.batch_norm(_t(a * z), None, None, training=True, eps=eps))
        got = call(eps, a)
        if isinstance(got, np.ndarray) and got.ndim == 0:
            got = float(got)
        if not isinstance(got, float | int | np.floating) or not got > 0:
            raise CheckFailed(f"effective_eps should return a positive number, got {got!r}.")
        rhs = _np(F.batch_norm(_t(z), None, None, training=True, eps=float(got)))
        if np.allclose(lhs, rhs, atol=1e-9, rtol=1e-9):
            return
        for wrong, why in ((eps / a, "you divided by a; a^2 leaves the square root as a."),
                           (eps, "eps does not scale with the input, so the identity is exact "
                                 "only for eps = 0; with eps > 0 the effective eps is eps / a^2."),
                           (eps * a * a, "inverted: a * z has variance a^2 var, so "
                                         "(a z - a mean) / sqrt(a^2 var + eps) = "
                                         "(z - mean) / sqrt(var + eps / a^2).")):
            if np.isclose(float(got), wrong, rtol=1e-9):
                raise CheckFailed(why)
        raise CheckFailed(f"with your eps' = {float(got):.4g}, BN_eps(a*z) != BN_eps'(z) "
                          f"(a = {a:.3g}, eps = {eps:.3g}).")

    return Question("q3", "Scale invariance with eps > 0", "effective_eps",
                    [Check("BN_eps(a z) = BN_eps'(z) holds numerically", 2, run)])


def _q_grad_scaling() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        n, d_in, d_out = 8, 3, 4
        u, c = rng.normal(size=(n, d_in)), rng.normal(size=(n, d_out))
        w = rng.normal(size=(d_out, d_in))
        a = float(rng.uniform(0.3, 5.0))

        def grad_at(scale: float) -> Array:
            wt = _t(scale * w).requires_grad_()
            y = F.batch_norm(_t(u) @ wt.T, None, None, training=True, eps=1e-12)
            (y * _t(c)).sum().backward()
            return _np(wt.grad)

        g1, ga = grad_at(1.0), grad_at(a)
        compare(call(g1, a), ga, [
            (g1 * a, "the gradient shrinks as the weights grow: dL/d(aW) = (1/a) dL/dW."),
            (g1, "BN makes the loss invariant to the scale, not its gradient: dL/d(aW) = "
                 "(1/a) dL/dW."),
            (g1 / a ** 2, "one factor 1/a: differentiate L(aW) = L(W) with respect to W.")],
            "gradient at a*W", atol=1e-7, rtol=1e-5)

    return Question("q4", "Gradient at scaled weights", "grad_after_scaling",
                    [Check("matches autograd at a*W", 2, run)])


QUESTIONS: dict[str, list[Question]] = {
    "01_forward_train": [_q_batch_stats(), _q_forward()],
    "02_running_stats": [_q_update_running(), _q_cumulative(), _q_inference()],
    "03_backward_staged": [_q_param_grads(), _q_staged()],
    "04_backward_compact": [_q_compact(), _q_speed()],
    "05_spatial_bn": [_q_spatial_forward(), _q_spatial_backward()],
    "06_layer_group_norm": [_q_ln_forward(), _q_gn_forward(),
                            _norm_backward_question("q3", "LayerNorm, backward",
                                                    "layer_norm_backward", "ln"),
                            _norm_backward_question("q4", "GroupNorm, backward",
                                                    "group_norm_backward", "gn")],
    "07_folding": [_fold_question("q1", False), _fold_question("q2", True)],
    "08_find_the_bug": [_q_predict(), _q_recalibrate()],
    "09_by_hand_and_scale": [_q_hand(), _q_scaled_stats(), _q_effective_eps(),
                             _q_grad_scaling()],
}
"""Each exercise notebook's questions, keyed by the notebook's file stem."""
