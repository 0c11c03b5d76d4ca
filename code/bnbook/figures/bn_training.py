"""The figures of "What BN does to training".

Each drawing function paints one state from data it is handed (runs computed by
:mod:`bnbook.experiments.bn_training`); each factory takes the chapter's data, or, called
without arguments, computes it with the chapter's settings (once per process), so the browser
test and the chapter draw the same pictures.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure

from bnbook.experiments import bn_training as bt
from bnbook.figures.core import InteractiveFigure, Slider, Toggle

__all__ = [
    "activations_explorer",
    "batch_noise_explorer",
    "draw_activations",
    "draw_batch_noise",
    "draw_regularisation",
    "draw_steps_to_target",
    "draw_sweep",
    "init_explorer",
    "lr_explorer",
    "regularisation_explorer",
    "steps_to_target_explorer",
]

_PLAIN = "#d62728"
_BN = "#1f77b4"
_GREY = "#888888"


def _named(draw: Callable[..., None], name: str) -> Callable[..., None]:
    draw.__name__ = name
    return draw


# -- the paper's Figure 1 ----------------------------------------------------------------------


def draw_activations(fig: Figure, step: float, plain: bt.ActivationRun,
                     bn: bt.ActivationRun) -> None:
    """Test accuracy (a) and one sigmoid input's 15/50/85th percentiles (b: without BN, c: with).

    Args:
        fig: the Figure to draw on.
        step: the training step the cursor marks (one of the recorded steps).
        plain, bn: the two runs of :func:`bnbook.experiments.bn_training.activation_run`.
    """
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.8, bottom=0.16, wspace=0.32)
    acc, *bands = axes
    for run, colour, label in ((plain, _PLAIN, "without BN"), (bn, _BN, "with BN")):
        acc.plot([0, *run.curves.steps], [0.1, *run.curves.test_accuracy], color=colour,
                 lw=1.4, label=label)
    acc.set_ylim(0, 1.02)
    acc.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    acc.set_ylabel("test accuracy")
    acc.set_title("(a)", fontsize=10)
    acc.legend(loc="lower right", fontsize=8)
    lows = min(plain.percentiles.min(), bn.percentiles.min())
    highs = max(plain.percentiles.max(), bn.percentiles.max())
    pad = 0.05 * (highs - lows)
    for ax, run, colour, title in ((bands[0], plain, _PLAIN, "(b) without BN"),
                                   (bands[1], bn, _BN, "(c) with BN")):
        p = run.percentiles  # (R, 3)
        ax.fill_between(run.steps, p[:, 0], p[:, 2], color=colour, alpha=0.2, lw=0)
        for k, style in enumerate(("--", "-", "--")):
            ax.plot(run.steps, p[:, k], color=colour, lw=1.2, ls=style)
        ax.set_ylim(lows - pad, highs + pad)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("input of one sigmoid")
    k = int(np.argmin(np.abs(plain.steps - step)))
    last = plain.steps[-1]
    for ax in axes:
        ax.axvline(step, color=_GREY, lw=0.8, ls=":")
        ax.set_xlim(0, last)
        ax.set_xticks([0, last / 2, last])
        ax.set_xlabel("training step")
    pl, nb = plain.percentiles[k], bn.percentiles[k]
    a_pl = np.interp(step, [0, *plain.curves.steps], [0.1, *plain.curves.test_accuracy])
    a_bn = np.interp(step, [0, *bn.curves.steps], [0.1, *bn.curves.test_accuracy])
    fig.suptitle(
        f"step {step:.0f}: accuracy {a_pl:.2f} without BN, {a_bn:.2f} with; 15/50/85th "
        f"percentiles [{pl[0]:+.2f} {pl[1]:+.2f} {pl[2]:+.2f}] vs "
        f"[{nb[0]:+.2f} {nb[1]:+.2f} {nb[2]:+.2f}]", fontsize=9)


def activations_explorer(plain: bt.ActivationRun | None = None,
                         bn: bt.ActivationRun | None = None) -> InteractiveFigure:
    """The paper's Figure 1 on the digits, with a cursor over training steps.

    Args:
        plain, bn: the runs without and with BN; None computes the chapter's.
    """
    plain = plain or bt.default_activation_run(False)
    bn = bn or bt.default_activation_run(True)
    stride = max(1, (len(plain.steps) - 1) // 6)
    steps = tuple(float(s) for s in plain.steps[::stride])
    return InteractiveFigure(
        _named(lambda fig, step: draw_activations(fig, step, plain, bn), "draw_activations"),
        controls=[Slider("step", "training step", steps, default=steps[-1], fmt="{:.0f}")],
        figsize=(9.0, 3.4),
        alt="Three panels: test accuracy of the three-layer sigmoid net without and with Batch "
        "Normalization, and the 15th, 50th and 85th percentiles of one last-layer sigmoid "
        "input over training for each; the slider moves a cursor along training.",
    )


# -- sweeps ------------------------------------------------------------------------------------

_SWEEP_LABEL = {"lr": "learning rate", "init_std": "initial weight std"}


def draw_sweep(fig: Figure, value: float, sweep: bt.Sweep, threshold: float = 0.9) -> None:
    """Both runs' test accuracy at one value of a sweep (left), and every final accuracy (right).

    Args:
        fig: the Figure to draw on.
        value: the value of the swept setting to show (one of ``sweep.values``).
        sweep: from :func:`bnbook.experiments.bn_training.sweep`.
        threshold: the accuracy line that counts a run as trained.
    """
    k = int(np.argmin(np.abs(np.log(sweep.values) - math.log(value))))
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1.0])
    fig.subplots_adjust(left=0.08, right=0.98, top=0.84, bottom=0.16, wspace=0.28)
    label = _SWEEP_LABEL[sweep.name]
    for bn, colour, name in ((False, _PLAIN, "without BN"), (True, _BN, "with BN")):
        c = sweep.curves(bn)[k]
        end = " (diverged)" if c.diverged else ""
        left.plot([0, *c.steps], [0.1, *c.test_accuracy], color=colour, lw=1.5,
                  label=name + end)
        right.plot(sweep.values, sweep.final(bn), "o-", color=colour, lw=1.2, ms=4,
                   label=name)
    last = max(c.steps[-1] if c.steps else 1 for c in sweep.plain + sweep.bn)
    left.set_xlim(0, last)
    left.set_xticks([0, last / 2, last])
    left.set_ylim(0, 1.02)
    left.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    left.set_xlabel("training step")
    left.set_ylabel("test accuracy")
    left.legend(loc="lower right", fontsize=8)
    right.axvline(sweep.values[k], color=_GREY, lw=0.8, ls=":")
    right.axhline(threshold, color=_GREY, lw=0.8, ls="--")
    right.set_xscale("log")
    right.set_xticks(sweep.values)
    right.set_xticklabels([f"{v:g}" for v in sweep.values], fontsize=8)
    right.minorticks_off()
    right.set_ylim(0, 1.02)
    right.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    right.set_xlabel(label)
    right.set_ylabel("final test accuracy")
    a_plain, a_bn = sweep.final(False)[k], sweep.final(True)[k]
    fig.suptitle(f"{label} {sweep.values[k]:g}: final test accuracy {a_plain:.3f} without BN, "
                 f"{a_bn:.3f} with BN", fontsize=10)


def _sweep_explorer(sweep: bt.Sweep, default: float, alt: str) -> InteractiveFigure:
    label = _SWEEP_LABEL[sweep.name]
    return InteractiveFigure(
        _named(lambda fig, **kw: draw_sweep(fig, kw[sweep.name], sweep), "draw_sweep"),
        controls=[Slider(sweep.name, label, sweep.values, default=default, fmt="{:g}")],
        figsize=(8.5, 3.3),
        alt=alt,
    )


def lr_explorer(sweep: bt.Sweep | None = None) -> InteractiveFigure:
    """The learning-rate sweep: move the rate, see both runs' curves.

    Args:
        sweep: a sweep over ``"lr"``; None computes the chapter's.
    """
    sweep = sweep or bt.default_lr_sweep()
    return _sweep_explorer(sweep, default=sweep.values[len(sweep.values) // 2],
                           alt="Test accuracy over training of the same net without and with "
                           "Batch Normalization at the learning rate the slider selects, and "
                           "the final accuracy of every rate.")


def init_explorer(sweep: bt.Sweep | None = None) -> InteractiveFigure:
    """The initial-weight-scale sweep: move the scale, see both runs' curves.

    Args:
        sweep: a sweep over ``"init_std"``; None computes the chapter's.
    """
    sweep = sweep or bt.default_init_sweep()
    return _sweep_explorer(sweep, default=sweep.values[0],
                           alt="Test accuracy over training of the same sigmoid net without "
                           "and with Batch Normalization for the initial weight scale the "
                           "slider selects, and the final accuracy of every scale.")


# -- regularisation ----------------------------------------------------------------------------


def _gap(c: object) -> float:
    return c.train_accuracy[-1] - c.test_accuracy[-1]  # type: ignore[attr-defined]


def draw_regularisation(fig: Figure, bn: bool, dropout: bool,
                        runs: bt.RegularisationRuns) -> None:
    """Train and test accuracy of one configuration (left); every configuration's gap (right).

    Args:
        fig: the Figure to draw on.
        bn, dropout: the configuration to show.
        runs: from :func:`bnbook.experiments.bn_training.regularisation_runs`.
    """
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1.0])
    fig.subplots_adjust(left=0.08, right=0.98, top=0.84, bottom=0.2, wspace=0.3)
    colour = _BN if bn else _PLAIN
    for c in runs[(bn, dropout)]:
        left.plot(c.steps, c.train_accuracy, color=colour, lw=1.2, ls="--")
        left.plot(c.steps, c.test_accuracy, color=colour, lw=1.4)
    left.plot([], [], color=_GREY, ls="--", label="train")
    left.plot([], [], color=_GREY, label="test")
    left.legend(loc="lower right", fontsize=8)
    left.set_ylim(0.85, 1.005)
    left.set_xlabel("training step")
    left.set_ylabel("accuracy (eval mode)")
    order = [(False, False), (False, True), (True, False), (True, True)]
    names = ["plain", "dropout", "BN", "BN +\ndropout"]
    for i, key in enumerate(order):
        gaps = [100 * _gap(c) for c in runs[key]]
        right.bar(i, np.mean(gaps), color=_BN if key[0] else _PLAIN,
                  alpha=1.0 if key == (bn, dropout) else 0.35)
        right.plot([i] * len(gaps), gaps, "k.", ms=5)
    right.set_xticks(range(4))
    right.set_xticklabels(names, fontsize=8)
    right.set_ylabel("train − test accuracy (points)")
    mean_gap = 100 * np.mean([_gap(c) for c in runs[(bn, dropout)]])
    test = 100 * np.mean([c.test_accuracy[-1] for c in runs[(bn, dropout)]])
    fig.suptitle(f"BN {'on' if bn else 'off'}, dropout {'on' if dropout else 'off'}: "
                 f"final test accuracy {test:.1f}%, gap {mean_gap:.1f} points "
                 "(mean over seeds)", fontsize=10)


def regularisation_explorer(runs: bt.RegularisationRuns | None = None) -> InteractiveFigure:
    """Train/test gap with and without BN and dropout.

    Args:
        runs: the four configurations' runs; None computes the chapter's.
    """
    runs = runs or bt.default_regularisation()
    onoff = (("off", False), ("on", True))
    return InteractiveFigure(
        _named(lambda fig, bn, dropout: draw_regularisation(fig, bn, dropout, runs),
               "draw_regularisation"),
        controls=[Toggle("bn", "Batch Norm", onoff, default=False),
                  Toggle("dropout", "dropout", onoff, default=False)],
        figsize=(8.5, 3.3),
        alt="Training and test accuracy of one net with Batch Normalization and dropout "
        "switched on or off, and the train-test gap of all four configurations.",
    )


# -- the noise of batch statistics -------------------------------------------------------------

#: Batches sampled per batch size in the batch-noise figure.
NOISE_BATCHES = 4000


def draw_batch_noise(fig: Figure, batch_size: float, population: np.ndarray) -> None:
    """Histograms of the batch mean and variance of one feature for one batch size, with theory.

    Args:
        fig: the Figure to draw on.
        batch_size: m.
        population: the feature on every example, shape (N,).
    """
    m = int(batch_size)
    mu, var = bt.batch_statistics(population, m, NOISE_BATCHES, seed=m)
    th = bt.batch_statistics_theory(population, m)
    sd = math.sqrt(th.var)
    left, right = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.82, bottom=0.17, wspace=0.25)
    z = (mu - th.mean) / sd
    left.hist(z, bins=np.linspace(-3, 3, 61), density=True, color=_BN, alpha=0.6)
    grid = np.linspace(-3, 3, 301)
    s = math.sqrt(th.var_of_mean) / sd
    left.plot(grid, np.exp(-0.5 * (grid / s) ** 2) / (s * math.sqrt(2 * math.pi)), color="k",
              lw=1.0, label="normal, sd σ/√m")
    left.set_xlim(-3, 3)
    left.set_xticks([-3, -2, -1, 0, 1, 2, 3])
    left.set_yticks([])
    left.set_xlabel("(μ_B − μ) / σ")
    left.legend(loc="upper right", fontsize=8)
    r = var / th.var
    right.hist(r, bins=np.linspace(0, 3, 61), density=True, color=_BN, alpha=0.6)
    right.axvline(th.mean_of_var / th.var, color="k", lw=1.2, label="E[σ_B²]/σ² (theory)")
    right.axvline(1.0, color=_GREY, lw=0.8, ls=":")
    right.set_xlim(0, 3)
    right.set_xticks([0, 0.5, 1, 1.5, 2, 2.5, 3])
    right.set_yticks([])
    right.set_xlabel("σ_B² / σ²")
    right.legend(loc="upper right", fontsize=8)
    sd_var = math.sqrt(th.var_of_var or 0.0) / th.var
    fig.suptitle(f"m = {m}: sd of μ_B/σ {z.std():.3f} (theory {s:.3f}); sd of σ_B²/σ² "
                 f"{r.std():.3f} (theory {sd_var:.3f}); mean of σ_B²/σ² {r.mean():.3f} "
                 f"(theory {th.mean_of_var / th.var:.3f})", fontsize=9)


#: The batch sizes of the batch-noise figure.
NOISE_SIZES = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


def batch_noise_explorer(population: np.ndarray | None = None) -> InteractiveFigure:
    """The noise of μ_B and σ_B² against the batch size.

    Args:
        population: the feature's values; None uses the chapter's (a pre-activation of the
            trained BN net on the training set).
    """
    pop = bt.default_population() if population is None else np.asarray(population)
    return InteractiveFigure(
        _named(lambda fig, batch_size: draw_batch_noise(fig, batch_size, pop),
               "draw_batch_noise"),
        controls=[Slider("batch_size", "batch size m", NOISE_SIZES, default=8.0,
                         fmt="{:.0f}")],
        figsize=(8.5, 3.2),
        alt="Histograms of the standardised batch mean and of the batch variance over the "
        "population variance for the batch size the slider selects, with the theoretical "
        "spread and mean drawn over them.",
    )


# -- the paper's ImageNet results --------------------------------------------------------------

#: Target accuracies (percent) the steps-to-target figure offers.
TARGETS = (65.0, 70.0, 72.2, 72.5, 72.7, 73.0, 74.0, 74.8, 75.0)


def draw_steps_to_target(fig: Figure, target: float) -> None:
    """What the published numbers say about each network's steps to ``target``% accuracy.

    Args:
        fig: the Figure to draw on.
        target: the target validation accuracy in percent.
    """
    ax = fig.subplots()
    fig.subplots_adjust(left=0.17, right=0.97, top=0.82, bottom=0.17)
    lo_x, hi_x = 5.0, 8.0  # log10 of the steps: a linear axis draws much faster than a log one
    results = bt.PAPER_RESULTS
    inception = bt.steps_to_target(results[0], target)
    for row, result in enumerate(results):
        y = len(results) - 1 - row
        low, high = bt.steps_to_target(result, target)
        colour = _PLAIN if result.name == "Inception" else _BN
        if math.isinf(low):
            ax.text(lo_x + 0.05, y, f"never: best {result.max_accuracy:.1f}%", va="center",
                    fontsize=8, color=_GREY)
            continue
        if result.steps_to_72_2 is None and result.steps_to_max is None:
            ax.text(lo_x + 0.05, y, f"reached (best {result.max_accuracy:.1f}%); no step count "
                    "published", va="center", fontsize=8, color=_GREY)
            continue
        if low == high:
            x = math.log10(low)
            ax.plot(x, y, "o", color=colour, ms=7)
            note = f"{low / 1e6:.1f}M (published)"
            if inception[0] == inception[1] and result.name != "Inception":
                note += f", {inception[0] / low:.1f}x fewer than Inception"
            left_side = x > 7.0
            ax.text(x + (-0.08 if left_side else 0.08), y + 0.18, note, fontsize=8,
                    ha="right" if left_side else "left")
            continue
        start = lo_x if low == 0 else math.log10(low)
        stop = hi_x if high is None else math.log10(high)
        ax.plot([start, stop], [y, y], color=colour, lw=5, alpha=0.45, solid_capstyle="butt")
        if low == 0:
            bound = f"at most {high / 1e6:.1f}M"  # type: ignore[operator]
        else:
            bound = f"at least {low / 1e6:.1f}M"
            bound += "" if high is None else f", at most {high / 1e6:.1f}M"
        ax.text(start + 0.05, y + 0.22, bound + " (a bound, not a published count)", fontsize=8)
    ax.set_yticks(range(len(results)))
    ax.set_yticklabels([r.name for r in reversed(results)], fontsize=9)
    ax.set_ylim(-0.6, len(results) - 0.4)
    ax.set_xlim(lo_x, hi_x)
    ax.set_xticks([5.0, 6.0, 7.0, 8.0])
    ax.set_xticklabels(["100k", "1M", "10M", "100M"])
    ax.set_xlabel("training steps to reach the target (ImageNet, batch 32; log scale)")
    fig.suptitle(f"target {target:.1f}% top-1: published numbers of Ioffe and Szegedy (2015), "
                 "not our run", fontsize=10)


def steps_to_target_explorer() -> InteractiveFigure:
    """The paper's steps-to-accuracy numbers with a movable target, bounds where unpublished."""
    return InteractiveFigure(
        draw_steps_to_target,
        controls=[Slider("target", "target accuracy %", TARGETS, default=72.2, fmt="{:.1f}")],
        figsize=(8.5, 3.3),
        alt="For each network of the 2015 paper, the training steps to reach the target "
        "accuracy: a dot where the paper publishes the number, a bar where only a bound "
        "follows, and 'never' above the network's best accuracy.",
    )
