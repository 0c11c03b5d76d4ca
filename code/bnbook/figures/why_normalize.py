"""The "Why normalize" chapter's figures: saturation under drift, and the runaway bias.

The numbers both figures show come from :mod:`bnbook.experiments`, so the chapter's prose, its
assertions and its pictures read the same functions.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from matplotlib.figure import Figure

from bnbook.experiments import (
    FLAT_EDGE,
    FLAT_FRACTION,
    RunawayBiasRun,
    runaway_bias,
    saturation_batch,
    saturation_stats,
    sigmoid,
    sigmoid_slope,
    standardise,
)
from bnbook.figures.core import InteractiveFigure, Preset, Slider, Toggle

__all__ = [
    "RUNAWAY_STEPS",
    "draw_runaway_bias",
    "draw_saturation",
    "runaway_bias_explorer",
    "saturation_explorer",
]

_STEEP = "#1f77b4"
_FLAT = "#ff7f0e"
_GHOST = "#9a9a9a"
_CURVE = "#444444"
_XLIM = 9.5  # the largest drift (6) plus the batch's widest reach (about 3)


def draw_saturation(fig: Figure, drift: float, bn: bool) -> None:
    """A batch of pre-activations on a sigmoid (top) and on its slope (bottom).

    Args:
        fig: the Figure to draw on.
        drift: the batch mean the layers below produced.
        bn: whether the batch is standardised (γ = 1, β = 0) before the sigmoid; the drifted
            batch is then drawn as a grey ghost.
    """
    raw = saturation_batch(drift)
    x = standardise(raw) if bn else raw
    fraction_flat, mean_slope = saturation_stats(drift, bn)
    threshold = FLAT_FRACTION * float(sigmoid_slope(0.0))
    flat = sigmoid_slope(x) < threshold  # (m,) bool
    grid = np.linspace(-_XLIM, _XLIM, 241)

    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1.3, 1.0])
    fig.subplots_adjust(left=0.1, right=0.98, top=0.87, bottom=0.12, hspace=0.12)
    for ax in (top, bottom):
        for side in (-1, 1):  # the flat region, both tails
            ax.axvspan(side * FLAT_EDGE, side * _XLIM, color="#f3f3f3", lw=0)
    top.plot(grid, sigmoid(grid), color=_CURVE, lw=1.2)
    for side in (-1, 1):
        top.text(side * (FLAT_EDGE + _XLIM) / 2, 0.5, "flat", ha="center", fontsize=8,
                 color=_GHOST)
    bottom.plot(grid, sigmoid_slope(grid), color=_CURVE, lw=1.2)
    bottom.axhline(threshold, color=_CURVE, lw=0.8, ls=":")
    bottom.text(_XLIM - 0.2, threshold + 0.008, "flat: g′ < 0.1·g′(0)", ha="right",
                fontsize=8, color=_CURVE)

    if bn:  # where the layers below put the batch, and where BN moves it
        top.scatter(raw, sigmoid(raw), s=12, facecolors="none", edgecolors=_GHOST, lw=0.6)
        bottom.scatter(raw, sigmoid_slope(raw), s=12, facecolors="none", edgecolors=_GHOST,
                       lw=0.6)
        if abs(raw.mean()) > 0.6:
            top.annotate("", xy=(0.0, 0.5), xytext=(raw.mean(), 0.5),
                         arrowprops={"arrowstyle": "->", "color": _CURVE, "lw": 1.2})
        top.text(raw.mean(), 1.08, "before BN", ha="center", fontsize=8, color=_GHOST)
    for mask, colour in ((~flat, _STEEP), (flat, _FLAT)):
        top.scatter(x[mask], sigmoid(x[mask]), s=12, color=colour, alpha=0.8, lw=0)
        bottom.scatter(x[mask], sigmoid_slope(x[mask]), s=12, color=colour, alpha=0.8, lw=0)
    bottom.axhline(mean_slope, color=_STEEP, lw=1.5, ls="--")
    bottom.text(-_XLIM + 0.2, mean_slope + 0.008, f"mean slope {mean_slope:.3f}",
                fontsize=8, color=_STEEP)

    top.set_ylim(-0.08, 1.2)
    top.set_yticks([0.0, 0.5, 1.0])
    top.set_ylabel("g(x)")
    bottom.set_ylim(-0.01, 0.28)
    bottom.set_yticks([0.0, 0.1, 0.2])
    bottom.set_ylabel("slope g′(x)")
    bottom.set_xlim(-_XLIM, _XLIM)
    bottom.set_xticks([-8, -4, 0, 4, 8])  # fixed ticks: the locator is a large part of a frame
    bottom.set_xlabel("pre-activation x (what reaches the sigmoid)")
    state = "BN on: standardised" if bn else "BN off"
    fig.suptitle(f"drift {drift:+.1f}, {state}: {fraction_flat:.0%} of the batch on the flat "
                 f"part, mean slope {mean_slope:.3f}", fontsize=10)


def saturation_explorer() -> InteractiveFigure:
    """The saturation figure: a drift slider and a Batch Normalization toggle."""
    return InteractiveFigure(
        draw_saturation,
        controls=[
            Slider.range("drift", "drift (batch mean)", -6.0, 6.0, 1.0, default=3.0,
                         fmt="{:+.1f}"),
            Toggle("bn", "Batch Norm", (("off", False), ("on", True)), default=False),
        ],
        presets=[Preset("drift to the flat part", {"drift": 5.0, "bn": False}),
                 Preset("same drift, BN on", {"drift": 5.0, "bn": True})],
        figsize=(7.5, 4.6),
        alt="A batch of pre-activations drawn on a sigmoid and on its slope. The drift slider "
        "moves the batch into the flat tails, where the slope is near zero; with Batch "
        "Normalization on, the batch is standardised back to the steep middle.",
    )


#: How many steps the runaway-bias figure shows.
RUNAWAY_STEPS = 100


@lru_cache(maxsize=4)
def _run(mode: str) -> RunawayBiasRun:
    return runaway_bias(mode, steps=RUNAWAY_STEPS)


def draw_runaway_bias(fig: Figure, step: int, mode: str) -> None:
    """The bias, the loss and the layer's values after ``step`` gradient steps.

    Args:
        fig: the Figure to draw on.
        step: how many steps have been taken, 0 to :data:`RUNAWAY_STEPS`.
        mode: ``"naive"`` (the mean treated as a constant) or ``"aware"``.
    """
    step = int(step)
    run = _run(mode)
    top_bias = _run("naive").bias.max()  # both modes share the axes, so they compare by eye
    steps = np.arange(step + 1)
    colour = "#d62728" if mode == "naive" else _STEEP

    grid = fig.add_gridspec(2, 2, width_ratios=[1.0, 1.15], left=0.08, right=0.98, top=0.84,
                            bottom=0.14, wspace=0.3, hspace=0.6)
    ax_b, ax_loss = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0])
    ax_values = fig.add_subplot(grid[:, 1])

    ax_b.plot(steps, run.bias[: step + 1], color=colour, lw=1.6)
    ax_b.plot(step, run.bias[step], "o", color=colour, ms=4)
    ax_b.set_xlim(0, RUNAWAY_STEPS)
    ax_b.set_xticks([0, 50, 100])
    ax_b.set_ylim(-0.05 * top_bias, 1.1 * top_bias)
    ax_b.set_yticks(np.linspace(0.0, top_bias, 3))
    ax_b.set_title("bias b", fontsize=9)
    ax_loss.plot(steps, run.loss[: step + 1], color=colour, lw=1.6)
    ax_loss.plot(step, run.loss[step], "o", color=colour, ms=4)
    ax_loss.set_xlim(0, RUNAWAY_STEPS)
    ax_loss.set_xticks([0, 50, 100])
    ax_loss.set_ylim(0.0, 1.25 * run.loss.max())
    ax_loss.set_yticks(np.arange(0.0, 1.25 * run.loss.max(), 1.0))
    ax_loss.set_title("loss ℓ", fontsize=9)
    ax_loss.set_xlabel("gradient step")

    x = run.u + run.bias[step]  # (m,)
    rows = [(x, "x = u + b", _GHOST), (run.x_hat[step], "x̂ = x − mean(x)", colour),
            (run.target, "target t", "#2ca02c")]
    for k, (values, label, c) in enumerate(rows):
        y = 2 - k
        ax_values.scatter(values, np.full_like(values, y), s=16, color=c, alpha=0.85, lw=0)
        ax_values.plot([values.mean()] * 2, [y - 0.28, y + 0.28], color=c, lw=1.6)
        ax_values.text(-3.4, y + 0.33, label, fontsize=8, color=c)
    ax_values.set_xlim(-3.5, top_bias + 3.5)
    ax_values.set_ylim(-0.6, 2.8)
    ax_values.set_yticks([])
    ax_values.set_xticks(np.linspace(0.0, top_bias, 3))
    ax_values.set_title("the batch at this step (bars: means)", fontsize=9)

    if mode == "naive":
        what = "naive, mean treated as a constant"
        used = f"∂ℓ/∂b used = {run.grad[min(step, len(run.grad) - 1)]:+.3f}"
    else:
        what = "aware, gradient through the mean"
        used = f"∂ℓ/∂b = {run.grad[min(step, len(run.grad) - 1)]:+.0e} (rounding)"
    shown_b = round(run.bias[step], 2) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0
    fig.suptitle(f"{what}: step {step}, b = {shown_b:.2f}, ℓ = {run.loss[step]:.4f}, "
                 f"{used}", fontsize=9.5)


def runaway_bias_explorer() -> InteractiveFigure:
    """The runaway-bias figure: a step slider and a naive/aware toggle."""
    return InteractiveFigure(
        draw_runaway_bias,
        controls=[
            Slider.range("step", "gradient steps", 0, RUNAWAY_STEPS, 10, default=50,
                         fmt="{:.0f}"),
            Toggle("mode", "gradient", (("naive", "naive"), ("aware", "aware")),
                   default="naive"),
        ],
        figsize=(8.0, 3.6),
        alt="The runaway bias: with the naive gradient the bias b grows linearly with the "
        "steps while the loss and the normalised values stay fixed; with the aware gradient b "
        "stays at zero.",
    )
