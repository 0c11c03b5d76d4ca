"""Questions of exercise 8, exercises/08_find_the_bug.ipynb.

The buggy prediction and recalibration steps.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from bnbook.grading.checks import Check, CheckFailed, Question, StudentCall, compare
from bnbook.grading.references import np64, t64


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
    return {"mean": [np64(m.running_mean) for m in bns], "var": [np64(m.running_var) for m in bns],
            "momentum": [m.momentum for m in bns], "training": model.training,
            "weights": [np64(p) for p in model.parameters()]}


def _q_predict() -> Question:
    def setup(rng: np.random.Generator) -> tuple[torch.nn.Module, torch.Tensor]:
        return make_model(int(rng.integers(1 << 30))), t64(rng.normal(size=(6, 4)) * 2 + 1)

    def outputs(call: StudentCall, rng: np.random.Generator) -> None:
        model, x = setup(rng)
        ref = copy.deepcopy(model).eval()
        train_copy = copy.deepcopy(model).train()
        with torch.no_grad():
            want, train_out = np64(ref(x)), np64(train_copy(x))
        out, _ = call.call((model, x), check_mutation=False)
        got = np64(out) if isinstance(out, torch.Tensor) else out
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
        return model, [t64(rng.normal(size=(s, 4)) * 2 + 1) for s in sizes]

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


QUESTIONS: list[Question] = [_q_predict(), _q_recalibrate()]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
