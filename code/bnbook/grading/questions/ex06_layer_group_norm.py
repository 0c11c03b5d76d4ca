"""Questions of exercise 6, exercises/06_layer_group_norm.ipynb.

LayerNorm and GroupNorm, forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch reader knows

from bnbook.grading.checks import Array, Check, Question, StudentCall, Variant, compare, unpack
from bnbook.grading.references import chan, grads_ref, np64, t64, vec


def _ln_ref(x: Array, w: Array, b: Array, eps: float) -> Array:
    return np64(F.layer_norm(t64(x), w.shape, t64(w), t64(b), eps=eps))


def _gn_ref(x: Array, g: int, w: Array, b: Array, eps: float) -> Array:
    return np64(F.group_norm(t64(x), g, t64(w), t64(b), eps=eps))


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
    wc, bc = chan(w, x.ndim), chan(b, x.ndim)
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
            w, b = vec(rng, c)
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
            dx_ref, dw_ref, db_ref = grads_ref(fwd, dy, x, w, np.zeros_like(w))
            dx, dw, db = unpack(call(*((dy,) + args)), 3, fn)
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


QUESTIONS: list[Question] = [
    _q_ln_forward(),
    _q_gn_forward(),
    _norm_backward_question("q3", "LayerNorm, backward", "layer_norm_backward", "ln"),
    _norm_backward_question("q4", "GroupNorm, backward", "group_norm_backward", "gn"),
]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
