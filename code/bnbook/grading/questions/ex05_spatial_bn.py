"""Questions of exercise 5, exercises/05_spatial_bn.ipynb.

Batch norm over (N, C, *spatial).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bnbook.grading.backward import backward_question
from bnbook.grading.checks import Array, Check, Question, StudentCall, compare
from bnbook.grading.references import batch, bn_axes, bn_train_ref, chan, norm_variants, vec


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
            x = batch(rng, shape)
            if edge:
                x[:, 0] = -1.5  # a constant channel
                x[:, -1] += 1e4
            w, b = vec(rng, shape[1])
            wc, bc = chan(w, x.ndim), chan(b, x.ndim)

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
                    norm_variants(x, w, b, 1e-5, bn_axes(x.ndim), extra), "y", atol=1e-5)
        return run

    return Question("q1", "Spatial batch norm, forward", "spatial_batchnorm_forward", [
        Check("random (N, C, H, W) batch", 2, one(_spatial_shape("4d"), False)),
        Check("(N, C, L) and (N, C, D, H, W) inputs", 1,
              lambda call, rng: (one(_spatial_shape("3d"), False)(call, rng),
                                 one(_spatial_shape("5d"), False)(call, rng))),
        Check("a constant channel and a channel of mean 1e4", 1,
              one(_spatial_shape("4d"), True))])


def _q_spatial_backward() -> Question:
    return backward_question("q2", "Spatial batch norm, backward", "spatial_batchnorm_backward",
                             True, [("dx on a random (N, C, H, W) batch", 2,
                                     _spatial_shape("4d")),
                                    ("dweight and dbias, (N, C, H, W)", 1, _spatial_shape("4d")),
                                    ("sum of dx is 0 on (N, C, L) with mean 1e4", 1,
                                     _spatial_shape("3d"))])


QUESTIONS: list[Question] = [_q_spatial_forward(), _q_spatial_backward()]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
