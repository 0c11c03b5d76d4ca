"""Questions of exercise 3, exercises/03_backward_staged.ipynb.

The backward pass through the staged graph.
"""

from __future__ import annotations

import numpy as np

from bnbook.grading.backward import backward_question, nc_shape
from bnbook.grading.checks import Check, Question, StudentCall, compare, unpack
from bnbook.grading.references import batch, bn_grads_ref


def _q_param_grads() -> Question:
    def run(call: StudentCall, rng: np.random.Generator) -> None:
        n, c = int(rng.integers(4, 9)), int(rng.integers(10, 13))
        x = batch(rng, (n, c))
        dy = rng.normal(size=(n, c))
        _, dw_ref, db_ref = bn_grads_ref(dy, x, np.ones(c), 1e-5)
        xh = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
        dw, db = unpack(call(dy, x, 1e-5), 2, "bn_param_grads")
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



def _q_staged() -> Question:
    return backward_question("q2", "Backward through the staged graph", "bn_backward_staged",
                             True, [("dx on a random (N, C) batch", 2, nc_shape(5, 10)),
                                    ("dweight and dbias", 1, nc_shape(5, 10)),
                                    ("sum of dx is 0, on N=3 with mean 1e4", 1, nc_shape(3, 4))])


QUESTIONS: list[Question] = [_q_param_grads(), _q_staged()]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
