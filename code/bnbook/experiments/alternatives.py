"""The runs of the chapter "Alternatives": small batches, sequences, depth, and speed.

* :func:`small_batch_sweep` trains the same small net on the digits with each normaliser at
  several batch sizes and seeds (an MLP, where a batch-norm statistic averages over the batch
  only, or a small CNN, where it averages over the batch and the 8×8 positions).
* :func:`padding_dependence` and :func:`incremental_decoding` show what batch statistics do to
  padded sequences and to one-token-at-a-time decoding.
* :func:`grad_norms_by_depth` measures pre-norm vs post-norm Transformer gradients at init.
* :func:`median_times` times calls the way a benchmark should (warm-up, interleaved repeats,
  medians).
* :func:`non_iid_run` trains with batches drawn from two classes at a time.

Every run goes through :func:`bnbook.experiments.digits.train` except the non-i.i.d. one:
``train`` draws each batch from a seeded permutation of the whole training split, and no
``Digits`` object can make that permutation class-restricted; calling ``train`` once per step on
a one-class split would re-seed and evaluate the whole test set at every step. That run keeps a
ten-line loop with the same model, loss, optimiser and evaluation.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnbook import norms
from bnbook.experiments import digits

__all__ = [
    "KINDS",
    "FrozenBatchNorm2d",
    "SweepResult",
    "grad_norms_by_depth",
    "incremental_decoding",
    "layer_facts",
    "make_norm",
    "median_time",
    "median_times",
    "non_iid_run",
    "padding_dependence",
    "pooled_statistics",
    "renorm_schedule",
    "small_batch_sweep",
    "small_cnn",
]

#: The normalisers of the sweep: name -> what it normalises over in an (N, C, *) activation.
KINDS = {
    "BN": "batch (and positions), per channel",
    "BRN": "as BN, corrected towards the running statistics",
    "GN": "groups of channels (and positions), per sample",
    "LN": "all channels (and positions), per sample",
    "IN": "positions, per sample and channel",
    "none": "nothing",
}


def make_norm(kind: str, *, image: bool, groups: int = 4) -> Callable[[int], nn.Module] | None:
    """A factory ``width -> normalisation layer`` for :func:`digits.mlp` or :func:`small_cnn`.

    Args:
        kind: one of :data:`KINDS`.
        image: the layer sees (N, C, H, W) maps (True) or (N, C) features (False).
        groups: GN's number of groups.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if kind == "none":
        return None
    if kind == "IN" and not image:
        raise ValueError("kind='IN' needs image=True: one value per (sample, feature)")
    # torch's layers where torch has one (the book's are tested equal to them, and torch's
    # cost less Python per step); the book's BatchRenorm, which torch lacks.
    bn = nn.BatchNorm2d if image else nn.BatchNorm1d
    brn = norms.BatchRenorm2d if image else norms.BatchRenorm1d
    return {
        "BN": lambda c: bn(c),
        # Starts as BN (r_max=1, d_max=0); renorm_schedule opens the clipping during training.
        "BRN": lambda c: brn(c, r_max=1.0, d_max=0.0),
        "GN": lambda c: nn.GroupNorm(groups, c),
        "LN": lambda c: nn.GroupNorm(1, c),  # LayerNorm over (C, *positions), weight per C
        "IN": lambda c: nn.InstanceNorm2d(c, affine=True),
    }[kind]


def small_cnn(norm: Callable[[int], nn.Module] | None, width: int = 16) -> nn.Sequential:
    """conv3x3(1→w) → norm → ReLU → conv3x3(w→2w, stride 2) → norm → ReLU → pool → linear(10)."""
    layers: list[nn.Module] = []
    for c_in, c_out, stride in ((1, width, 1), (width, 2 * width, 2)):
        layers.append(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1))
        if norm is not None:
            layers.append(norm(c_out))
        layers.append(nn.ReLU())
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10)]
    return nn.Sequential(*layers)


def renorm_schedule(
    total_steps: int, r_max: float = 3.0, d_max: float = 5.0, warmup: float = 0.1
) -> Callable[[int, nn.Module, Tensor], None]:
    """An ``on_step`` callback that opens BatchRenorm's clipping as Ioffe (2017) does.

    BatchNorm (r_max=1, d_max=0) for the first ``warmup`` fraction of the steps, then r_max and
    d_max rise linearly to their final values by the middle of training, and stay there.
    """
    start, end = warmup * total_steps, 0.5 * total_steps

    def on_step(step: int, model: nn.Module, _loss: Tensor) -> None:
        t = min(1.0, max(0.0, (step - start) / max(end - start, 1.0)))
        for layer in model.modules():
            if isinstance(layer, norms._BatchRenorm):
                layer.r_max = 1.0 + (r_max - 1.0) * t
                layer.d_max = d_max * t

    return on_step


@dataclass
class SweepResult:
    """Test errors of one (normaliser, batch size) cell, one entry per seed."""

    kind: str
    batch_size: int
    test_error: list[float]  # eval mode (running statistics for BN/BRN)
    train_mode_error: list[float]  # test set in training mode, batches of batch_size


def _train_mode_error(model: nn.Module, data: digits.Digits, batch_size: int) -> float:
    """Test error with batch statistics, the test set cut into batches of ``batch_size``."""
    model = copy.deepcopy(model).train()  # a copy: training mode rewrites running statistics
    n = len(data.x_test) - len(data.x_test) % batch_size
    with torch.no_grad():
        logits = torch.cat([model(data.x_test[i:i + batch_size]) for i in range(0, n, batch_size)])
    return 1.0 - (logits.argmax(1) == data.y_test[:n]).float().mean().item()


def small_batch_sweep(
    kinds: Sequence[str],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    *,
    image: bool = False,
    steps: int | None = 300,
    epochs: float | None = None,
    lr: float = 0.02,
    progress: str | None = "small-batch sweep",
) -> list[SweepResult]:
    """Train one net per (kind, batch size, seed) on the digits; return the test errors.

    Either every run takes ``steps`` SGD steps (momentum 0.9, the same learning rate), or, with
    ``epochs`` instead, every run sees the same number of examples (smaller batches then take
    proportionally more steps).

    Args:
        kinds: normalisers from :data:`KINDS`.
        batch_sizes: examples per step (>= 2).
        seeds: one run per seed (weights and batch order).
        image: train :func:`small_cnn` on 8×8 images instead of an MLP 64-64-64-10.
        steps: SGD steps per run (used when ``epochs`` is None).
        epochs: passes over the training set, instead of a fixed step count.
        lr: SGD learning rate.
        progress: a tqdm description, or None.
    """
    data = digits.load(images=image)
    cells = [(k, b) for k in kinds for b in batch_sizes]
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells) * len(seeds), desc=progress, leave=False)
    results = []
    for kind, batch_size in cells:
        if epochs is not None:
            steps = max(1, round(epochs * len(data.x_train) / batch_size))
        if steps is None:
            raise ValueError("give steps or epochs")
        cell = SweepResult(kind, batch_size, [], [])
        for seed in seeds:
            torch.manual_seed(seed)
            norm = make_norm(kind, image=image)
            model = small_cnn(norm) if image else digits.mlp([64, 64, 64, 10], norm=norm)
            curves = digits.train(
                model, data, steps=steps, lr=lr, momentum=0.9, batch_size=batch_size,
                seed=seed, record_every=steps,
                on_step=renorm_schedule(steps) if kind == "BRN" else None,
            )
            cell.test_error.append(1.0 - curves.final_accuracy)
            cell.train_mode_error.append(_train_mode_error(model, data, batch_size))
            if bar is not None:
                bar.update(1)
        results.append(cell)
    if bar is not None:
        bar.close()
    return results


def non_iid_run(
    kind: str, *, batch_size: int = 8, classes_per_batch: int = 1, steps: int = 600,
    lr: float = 0.02, seed: int = 0,
) -> float:
    """Test error of the MLP trained with batches drawn from ``classes_per_batch`` labels only.

    Each step picks ``classes_per_batch`` labels at random and ``batch_size`` training examples
    among them: batches that are not samples of the data distribution, the setting Batch
    Renormalization was designed for (Ioffe 2017). Same model, loss, optimiser and evaluation as
    :func:`small_batch_sweep`; BatchRenorm gets :func:`renorm_schedule`. Its own loop because
    :func:`digits.train` draws batches from a permutation of the whole split (see the module
    docstring).

    Args:
        kind: a normaliser from :data:`KINDS` (not "IN": the MLP has one value per feature).
        batch_size: examples per step.
        classes_per_batch: how many labels a batch may contain (1 to 10).
        steps: SGD steps (momentum 0.9).
        lr: SGD learning rate.
        seed: seeds the weights, the labels chosen and the examples drawn.

    Returns:
        The test error in eval mode, in [0, 1].
    """
    if not 1 <= classes_per_batch <= 10:
        raise ValueError(f"classes_per_batch must be in [1, 10], got {classes_per_batch}")
    data = digits.load()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = digits.mlp([64, 64, 64, 10], norm=make_norm(kind, image=False))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    by_class = [torch.nonzero(data.y_train == c).ravel() for c in range(10)]
    schedule = renorm_schedule(steps)
    model.train()
    for step in range(1, steps + 1):
        labels = torch.randperm(10, generator=gen)[:classes_per_batch]
        pool = torch.cat([by_class[c] for c in labels.tolist()])
        idx = pool[torch.randperm(len(pool), generator=gen)[:batch_size]]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule(step, model, loss.detach())
    accuracy, _ = digits.evaluate(model, data.x_test, data.y_test)
    return 1.0 - accuracy


# -- sequences -----------------------------------------------------------------------------------


def _bn_over_tokens(x: Tensor, training: bool, layer: nn.BatchNorm1d) -> Tensor:
    """BatchNorm1d applied to (B, T, D) tokens: statistics over every (b, t) position."""
    b, t, d = x.shape
    return layer.train(training)(x.reshape(b * t, d)).reshape(b, t, d)


def padding_dependence(dim: int = 16, seed: int = 0) -> dict[str, float]:
    """How much one sequence's normalised tokens change with its batch-mates and their padding.

    A sequence of 5 tokens is normalised (a) in a batch with one other sequence of 5 tokens,
    (b) in a batch with a sequence of 2 tokens padded to 5 with zeros, (c) in a batch padded to
    length 12. BatchNorm (training mode) pools every position of the batch, padding included;
    LayerNorm normalises each token over its own features.

    Returns:
        The largest change of the sequence's output between (a) and (b), and (a) and (c), for
        BN and LN, and the fraction of positions in (c) that are padding.
    """
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randn(5, dim, generator=gen) * 2 + 1  # (T, D), the sequence we follow
    other = torch.randn(5, dim, generator=gen) * 2 + 1
    short = torch.cat([other[:2], torch.zeros(3, dim)])  # 2 tokens, 3 padding

    def batch(a: Tensor, b: Tensor, length: int) -> Tensor:
        pad = torch.zeros(length - len(a), dim)
        return torch.stack([torch.cat([a, pad]), torch.cat([b, pad])])  # (2, length, D)

    bn, ln = nn.BatchNorm1d(dim), norms.LayerNorm(dim)
    out = {}
    with torch.no_grad():
        for name, layer in (("BN", bn), ("LN", ln)):
            def f(x: Tensor, layer: nn.Module = layer, name: str = name) -> Tensor:
                y = _bn_over_tokens(x, True, layer) if name == "BN" else layer(x)
                return y[0, :5]  # the followed sequence's 5 real tokens

            ref = f(batch(seq, other, 5))
            out[f"{name}_shorter_mate"] = (f(batch(seq, short, 5)) - ref).abs().max().item()
            out[f"{name}_padded_to_12"] = (f(batch(seq, other, 12)) - ref).abs().max().item()
        padded = batch(seq, other, 12)  # (2, 12, D)
        out["padding_fraction_12"] = (padded.abs().sum(dim=-1) == 0).float().mean().item()
    return out


def incremental_decoding(dim: int = 16, length: int = 6, seed: int = 0) -> dict[str, Any]:
    """Normalise a sequence all at once, then one token at a time with batch 1, as a decoder does.

    Returns:
        The largest difference between the two for LayerNorm, and what BatchNorm does with one
        token in training mode (the error torch raises) and in eval mode (fresh running stats).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, length, dim, generator=gen) * 2 + 1  # (B=1, T, D)
    ln = norms.LayerNorm(dim)
    with torch.no_grad():
        whole = ln(x)
        stepwise = torch.cat([ln(x[:, t:t + 1]) for t in range(length)], dim=1)
        bn = nn.BatchNorm1d(dim)
        try:
            bn.train()(x[:, 0])  # one token, batch 1: one value per feature
            bn_error = ""
        except ValueError as err:
            bn_error = str(err)
    return {"LN_max_diff": (whole - stepwise).abs().max().item(), "BN_train_error": bn_error}


def grad_norms_by_depth(
    norm_first: bool, *, layers: int = 6, d_model: int = 64, seeds: Sequence[int] = (0, 1, 2),
) -> list[float]:
    """Gradient norm of each layer's last FFN weight at initialisation (Xiong et al. 2020).

    A stack of ``torch.nn.TransformerEncoderLayer`` (4 heads, FFN 4·d_model, no dropout),
    pre-norm (``norm_first``, plus a final LayerNorm) or post-norm, on random token vectors
    (batch 8, length 16), with a linear read-out of the mean token and cross-entropy against
    random labels. The norm is averaged over ``seeds``.

    Returns:
        ``layers`` numbers, from the first layer (next to the input) to the last.
    """
    totals = [0.0] * layers
    for seed in seeds:
        torch.manual_seed(seed)
        blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0,
                                       batch_first=True, norm_first=norm_first)
            for _ in range(layers)
        )
        final = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        head = nn.Linear(d_model, 10)
        x = torch.randn(8, 16, d_model)
        for block in blocks:
            x = block(x)
        loss = F.cross_entropy(head(final(x).mean(dim=1)), torch.randint(0, 10, (8,)))
        loss.backward()
        for i, block in enumerate(blocks):
            totals[i] += block.linear2.weight.grad.norm().item() / len(seeds)
    return totals


def median_times(
    fns: Mapping[str, Callable[[], object]], *, repeats: int = 15, warmup: int = 3,
) -> dict[str, float]:
    """Median wall time of each ``fns[name]()`` in seconds, the calls interleaved.

    Every function is called ``warmup`` times untimed first (allocator, caches, lazy
    initialisation); then each of ``repeats`` rounds times every function once, in turn. A burst
    of load from another process then hits every contender in the same rounds instead of one
    contender's whole block of repeats, and the median of the rounds moves by at most a rank
    for each slow call. The caller fixes the thread count (the chapters run on one thread).

    Args:
        fns: name -> a function of no arguments (one forward pass, one forward and backward...).
        repeats: timed rounds.
        warmup: untimed calls of each function before the first round.

    Returns:
        name -> median seconds per call.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def median_time(fn: Callable[[], object], *, repeats: int = 15, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds: :func:`median_times` with one function."""
    return median_times({"fn": fn}, repeats=repeats, warmup=warmup)["fn"]


def pooled_statistics(x: Tensor, groups: int = 4) -> dict[str, dict[str, float]]:
    """For an (N, C, H, W) activation: what each normaliser's statistics look like on it.

    Returns:
        kind -> {"count": statistics per batch, "m": values per statistic, "mean_spread": std of
        the statistics' means across the batch's statistics, "std_min"/"std_max": the smallest
        and largest of their standard deviations}.
    """
    n, c = x.shape[:2]
    view = x.reshape(n, c, -1)  # (N, C, L)
    grouped = {
        "BN": view.transpose(0, 1).reshape(c, -1),  # (C, N·L)
        "LN": view.reshape(n, -1),  # (N, C·L)
        "IN": view.reshape(n * c, -1),  # (N·C, L)
        "GN": view.reshape(n * groups, -1),  # (N·G, C/G·L)
    }
    out = {}
    for kind, rows in grouped.items():
        std = rows.std(dim=1, unbiased=False)  # (count,)
        out[kind] = {"count": rows.shape[0], "m": rows.shape[1],
                     "mean_spread": rows.mean(dim=1).std().item(),
                     "std_min": std.min().item(), "std_max": std.max().item()}
    return out


def layer_facts(make: Callable[[], nn.Module], shape: tuple[int, ...]) -> dict[str, Any]:
    """Measured properties of a normalisation layer, for the chapter's comparison table.

    Args:
        make: builds a fresh layer (seeded inside).
        shape: an input shape it accepts, batch first.

    Returns:
        ``batch_dependent``: sample 0's training-mode output changes when the other samples do;
        ``train_eq_eval``: after a few training batches, train and eval mode give the same
        output; ``buffers``: the state_dict entries that are not parameters;
        ``params``: the number of learned values.
    """
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(shape) * 2 + 1
    other = x.clone()
    other[1:] = torch.randn(other[1:].shape) * 3 - 2
    with torch.no_grad():
        layer.train()
        for _ in range(3):
            layer(torch.randn(shape) * 2 + 1)
        y_train = layer(x)
        changed = (layer(other)[0] - y_train[0]).abs().max().item() > 1e-6
        layer.eval()
        y_eval = layer(x)
    params = {n for n, _ in layer.named_parameters()}
    return {
        "batch_dependent": changed,
        "train_eq_eval": bool(torch.allclose(y_train, y_eval, atol=1e-6)),
        "buffers": [k for k in layer.state_dict() if k not in params],
        "params": sum(p.numel() for p in layer.parameters()),
    }


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with everything fixed: an affine map per channel, whatever the mode.

    Detection codebases use this for a pretrained backbone trained with tiny batches (torchvision
    has one of the same name): weight, bias and statistics are buffers, so neither the optimiser
    nor ``train()`` changes them.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        """``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel."""
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)
