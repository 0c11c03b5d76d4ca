"""Questions of exercise 14, exercises/14_finetune_bugs.ipynb.

Three bugs of a fine-tuning script: a batch-norm freeze that ``model.train()`` undoes, a data
loader whose last batch holds one example, and statistics left stale by weight averaging.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnbook.grading.checks import Check, CheckFailed, Question, StudentCall, compare
from bnbook.grading.references import np64, t64


def make_model(seed: int) -> nn.Sequential:
    """A pretrained-looking float64 MLP with two batch-norm layers and trained statistics.

    Args:
        seed: seeds the weights and the statistics.

    Returns:
        The model, in training mode.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Linear(8, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(),
                          nn.Linear(6, 3)).double()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.3)
            bn.num_batches_tracked.fill_(100)
    return model.train()


def buggy_freeze(model: nn.Module) -> nn.Module:
    """The script's freeze of the batch-norm layers (shown in the exercise; do not copy)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.eval()
            m.requires_grad_(False)
    return model


def buggy_loader(dataset: TensorDataset, batch_size: int, seed: int) -> DataLoader:
    """The script's training loader."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def buggy_average(models: list[nn.Module], batches: list[torch.Tensor]) -> nn.Module:
    """The script's weight averaging of several fine-tuned copies of one model."""
    averaged = copy.deepcopy(models[0])
    state = {k: sum(m.state_dict()[k] for m in models) / len(models)
             for k in averaged.state_dict() if k.endswith(("weight", "bias", "mean", "var"))}
    averaged.load_state_dict(state, strict=False)
    return averaged.eval()


_NON_BN_NUMEL = 4 * 8 + 8 * 6 + 6 * 3 + 3  # what stays trainable once BN is frozen


def _q_freeze() -> Question:
    def setup(rng: np.random.Generator) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        model = make_model(int(rng.integers(1 << 30)))
        x = t64(rng.normal(size=(6, 4)) * 2 + 1)
        other = t64(rng.normal(size=(9, 4)) * 3 - 2)
        return model, x, other

    def outputs(call: StudentCall, rng: np.random.Generator) -> None:
        model, x, other = setup(rng)
        with torch.no_grad():
            want = np64(copy.deepcopy(model).eval()(x))
            train_out = np64(copy.deepcopy(model).train()(x))

        def after(m: nn.Module) -> Any:
            m.train()  # what the training loop does at every epoch
            with torch.no_grad():
                first = np64(m(x))
                m(other)  # a training batch: a frozen layer must not learn from it
                return first, np64(m(x))

        _, (first, second) = call.call((model,), check_mutation=False, after=after)
        compare(first, want, [(train_out, "after model.train() the batch-norm layers normalise "
                               "with batch statistics again: model.train() sets every "
                               "submodule's training flag, undoing bn.eval().")],
                "outputs after model.train()", atol=1e-10)
        compare(second, want, [], "outputs after one more training batch", atol=1e-10)

    def grads(call: StudentCall, rng: np.random.Generator) -> None:
        model, x, _ = setup(rng)

        def after(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters() if p.requires_grad)

        _, trainable = call.call((model,), check_mutation=False, after=after)
        if trainable > _NON_BN_NUMEL:
            raise CheckFailed(f"{trainable} parameters still require grad; only the "
                              f"{_NON_BN_NUMEL} of the Linear layers should: freeze the "
                              "batch-norm weight and bias too.")
        if trainable < _NON_BN_NUMEL:
            raise CheckFailed("some Linear parameters were frozen too; only batch norm is.")

    return Question("q1", "A freeze that survives model.train()", "freeze_bn", [
        Check("eval-mode outputs after model.train() and a training batch", 2, outputs),
        Check("only the Linear layers stay trainable", 1, grads)], forbid_library_norms=False)


def _q_loader() -> Question:
    def sizes(loader: Any) -> list[int]:
        if not isinstance(loader, DataLoader):
            raise CheckFailed(f"make_loader should return a DataLoader, got "
                              f"{type(loader).__name__}.")
        return [len(b[0]) for b in loader]

    def run(call: StudentCall, rng: np.random.Generator, remainder: int) -> tuple[list, list, int]:
        bs = int(rng.integers(4, 9))
        n = bs * int(rng.integers(3, 6)) + remainder
        data = TensorDataset(t64(rng.normal(size=(n, 4))), torch.arange(n))
        loader, _ = call.call((data, bs, int(rng.integers(1 << 30))), check_mutation=False)
        got = sizes(loader)
        order = torch.cat([b[1] for b in loader]).tolist()
        return got, order, n

    def remainder_one(call: StudentCall, rng: np.random.Generator) -> None:
        got, _, _ = run(call, rng, 1)
        if min(got) < 2:
            raise CheckFailed(f"batch sizes {got}: the last batch holds one example, and a "
                              "batch-norm layer in training raises 'Expected more than 1 value "
                              "per channel'. DataLoader(..., drop_last=True) drops it.")

    def divisible(call: StudentCall, rng: np.random.Generator) -> None:
        got, order, n = run(call, rng, 0)
        if sorted(order) != list(range(n)):
            raise CheckFailed(f"when the batch size divides the {n} examples, an epoch should "
                              f"see each once; it saw {len(order)}.")
        if order == list(range(n)):
            raise CheckFailed("the examples come in their stored order: shuffle them.")

    return Question("q2", "A loader without a batch of one", "make_loader", [
        Check("dataset size with remainder 1", 2, remainder_one),
        Check("every example once, shuffled, when the size divides", 1, divisible)],
        forbid_library_norms=False)


def _bn_stats(model: nn.Module) -> list[np.ndarray]:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return [np64(t) for bn in bns for t in (bn.running_mean, bn.running_var)]


def _q_average() -> Question:
    def setup(rng: np.random.Generator) -> tuple[list[nn.Module], list[torch.Tensor]]:
        base = make_model(int(rng.integers(1 << 30)))
        models = []
        for _ in range(int(rng.integers(2, 5))):
            m = copy.deepcopy(base)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(t64(rng.normal(0, 0.3, tuple(p.shape))))
                for bn in (m[1], m[4]):
                    bn.running_mean.add_(t64(rng.normal(0, 0.5, bn.num_features)))
            models.append(m)
        batches = [t64(rng.normal(size=(int(s), 4)) * 2 + 1) for s in rng.integers(5, 12, 4)]
        return models, batches

    def reference(models: list[nn.Module], batches: list[torch.Tensor]) -> nn.Module:
        from torch.optim.swa_utils import update_bn

        averaged = copy.deepcopy(models[0])
        with torch.no_grad():
            for name, p in averaged.named_parameters():
                p.copy_(sum(dict(m.named_parameters())[name] for m in models) / len(models))
        update_bn(batches, averaged)
        return averaged.eval()

    def states(models: list[nn.Module], batches: list[torch.Tensor]) -> list[list[np.ndarray]]:
        return [[np64(v.double()) for v in m.state_dict().values()] for m in models]

    def params(call: StudentCall, rng: np.random.Generator) -> None:
        models, batches = setup(rng)
        want = reference(models, batches)
        before = states(models, batches)
        got, after = call.call((models, batches), check_mutation=False, after=states)
        if not isinstance(got, nn.Module):
            raise CheckFailed(f"average_models should return a model, got {type(got).__name__}.")
        for (name, a), b in zip(got.named_parameters(), want.parameters(), strict=True):
            compare(np64(a), np64(b), [], f"parameter {name}", atol=1e-12)
        if not all(np.array_equal(a, b) for sa, sb in zip(before, after, strict=True)
                   for a, b in zip(sa, sb, strict=True)):
            raise CheckFailed("the given models changed: average into a copy (copy.deepcopy), "
                              "the fine-tuned models are still needed.")

    def stats(call: StudentCall, rng: np.random.Generator) -> None:
        models, batches = setup(rng)
        want = reference(models, batches)
        stale = buggy_average(models, batches)
        got, _ = call.call((models, batches), check_mutation=False)
        if not isinstance(got, nn.Module):
            raise CheckFailed(f"average_models should return a model, got {type(got).__name__}.")
        got_stats, want_stats, stale_stats = _bn_stats(got), _bn_stats(want), _bn_stats(stale)
        if len(got_stats) != len(want_stats):
            raise CheckFailed("the averaged model should keep its two batch-norm layers.")
        for g, w, s in zip(got_stats, want_stats, stale_stats, strict=True):
            compare(g, w, [(s, "you averaged the models' running statistics: they describe the "
                            "activations under each model's own weights, not under the "
                            "averaged weights. Re-estimate them (torch.optim.swa_utils.update_bn "
                            "or a pass with momentum=None).")],
                    "the running statistics", atol=1e-10)
        if got.training:
            raise CheckFailed("the averaged model is left in training mode; return it in eval "
                              "mode, ready to predict.")

    return Question("q3", "Weight averaging with fresh statistics", "average_models", [
        Check("parameters are the average; the given models unchanged", 1, params),
        Check("statistics re-estimated for the averaged weights, eval mode", 2, stats)],
        forbid_library_norms=False)


QUESTIONS: list[Question] = [_q_freeze(), _q_loader(), _q_average()]
