"""What Batch Normalization does to training, measured on the digits.

The runs of the chapter "What BN does to training". Every run goes through :func:`run`, which
builds a fully connected net with :func:`net` and trains it with
:func:`bnbook.experiments.digits.train`, so the sweeps, the 2015 paper's MNIST experiment and
the regularisation runs differ only in the settings they pass.

* :func:`net` and :func:`run`: one net, one training run, its curves.
* :func:`activation_run`: the 2015 paper's Figure 1 (test accuracy, and the 15th/50th/85th
  percentiles of one last-hidden-layer sigmoid input over training).
* :func:`sweep`: the same net over a grid of learning rates or initial weight scales.
* :func:`batch_statistics` and :func:`batch_statistics_theory`: the noise of the batch mean and
  variance for a batch size, sampled and predicted.
* :data:`PAPER_RESULTS` and :func:`steps_to_target`: the ImageNet numbers the paper publishes,
  and what they say (and do not say) about the steps to any target accuracy.
* ``default_*`` functions: the chapter's settings, run once per process and cached, so that a
  figure built without arguments shows what the chapter computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor, nn

from bnbook.experiments import digits
from bnbook.inference import eval_mode

Array = NDArray[np.float64]

__all__ = [
    "ACTIVATIONS",
    "PAPER_RESULTS",
    "PERCENTILES",
    "ActivationRun",
    "BatchNoiseTheory",
    "PaperResult",
    "Sweep",
    "activation_run",
    "batch_statistics",
    "batch_statistics_theory",
    "net",
    "percentiles",
    "run",
    "steps_to_target",
    "sweep",
    "unit_inputs",
]

#: The nonlinearities :func:`net` accepts.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}

#: The percentiles the paper's Figure 1(b, c) draws.
PERCENTILES = (15.0, 50.0, 85.0)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run a block on one torch thread (the book's runs are defined on one), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- one net, one run --------------------------------------------------------------------------


def net(
    *,
    bn: bool,
    depth: int = 3,
    width: int = 100,
    activation: str = "sigmoid",
    init_std: float | None = None,
    dropout: float = 0.0,
) -> nn.Sequential:
    """The fully connected digits net ``64 -> width x depth -> 10`` of this chapter.

    Each hidden layer is Linear, then ``torch.nn.BatchNorm1d`` if ``bn``, then the activation,
    then Dropout if ``dropout > 0``. With BN the Linear has no bias: the paper replaces
    g(Wu + b) by g(BN(Wu)), because BN's mean subtraction cancels b and β takes its role
    (Ioffe and Szegedy 2015, section 3.2). Draws from torch's global generator: seed it first.

    Args:
        bn: whether each hidden layer normalises its pre-activations.
        depth: number of hidden layers, at least 1.
        width: units per hidden layer, at least 1.
        activation: ``"sigmoid"`` or ``"relu"``.
        init_std: every weight drawn from N(0, init_std²) and biases zero; None keeps torch's
            default init.
        dropout: probability of zeroing a hidden unit in training, in [0, 1).

    Returns:
        An ``nn.Sequential``: the layers of :func:`bnbook.experiments.digits.mlp`.
    """
    if not isinstance(bn, bool):
        raise TypeError(f"bn must be True or False, got {bn!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an int >= 1, got {width!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if init_std is not None and not (math.isfinite(init_std) and init_std > 0):
        raise ValueError(f"init_std must be None or a finite number > 0, got {init_std!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    act = ACTIVATIONS[activation]

    def hidden() -> nn.Module:
        return nn.Sequential(act(), nn.Dropout(dropout)) if dropout > 0 else act()

    return digits.mlp(
        [64, *[width] * depth, 10],
        norm=nn.BatchNorm1d if bn else None,
        activation=hidden,
        init_std=init_std,
        bias=not bn,
    )


def _train(
    data: digits.Digits,
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int,
    record_every: int,
    progress: str | None,
    on_step: Callable[[int, nn.Module, Tensor], None] | None = None,
    before: Callable[[nn.Module], None] | None = None,
    **net_kwargs: object,
) -> tuple[nn.Sequential, digits.Curves]:
    torch.manual_seed(seed)  # the weights; digits.train re-seeds for batch order and dropout
    model = net(**net_kwargs)  # type: ignore[arg-type]
    if before is not None:
        before(model)
    curves = digits.train(model, data, steps=steps, lr=lr, seed=seed, batch_size=batch_size,
                          record_every=record_every, on_step=on_step, progress=progress)
    return model, curves


def run(
    data: digits.Digits,
    *,
    steps: int,
    lr: float,
    seed: int = 0,
    batch_size: int = 60,
    record_every: int = 100,
    progress: str | None = None,
    **net_kwargs: object,
) -> digits.Curves:
    """Seed, build :func:`net` from ``net_kwargs``, train it with plain SGD; return its curves.

    The one helper behind every run of the chapter: "the same net, the same budget" means the
    same call with one argument changed.

    Args:
        data: the digits split, from :func:`bnbook.experiments.digits.load`.
        steps, lr, batch_size, record_every, progress: passed to ``digits.train``.
        seed: seeds the weights, the batch order and dropout.
        net_kwargs: ``bn`` and any other keyword of :func:`net`.

    Returns:
        The run's :class:`~bnbook.experiments.digits.Curves`.
    """
    return _train(data, steps=steps, lr=lr, seed=seed, batch_size=batch_size,
                  record_every=record_every, progress=progress, **net_kwargs)[1]


# -- the 2015 paper's Figure 1 -----------------------------------------------------------------


def unit_inputs(
    model: nn.Sequential, x: Tensor, unit: int = 0, layer: int = -1, *, norm: bool = False
) -> Tensor:
    """What one hidden unit's activation function (or BN layer) receives, for every example.

    Read in eval mode (a batch-normalised net then uses its running statistics, the paper's
    inference network), without gradients, through a forward hook.

    Args:
        model: a net from :func:`net`.
        x: the examples, shape (N, 64).
        unit: which unit of the layer.
        layer: which hidden layer, counted like a Python index (-1: the last).
        norm: read the input of the layer's BatchNorm1d (the pre-activation Wu) instead of the
            input of its activation function.

    Returns:
        The unit's input for each example, shape (N,).
    """
    kinds: tuple[type[nn.Module], ...] = (
        (nn.BatchNorm1d,) if norm else (*ACTIVATIONS.values(), nn.Sequential)
    )
    found = [m for m in model if isinstance(m, kinds)]
    if not found:
        raise ValueError(f"model has no {'BatchNorm1d' if norm else 'hidden activation'} to read")
    seen: list[Tensor] = []
    handle = found[layer].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0][:, unit].detach().clone()  # (N,)


def percentiles(values: Tensor, q: Sequence[float] = PERCENTILES) -> Array:
    """The ``q``-th percentiles of ``values`` (linear interpolation, as numpy's default).

    Args:
        values: shape (N,).
        q: percentiles in [0, 100].

    Returns:
        Shape (len(q),), float64.
    """
    qs = torch.tensor([v / 100.0 for v in q], dtype=torch.float64)
    return torch.quantile(values.to(torch.float64), qs).numpy()


@dataclass(frozen=True)
class ActivationRun:
    """One run of the paper's Figure 1 experiment.

    Attributes:
        bn: whether the net normalises.
        curves: the run's curves (test accuracy at ``curves.steps``).
        steps: the steps at which the unit was read, 0 (before training) first, shape (R,).
        inputs: the unit's input for every test example at those steps, shape (R, N_test).
        percentiles: its 15th/50th/85th percentiles, shape (R, 3).
        model: the trained net.
    """

    bn: bool
    curves: digits.Curves
    steps: Array
    inputs: Array
    percentiles: Array
    model: nn.Sequential


def activation_run(
    data: digits.Digits,
    *,
    bn: bool,
    steps: int,
    lr: float,
    init_std: float = 0.1,
    seed: int = 0,
    unit: int = 0,
    record_every: int = 100,
    progress: str | None = None,
) -> ActivationRun:
    """The 2015 paper's MNIST experiment (its section 4.1, Figure 1) on the digits.

    Three fully connected hidden layers of 100 sigmoid units, weights from a small Gaussian,
    batches of 60, with or without BN; every ``record_every`` steps the test accuracy and the
    input of one sigmoid of the last hidden layer on every test example are recorded.

    Args:
        data: the digits split.
        bn: with or without Batch Normalization.
        steps, lr, seed, record_every, progress: the run's settings.
        init_std: the standard deviation of the initial weights.
        unit: which unit of the last hidden layer to follow.

    Returns:
        An :class:`ActivationRun`.
    """
    at: list[int] = []
    values: list[Tensor] = []

    def read(model: nn.Module, step: int) -> None:
        at.append(step)
        values.append(unit_inputs(model, data.x_test, unit))  # type: ignore[arg-type]

    def on_step(step: int, model: nn.Module, _loss: Tensor) -> None:
        if step % record_every == 0 or step == steps:
            read(model, step)

    model, curves = _train(data, steps=steps, lr=lr, seed=seed, batch_size=60,
                       record_every=record_every, progress=progress, on_step=on_step,
                       before=lambda model: read(model, 0), bn=bn, depth=3, width=100,
                       activation="sigmoid", init_std=init_std)
    inputs = torch.stack(values).to(torch.float64).numpy()  # (R, N_test)
    return ActivationRun(bn=bn, curves=curves, steps=np.array(at, dtype=np.float64),
                         inputs=inputs,
                         percentiles=np.stack([percentiles(v) for v in values]), model=model)


# -- sweeps ------------------------------------------------------------------------------------

_SWEPT = ("lr", "init_std")


@dataclass(frozen=True)
class Sweep:
    """One net trained at each value of one setting, with and without BN.

    Attributes:
        name: the setting swept, ``"lr"`` or ``"init_std"``.
        values: its values, increasing.
        plain: the runs without BN, one per value.
        bn: the runs with BN, one per value.
    """

    name: str
    values: tuple[float, ...]
    plain: tuple[digits.Curves, ...]
    bn: tuple[digits.Curves, ...]

    def curves(self, bn: bool) -> tuple[digits.Curves, ...]:
        return self.bn if bn else self.plain

    def final(self, bn: bool) -> Array:
        """Final test accuracy per value (0.1, chance, for a run that diverged)."""
        return np.array([c.final_accuracy for c in self.curves(bn)])

    def trained(self, bn: bool, threshold: float = 0.9) -> tuple[float, ...]:
        """The values whose run ended at or above ``threshold`` test accuracy."""
        return tuple(v for v, a in zip(self.values, self.final(bn), strict=True)
                     if a >= threshold)


def sweep(
    data: digits.Digits,
    name: str,
    values: Sequence[float],
    *,
    steps: int,
    lr: float | None = None,
    seed: int = 0,
    record_every: int = 100,
    progress: bool = False,
    **net_kwargs: object,
) -> Sweep:
    """Train :func:`net` at every value of ``name``, with and without BN (same seed, budget).

    Args:
        data: the digits split.
        name: ``"lr"`` or ``"init_std"``.
        values: the values, strictly increasing.
        steps, seed, record_every: each run's settings.
        lr: the learning rate when ``name`` is ``"init_std"``.
        progress: show one tqdm bar over the runs.
        net_kwargs: the other keywords of :func:`net` (not ``bn``).

    Returns:
        A :class:`Sweep`.
    """
    if name not in _SWEPT:
        raise ValueError(f"name must be one of {_SWEPT}, got {name!r}")
    values = tuple(float(v) for v in values)
    if len(values) < 1 or any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"values must be strictly increasing and non-empty, got {values}")
    if name == "init_std" and lr is None:
        raise ValueError("lr is required when sweeping init_std")
    if "bn" in net_kwargs:
        raise ValueError("bn is not a setting of sweep: every value runs both with and without")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * len(values), desc=f"sweep {name}", leave=False)
    runs: dict[bool, list[digits.Curves]] = {False: [], True: []}
    for value in values:
        for bn in (False, True):
            settings = {**net_kwargs, name: value}
            rate = settings.pop("lr") if name == "lr" else lr
            runs[bn].append(run(data, steps=steps, lr=rate, seed=seed,  # type: ignore[arg-type]
                                record_every=record_every, bn=bn, **settings))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return Sweep(name, values, tuple(runs[False]), tuple(runs[True]))


# -- the noise of batch statistics -------------------------------------------------------------


def batch_statistics(
    values: ArrayLike, batch_size: int, n_batches: int, *, replace: bool = True, seed: int = 0
) -> tuple[Array, Array]:
    """The batch mean μ_B and biased batch variance σ_B² of many batches of one feature.

    Args:
        values: the feature's value on every example of the population, shape (N,).
        batch_size: m, examples per batch, 2 or more.
        n_batches: how many batches.
        replace: draw each batch's examples independently (with replacement); with False each
            batch is drawn without replacement, as one batch of an epoch of ``digits.train``.
        seed: seed of the draws.

    Returns:
        ``(mu, var)``, each shape (n_batches,).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"values must be 1-D with at least 2 entries, got shape {x.shape}")
    if not 2 <= batch_size <= len(x):
        raise ValueError(f"batch_size must be in [2, {len(x)}], got {batch_size}")
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    rng = np.random.default_rng(seed)
    if replace:
        idx = rng.integers(0, len(x), size=(n_batches, batch_size))
    else:
        idx = np.stack([rng.permutation(len(x))[:batch_size] for _ in range(n_batches)])
    batches = x[idx]  # (n_batches, m)
    mu = batches.mean(axis=1)  # (n_batches,)
    var = ((batches - mu[:, None]) ** 2).mean(axis=1)  # (n_batches,): biased, as BN uses
    return mu, var


@dataclass(frozen=True)
class BatchNoiseTheory:
    """What theory predicts for batches of m examples from a population of N values.

    Attributes:
        mean: the population mean μ.
        var: the population variance σ² (dividing by N).
        var_of_mean: Var(μ_B).
        mean_of_var: E[σ_B²].
        var_of_var: Var(σ_B²); only for batches drawn with replacement (None otherwise).
    """

    mean: float
    var: float
    var_of_mean: float
    mean_of_var: float
    var_of_var: float | None


def batch_statistics_theory(
    values: ArrayLike, batch_size: int, *, replace: bool = True
) -> BatchNoiseTheory:
    """The moments of μ_B and σ_B² that :func:`batch_statistics` samples, in closed form.

    With replacement the m draws are independent, and with μ₄ the population's fourth central
    moment:

    * Var(μ_B) = σ²/m,
    * E[σ_B²] = (m − 1)/m · σ²  (the biased variance is low by a factor (m − 1)/m),
    * Var(σ_B²) = (m − 1)²/m³ · (μ₄ − (m − 3)/(m − 1) · σ⁴).

    Without replacement (one batch of an epoch), the finite-population forms:
    Var(μ_B) = σ²/m · (N − m)/(N − 1) and E[σ_B²] = (m − 1)/m · N/(N − 1) · σ².

    Args:
        values: the population, shape (N,).
        batch_size: m.
        replace: as in :func:`batch_statistics`.

    Returns:
        A :class:`BatchNoiseTheory`.
    """
    x = np.asarray(values, dtype=np.float64)
    n, m = len(x), int(batch_size)
    if x.ndim != 1 or n < 2:
        raise ValueError(f"values must be 1-D with at least 2 entries, got shape {x.shape}")
    if not 2 <= m <= n:
        raise ValueError(f"batch_size must be in [2, {n}], got {batch_size}")
    centred = x - x.mean()  # (N,)
    var = float(np.mean(centred**2))
    mu4 = float(np.mean(centred**4))
    if replace:
        return BatchNoiseTheory(
            mean=float(x.mean()), var=var, var_of_mean=var / m, mean_of_var=(m - 1) / m * var,
            var_of_var=(m - 1) ** 2 / m**3 * (mu4 - (m - 3) / (m - 1) * var**2),
        )
    return BatchNoiseTheory(
        mean=float(x.mean()), var=var, var_of_mean=var / m * (n - m) / (n - 1),
        mean_of_var=(m - 1) / m * n / (n - 1) * var, var_of_var=None,
    )


# -- the paper's ImageNet numbers --------------------------------------------------------------


@dataclass(frozen=True)
class PaperResult:
    """One network of the paper's section 4.2.2, as published (nothing here is our run).

    Attributes:
        name: the paper's name for it.
        steps_to_72_2: training steps to reach 72.2% validation accuracy (Inception's best), or
            None when the paper gives none.
        max_accuracy: the best single-crop validation accuracy, in percent.
        steps_to_max: steps to reach ``max_accuracy``, where the paper states it.
    """

    name: str
    steps_to_72_2: float | None
    max_accuracy: float
    steps_to_max: float | None = None


#: The paper's table of section 4.2.2 (printed as its Figure 3) and the text around it
#: (Ioffe and Szegedy 2015): steps to 72.2% and the best accuracy of each network; Inception's
#: best is 72.2% at 31·10⁶ steps, BN-x30's is 74.8% "after 6·10⁶ steps".
PAPER_RESULTS: tuple[PaperResult, ...] = (
    PaperResult("Inception", 31.0e6, 72.2, 31.0e6),
    PaperResult("BN-Baseline", 13.3e6, 72.7),
    PaperResult("BN-x5", 2.1e6, 73.0),
    PaperResult("BN-x30", 2.7e6, 74.8, 6.0e6),
    PaperResult("BN-x5-Sigmoid", None, 69.8),
)


def steps_to_target(result: PaperResult, target: float) -> tuple[float, float | None]:
    """What the published numbers say about the steps ``result`` needs to reach ``target``%.

    The paper gives the steps at one or two accuracies per network, not its curves, so for
    most targets only bounds follow. "Reaching" a target means first crossing it, so the steps
    to a lower target are at most those to a higher one.

    Args:
        result: one of :data:`PAPER_RESULTS`.
        target: the target accuracy in percent.

    Returns:
        ``(low, high)``: the steps lie in [low, high]; ``low == high`` when published;
        ``high`` is None when no upper bound follows; ``(inf, inf)`` when the network's best
        accuracy is below the target (it never gets there).
    """
    if not math.isfinite(target):
        raise ValueError(f"target must be finite, got {target}")
    if target > result.max_accuracy:
        return math.inf, math.inf
    known = [(72.2, result.steps_to_72_2)]
    if result.steps_to_max is not None:
        known.append((result.max_accuracy, result.steps_to_max))
    known = [(acc, s) for acc, s in known if s is not None]
    for acc, s in known:
        if math.isclose(target, acc):
            return s, s
    low = max((s for acc, s in known if acc < target), default=0.0)
    high = min((s for acc, s in known if acc > target), default=None)
    return low, high


# -- the chapter's settings, run once per process ----------------------------------------------

#: The chapter's settings; the figures built without arguments use the same.
FIGURE1 = {"steps": 3000, "lr": 0.1, "init_std": 0.1, "record_every": 150}
LR_SWEEP = {"values": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0), "steps": 800,
            "activation": "relu", "record_every": 50}
INIT_SWEEP = {"values": (0.01, 0.1, 0.3, 1.0, 3.0, 10.0), "steps": 800, "lr": 0.3,
              "activation": "sigmoid", "record_every": 50}
REGULARISATION = {"steps": 1000, "lr": 0.1, "activation": "relu", "depth": 2, "width": 128,
                  "record_every": 100, "seeds": (0, 1), "dropout": 0.5}

#: ``{(bn, with_dropout): curves of each seed}``, as :func:`regularisation_runs` returns.
RegularisationRuns = dict[tuple[bool, bool], tuple[digits.Curves, ...]]

_CACHE: dict[str, object] = {}


def _cached(key: str, compute: Callable[[], object]) -> object:
    if key not in _CACHE:
        with _one_thread():
            _CACHE[key] = compute()
    return _CACHE[key]


def default_digits() -> digits.Digits:
    """The chapter's split (seed 0)."""
    return _cached("digits", digits.load)  # type: ignore[return-value]


def default_activation_run(bn: bool, progress: bool = False) -> ActivationRun:
    """:func:`activation_run` with the chapter's :data:`FIGURE1` settings (computed once)."""
    label = f"Figure 1, BN {'on' if bn else 'off'}" if progress else None
    return _cached(f"figure1-{bn}", lambda: activation_run(  # type: ignore[return-value]
        default_digits(), bn=bn, progress=label, **FIGURE1))


def default_population() -> Array:
    """A real feature for the batch-noise section: the pre-activation Wu of unit 0 of the last
    hidden layer of the chapter's trained BN net (:func:`default_activation_run`), on each of
    the 1,400 training examples."""
    model = default_activation_run(True).model
    return _cached("population", lambda: unit_inputs(  # type: ignore[return-value]
        model, default_digits().x_train, norm=True).to(torch.float64).numpy())


def default_lr_sweep(progress: bool = False) -> Sweep:
    """The chapter's learning-rate sweep, :data:`LR_SWEEP` (computed once)."""
    settings = dict(LR_SWEEP)
    values = settings.pop("values")
    return _cached("lr", lambda: sweep(  # type: ignore[return-value]
        default_digits(), "lr", values, progress=progress, **settings))


def default_init_sweep(progress: bool = False) -> Sweep:
    """The chapter's initial-weight-scale sweep, :data:`INIT_SWEEP` (computed once)."""
    settings = dict(INIT_SWEEP)
    values = settings.pop("values")
    return _cached("init", lambda: sweep(  # type: ignore[return-value]
        default_digits(), "init_std", values, progress=progress, **settings))


def regularisation_runs(
    data: digits.Digits,
    *,
    seeds: Sequence[int],
    dropout: float,
    progress: bool = False,
    **settings: object,
) -> RegularisationRuns:
    """The same net with and without BN, with and without dropout, over several seeds.

    Args:
        data: the digits split.
        seeds: one run per seed and configuration.
        dropout: the dropout probability of the runs "with dropout".
        progress: show one tqdm bar over the runs.
        settings: the other keywords of :func:`run` and :func:`net` (not ``bn``, ``dropout``).

    Returns:
        ``{(bn, with_dropout): curves of each seed}``.
    """
    configs = [(bn, drop) for bn in (False, True) for drop in (False, True)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs) * len(seeds), desc="regularisation", leave=False)
    out: RegularisationRuns = {}
    for bn, drop in configs:
        runs = []
        for seed in seeds:
            runs.append(run(data, seed=seed, bn=bn, dropout=dropout if drop else 0.0,
                            **settings))  # type: ignore[arg-type]
            if bar is not None:
                bar.update(1)
        out[(bn, drop)] = tuple(runs)
    if bar is not None:
        bar.close()
    return out


def default_regularisation(progress: bool = False) -> RegularisationRuns:
    """The chapter's regularisation runs, :data:`REGULARISATION` (computed once)."""
    return _cached("regularisation", lambda: regularisation_runs(  # type: ignore[return-value]
        default_digits(), progress=progress, **REGULARISATION))
