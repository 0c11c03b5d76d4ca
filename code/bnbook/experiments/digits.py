"""scikit-learn's handwritten digits and the one training loop every part of the book runs on them.

The digits (1,797 images of 8×8 pixels, bundled with scikit-learn, so nothing downloads) are the
book's stand-in for MNIST and ImageNet: small enough that a run takes seconds on two CPU cores,
hard enough that an untrained or badly conditioned network shows it. Every chapter that trains
a network calls :func:`load` for the data and :func:`train` for the loop, so two chapters that
report "the same net, the same budget" really ran the same code.

A run is deterministic for a given ``seed`` (the weights, the order of the batches and any
dropout all draw from it) on a fixed number of threads: the chapters call
``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Curves", "Digits", "evaluate", "load", "mlp", "train"]

#: Test examples held out of the 1,797; the rest train.
N_TEST = 397


@dataclass(frozen=True)
class Digits:
    """A train/test split of the digits, as float32 tensors with pixels scaled to [0, 1]."""

    x_train: Tensor  # (1400, 64), or (1400, 1, 8, 8) with images=True
    y_train: Tensor  # (1400,) int64 labels 0..9
    x_test: Tensor  # (397, 64) or (397, 1, 8, 8)
    y_test: Tensor  # (397,)


def load(*, images: bool = False, seed: int = 0) -> Digits:
    """The digits split into 1,400 training and 397 test examples by a seeded permutation.

    Args:
        images: return (N, 1, 8, 8) images for convolutional nets instead of (N, 64) vectors.
        seed: seed of the permutation that splits the examples.
    """
    from sklearn.datasets import load_digits  # only needed here; keeps `import bnbook` light

    pixels, labels = load_digits(return_X_y=True)
    x = torch.tensor(pixels / 16.0, dtype=torch.float32)  # (1797, 64), in [0, 1]
    y = torch.tensor(labels, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    if images:
        x = x.reshape(-1, 1, 8, 8)
    n_train = len(x) - N_TEST
    return Digits(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def mlp(
    widths: Sequence[int],
    *,
    norm: Callable[[int], nn.Module] | None = None,
    activation: Callable[[], nn.Module] = nn.ReLU,
    init_std: float | None = None,
    bias: bool = True,
) -> nn.Sequential:
    """A fully connected net ``widths[0] -> ... -> widths[-1]``.

    Each hidden layer is Linear, then ``norm(width)`` if given, then ``activation()``; the last
    Linear has neither. With ``init_std`` every weight is drawn from N(0, init_std²) and every
    bias set to zero (the 2015 paper's MNIST net uses this kind of init); otherwise torch's
    default init is kept. Draws from torch's global generator: seed it first (``train`` does).
    """
    if len(widths) < 2:
        raise ValueError(f"widths must name at least an input and an output width, got {widths}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        linear = nn.Linear(n_in, n_out, bias=bias)
        if init_std is not None:
            nn.init.normal_(linear.weight, std=init_std)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(widths) - 2:
            if norm is not None:
                layers.append(norm(n_out))
            layers.append(activation())
    return nn.Sequential(*layers)


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``x, y``, in eval mode, without gradients.

    The model's train/eval flags are restored afterwards (through
    :func:`bnbook.inference.eval_mode`), so this can be called in the middle of training.
    """
    from bnbook.inference import eval_mode

    with eval_mode(model), torch.no_grad():
        logits = model(x)
    accuracy = (logits.argmax(1) == y).float().mean().item()
    return accuracy, F.cross_entropy(logits, y).item()


@dataclass
class Curves:
    """What :func:`train` recorded: one entry per evaluation, at ``steps``."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # mean loss since the last record
    test_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)  # on the whole training set
    #: True if the loss became inf/NaN; training stopped there and the rest of the run is absent.
    diverged: bool = False

    @property
    def final_accuracy(self) -> float:
        """The last test accuracy recorded (0.1, chance, is what a diverged run is worth)."""
        return self.test_accuracy[-1] if self.test_accuracy and not self.diverged else 0.1


def train(
    model: nn.Module,
    data: Digits,
    *,
    steps: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    record_every: int = 100,
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[int, nn.Module, Tensor], None] | None = None,
    progress: str | None = None,
) -> Curves:
    """Train ``model`` with SGD and cross-entropy on ``data``; return its curves.

    Batches are drawn without replacement, epoch by epoch, in an order seeded by ``seed``; a
    last batch smaller than ``batch_size`` is dropped (a batch of one would break BN in training).
    Every ``record_every`` steps (and after the last) the test accuracy and loss are recorded,
    in eval mode. A step whose loss is not finite stops the run and marks it ``diverged``.

    Args:
        model: any module mapping a batch of ``data.x_train`` to 10 logits; trained in place.
        data: the split, from :func:`load`.
        steps: number of optimiser steps.
        lr, momentum, weight_decay: plain SGD's settings (ignored if ``optimizer`` is given).
        batch_size: examples per step, 2 or more.
        seed: seeds the batch order and torch's global generator (dropout, noise layers).
        record_every: steps between two records.
        optimizer: use this optimiser instead of SGD.
        on_step: called after each step as ``on_step(step, model, loss)``, for extra
            measurements (``step`` counts from 1).
        progress: a tqdm description; None shows no progress bar.
    """
    if steps < 1 or record_every < 1:
        raise ValueError(f"steps and record_every must be >= 1, got {steps} and {record_every}")
    n = len(data.x_train)
    if not 2 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [2, {n}], got {batch_size}")
    torch.manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    opt = optimizer or torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    curves = Curves()
    batches: list[Tensor] = []
    running, count = 0.0, 0
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=progress, leave=False)
    model.train()
    for step in range(1, steps + 1):
        if not batches:
            order = torch.randperm(n, generator=order_gen)
            batches = list(order[: n - n % batch_size].split(batch_size))[::-1]
        idx = batches.pop()
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        value = loss.item()
        if not math.isfinite(value):
            curves.diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running, count = running + value, count + 1
        if on_step is not None:
            on_step(step, model, loss.detach())
        if step % record_every == 0 or step == steps:
            acc, test_loss = evaluate(model, data.x_test, data.y_test)
            train_acc, _ = evaluate(model, data.x_train, data.y_train)
            curves.steps.append(step)
            curves.train_loss.append(running / count)
            curves.test_accuracy.append(acc)
            curves.test_loss.append(test_loss)
            curves.train_accuracy.append(train_acc)
            running, count = 0.0, 0
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return curves
