"""The shared digits split and training loop (bnbook.experiments.digits)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnbook.experiments import digits


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load()


def test_split_is_a_partition_of_the_bundled_digits(data) -> None:
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    assert len(data.x_train) + len(data.x_test) == len(pixels) == 1797
    assert len(data.x_test) == digits.N_TEST
    # Every example appears exactly once: compare the multisets of (pixels, label) rows.
    rows = torch.cat([torch.cat([data.x_train, data.x_test]),
                      torch.cat([data.y_train, data.y_test])[:, None].float()], 1)
    expected = torch.cat([torch.tensor(pixels / 16.0, dtype=torch.float32),
                          torch.tensor(labels)[:, None].float()], 1)
    assert torch.equal(rows[rows[:, -1].argsort(stable=True)].sort(0).values,
                       expected[expected[:, -1].argsort(stable=True)].sort(0).values)
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0


def test_images_are_the_same_pixels(data) -> None:
    images = digits.load(images=True)
    assert images.x_train.shape == (1400, 1, 8, 8)
    assert torch.equal(images.x_train.reshape(1400, 64), data.x_train)


def test_mlp_layers_and_init() -> None:
    torch.manual_seed(0)
    net = digits.mlp([64, 30, 20, 10], norm=nn.BatchNorm1d, activation=nn.Sigmoid, init_std=0.5)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "BatchNorm1d", "Sigmoid", "Linear", "BatchNorm1d", "Sigmoid",
                     "Linear"]
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in net if isinstance(m, nn.Linear))
    assert abs(float(net[0].weight.detach().std()) - 0.5) < 0.05
    with pytest.raises(ValueError, match="widths"):
        digits.mlp([64])


def test_training_learns_and_repeats_bit_for_bit(data) -> None:
    def run() -> digits.Curves:
        torch.manual_seed(3)
        net = digits.mlp([64, 32, 10], norm=nn.BatchNorm1d)
        return digits.train(net, data, steps=60, lr=0.1, batch_size=32, record_every=20, seed=3)

    first, second = run(), run()
    assert first.steps == [20, 40, 60]
    assert first.test_accuracy == second.test_accuracy
    assert first.train_loss == second.train_loss
    assert first.final_accuracy > 0.6  # chance is 0.1


def test_each_epoch_visits_every_full_batch_once(data) -> None:
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                seen.append(x)
            return self.linear(x)

    batch = 100
    digits.train(Spy(), data, steps=14, lr=0.0, batch_size=batch, record_every=14)
    visited = torch.cat(seen)
    assert visited.shape == (1400, 64)
    assert len(torch.unique(visited, dim=0)) == len(torch.unique(data.x_train, dim=0))


def test_divergence_stops_the_run(data) -> None:
    # A linear model with an absurd rate: the logits overflow float32 within a few steps.
    curves = digits.train(nn.Linear(64, 10), data, steps=200, lr=1e37, batch_size=32,
                          record_every=10)
    assert curves.diverged
    assert curves.final_accuracy == 0.1
    assert len(curves.steps) < 20


def test_on_step_sees_every_step_and_evaluate_restores_modes(data) -> None:
    calls: list[int] = []
    net = digits.mlp([64, 16, 10], norm=nn.BatchNorm1d)
    digits.train(net, data, steps=7, lr=0.1, batch_size=16, record_every=3,
                 on_step=lambda step, model, loss: calls.append(step))
    assert calls == list(range(1, 8))
    net.train()
    net[1].eval()
    digits.evaluate(net, data.x_test, data.y_test)
    assert [m.training for m in net] == [True, False, True, True]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"steps": 0}, "steps"),
    ({"batch_size": 1}, "batch_size"),
    ({"batch_size": 5000}, "batch_size"),
])
def test_bad_settings_are_named(data, kwargs, match) -> None:
    settings = {"steps": 5, "lr": 0.1, "batch_size": 8} | kwargs
    with pytest.raises(ValueError, match=match):
        digits.train(nn.Linear(64, 10), data, **settings)
