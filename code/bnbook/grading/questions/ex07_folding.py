"""Questions of exercise 7, exercises/07_folding.ipynb.

Folding batch norm into a Linear or Conv2d layer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch reader knows

from bnbook.grading.checks import Check, Question, StudentCall, Variant, compare, unpack
from bnbook.grading.references import np64, t64, vec


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
            gw, gb = vec(rng, cout)
            eps = 1e-5
            fuse = fuse_conv_bn_weights if conv else fuse_linear_bn_weights
            tb = t64(bias if with_bias else np.zeros(cout))
            fused = fuse(t64(weight), tb, t64(rm), t64(rv), eps, t64(gw), t64(gb))
            ref_w, ref_b = (np64(t) for t in fused)
            # The composite check: the folded layer equals layer-then-BN in eval mode.
            xin = t64(rng.normal(size=(3, cin, 5, 5) if conv else (3, cin)))
            lin = F.conv2d if conv else F.linear
            composite = F.batch_norm(lin(xin, t64(weight), t64(bias) if with_bias else None),
                                     t64(rm), t64(rv), t64(gw), t64(gb), training=False, eps=eps)
            folded = np64(lin(xin, t64(ref_w), t64(ref_b)))
            assert np.allclose(folded, np64(composite), atol=1e-8), "torch fusion disagrees"
            new_w, new_b = unpack(call(weight, bias, rm, rv, gw, gb, eps), 2, fn)
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


QUESTIONS: list[Question] = [_fold_question("q1", False), _fold_question("q2", True)]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
