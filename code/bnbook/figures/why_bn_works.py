"""The figures of "Why it works: the explanations tested".

Two interactive figures, and plain pictures of the chapter's measured runs:

* :func:`stability_explorer`: one learning rate on a jagged and on a smooth one-dimensional
  landscape, with each landscape's stability limit 2/curvature computed and marked;
* :func:`gradient_explosion_explorer`: the squared gradient norm per layer of a 50-layer ReLU
  net at initialisation, with and without BN, for a batch-size slider
  (from :func:`bnbook.experiments.why_bn_works.init_gradient_norms`);
* ``draw_*`` functions that paint the chapter's measured runs, passed in as data, and
  :func:`picture` to show one of them as a PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bnbook.experiments import why_bn_works as wbw
from bnbook.figures.core import InteractiveFigure, Slider, Toggle

__all__ = [
    "EXPLOSION_BATCHES",
    "EXPLOSION_DEPTH",
    "JAGGED",
    "SMOOTH",
    "Landscape",
    "draw_decoupling",
    "draw_gradient_explosion",
    "draw_ics",
    "draw_noise",
    "draw_scale",
    "draw_smoothness",
    "draw_stability",
    "explosion_norms",
    "outcome",
    "gradient_explosion_explorer",
    "picture",
    "stability_explorer",
]

_COLOURS = {"standard": "#d62728", "bn": "#1f77b4", "noisy_bn": "#2ca02c"}
_NAMES = {"standard": "standard", "bn": "BN", "noisy_bn": "noisy BN"}


# -- the stability figure ----------------------------------------------------------------------


class Landscape:
    """L(x) = ½·c·x² + (r/ω²)·(1 − cos ωx): a bowl of curvature c with ripples of curvature ±r.

    Its curvature L''(x) = c + r·cos ωx is c + r at the minimum x = 0, the largest anywhere, so
    gradient descent settles at 0 only for learning rates below 2/(c + r) (near 0 the landscape
    is the quadratic ½(c + r)x², on which x ← (1 − η(c + r))·x).

    Args:
        name: what the figure calls it.
        c: the bowl's curvature, > 0.
        r: the ripples' curvature, >= 0 (0: a smooth quadratic).
        omega: the ripples' angular frequency.
    """

    def __init__(self, name: str, c: float, r: float = 0.0, omega: float = 3.5) -> None:
        self.name, self.c, self.r, self.omega = name, float(c), float(r), float(omega)

    def loss(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return 0.5 * self.c * x**2 + (self.r / self.omega**2) * (1.0 - np.cos(self.omega * x))

    def grad(self, x: float) -> float:
        return self.c * x + (self.r / self.omega) * math.sin(self.omega * x)

    @property
    def curvature(self) -> float:
        """L''(0) = c + r, the curvature at the minimum."""
        return self.c + self.r

    @property
    def limit(self) -> float:
        """2/curvature: the largest learning rate that settles at the minimum."""
        return 2.0 / self.curvature


#: Without BN: a steep bowl with ripples. With BN: a gentle, smooth bowl.
JAGGED = Landscape("jagged (without BN)", c=3.0, r=2.0)
SMOOTH = Landscape("smooth (with BN)", c=1.0)
_START, _STEPS, _XLIM = 1.6, 25, 3.0


def outcome(land: Landscape, lr: float, steps: int = 300) -> str:
    """What gradient descent at ``lr`` does on ``land`` from the figure's start, over ``steps``.

    Returns:
        ``"converges"`` (within 1e-3 of the minimum at the end), ``"diverges"`` (left the
        plotted range) or ``"does not settle"`` (neither: it bounces around the minimum).
    """
    xs = wbw.descend_1d(land.grad, _START, lr, steps, bound=50.0)
    if abs(xs[-1]) > _XLIM:
        return "diverges"
    return "converges" if abs(xs[-1]) < 1e-3 else "does not settle"


def draw_stability(fig: Figure, lr: float) -> None:
    """Gradient descent at rate ``lr`` on :data:`JAGGED` (left) and :data:`SMOOTH` (right)."""
    grid = np.linspace(-_XLIM, _XLIM, 400)
    axes = fig.subplots(1, 2, sharey=True)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.8, bottom=0.14, wspace=0.08)
    for ax, land in zip(axes, (JAGGED, SMOOTH), strict=True):
        xs = wbw.descend_1d(land.grad, _START, lr, _STEPS, bound=50.0)
        shown = xs[np.abs(xs) <= _XLIM]
        ax.plot(grid, land.loss(grid), color="#444444", lw=1.2)
        ax.plot(shown, land.loss(shown), "-o", color="#ff7f0e", ms=3, lw=0.8, alpha=0.8)
        ax.plot(xs[0], land.loss(xs[0]), "o", color="#2ca02c", ms=6)
        verdict = outcome(land, lr)
        ax.set_title(f"{land.name}\ncurvature {land.curvature:.0f}, limit 2/curvature = "
                     f"{land.limit:.2f}: {verdict}", fontsize=9)
        ax.set_xlim(-_XLIM, _XLIM)
        ax.set_ylim(-0.3, 16.0)
        ax.set_xticks([-3, -1.5, 0, 1.5, 3])
        ax.set_xlabel("parameter x")
    axes[0].set_ylabel("loss L(x)")
    fig.suptitle(f"one learning rate for both: η = {lr:.2f}  ({_STEPS} steps from x = "
                 f"{_START})", fontsize=10)


#: The learning rates of the stability figure's slider.
STABILITY_RATES = (0.05, 0.1, 0.2, 0.3, 0.38, 0.45, 0.6, 0.8, 1.0, 1.4, 1.8, 1.95, 2.1, 2.4)


def stability_explorer() -> InteractiveFigure:
    """The stability figure: a learning-rate slider over both landscapes."""
    return InteractiveFigure(
        draw_stability,
        controls=[Slider("lr", "learning rate η", STABILITY_RATES, default=0.45,
                         fmt="{:.2f}")],
        figsize=(8.0, 3.4),
        alt="Gradient descent with one learning rate on a jagged, high-curvature landscape "
        "and on a smooth, low-curvature one. Below 2/curvature of a landscape the ball "
        "converges to its minimum; above it, it does not.",
    )


# -- the gradient-explosion figure -------------------------------------------------------------

#: Depth and batch sizes of the gradient-explosion figure.
EXPLOSION_DEPTH = 50
EXPLOSION_BATCHES = (2, 4, 16, 64, 256)


@lru_cache(maxsize=32)
def explosion_norms(batch_size: int, bn: bool, width: int = 256, seed: int = 0) -> np.ndarray:
    """:func:`init_gradient_norms` at :data:`EXPLOSION_DEPTH`, cached (chapter and figure share)."""
    norms = wbw.init_gradient_norms(EXPLOSION_DEPTH, batch_size, bn=bn, width=width, seed=seed)
    norms.setflags(write=False)
    return norms


def draw_gradient_explosion(fig: Figure, batch_size: int, bn: bool) -> None:
    """Squared gradient norm per layer at init, both nets in grey, the chosen one in colour."""
    ax = fig.subplots()
    fig.subplots_adjust(left=0.1, right=0.97, top=0.86, bottom=0.15)
    layers = np.arange(1, EXPLOSION_DEPTH + 1)
    for b in EXPLOSION_BATCHES:
        for with_bn in (False, True):
            ax.semilogy(layers, explosion_norms(b, with_bn), color="#cccccc", lw=0.8)
    batch_size = int(batch_size)
    norms = explosion_norms(batch_size, bn)
    factor = wbw.per_layer_factor(norms)
    ax.semilogy(layers, norms, color=_COLOURS["bn" if bn else "standard"], lw=2.0)
    if bn:
        top = norms[-4]
        ax.semilogy(layers, top * wbw.RELU_BN_FACTOR ** (EXPLOSION_DEPTH - 3 - layers),
                    color="#444444", ls=":", lw=1.2)
        ax.text(2, 1e-2, "dotted: π/(π−1) per layer", fontsize=8, color="#444444")
    ax.set_ylim(1e-3, 1e50)
    ax.set_yticks([1e0, 1e10, 1e20, 1e30, 1e40, 1e50])
    ax.set_xlim(1, EXPLOSION_DEPTH)
    ax.set_xlabel("layer l (1 = next to the input)")
    ax.set_ylabel("‖∂L/∂W_l‖²")
    net = "with BN" if bn else "without BN"
    fig.suptitle(f"{EXPLOSION_DEPTH}-layer ReLU net at init, {net}, batch {batch_size}: "
                 f"×{factor:.3f} per layer", fontsize=10)


def gradient_explosion_explorer() -> InteractiveFigure:
    """The gradient-explosion figure: a batch-size slider and a BN toggle."""
    return InteractiveFigure(
        draw_gradient_explosion,
        controls=[
            Slider("batch_size", "batch size", EXPLOSION_BATCHES, default=256, fmt="{:.0f}"),
            Toggle("bn", "Batch Norm", (("off", False), ("on", True)), default=True),
        ],
        figsize=(7.5, 3.6),
        alt="Squared gradient norm of each layer's weights in a 50-layer ReLU network at "
        "initialisation. Without Batch Normalization it stays level; with it, it grows "
        "geometrically towards the input, faster for smaller batches.",
    )


# -- pictures of the measured runs -------------------------------------------------------------


def picture(draw: Callable[..., None], figsize: tuple[float, float] = (8.0, 3.2),
            dpi: int = 80, **data: Any) -> bytes:
    """The PNG of ``draw(fig, **data)`` on a new Figure (for a non-interactive picture)."""
    with matplotlib.style.context("default"):
        fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(fig)
        draw(fig, **data)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def draw_noise(fig: Figure, curves: Mapping[str, Any],
               sweep: Mapping[float, Any]) -> None:
    """Test accuracy of the three nets (left) and of noisy BN against the noise magnitude (right).

    Args:
        fig: the Figure.
        curves: kind -> :class:`digits.Curves`.
        sweep: noise magnitude -> :class:`digits.Curves` of a noisy-BN run.
    """
    left, right = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.16, wspace=0.3)
    for kind, c in curves.items():
        left.plot(c.steps, c.test_accuracy, color=_COLOURS[kind], label=_NAMES[kind],
                  ls="--" if kind == "noisy_bn" else "-")  # dashed: it lies on the BN curve
    left.set_xlabel("step")
    left.set_ylabel("test accuracy")
    left.set_ylim(0, 1)
    left.legend(fontsize=8, loc="lower right")
    magnitudes = sorted(sweep)
    right.plot(range(len(magnitudes)), [sweep[n].final_accuracy for n in magnitudes], "o-",
               color=_COLOURS["noisy_bn"])
    right.set_xticks(range(len(magnitudes)), [f"{n:g}" for n in magnitudes])
    right.set_xlabel("noise magnitude n")
    right.set_ylabel("final test accuracy")
    right.set_ylim(0, 1)
    fig.suptitle("noisy BN: a moving distribution after every BN layer", fontsize=10)


def draw_ics(fig: Figure, runs: Mapping[str, Any]) -> None:
    """ICS (‖G − G'‖ and cos(G, G')) per measured step, averaged over layers 2..L."""
    left, right = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.16, wspace=0.3)
    for kind, run in runs.items():
        left.semilogy(run.measured_steps, run.ics[:, 1:].mean(1), "o-", ms=3,
                      color=_COLOURS[kind], label=_NAMES[kind])
        right.plot(run.measured_steps, run.ics_cosine[:, 1:].mean(1), "o-", ms=3,
                   color=_COLOURS[kind])
    left.set_ylabel("‖G − G′‖ (mean over layers 2..5)")
    right.set_ylabel("cos(G, G′)")
    for ax in (left, right):
        ax.set_xlabel("step")
    left.legend(fontsize=8)
    fig.suptitle("internal covariate shift, measured through gradients", fontsize=10)


def draw_smoothness(fig: Figure, runs: Mapping[str, Any]) -> None:
    """Loss range, gradient change and effective β along the gradient, per measured step."""
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.84, bottom=0.16, wspace=0.35)
    measures = (("loss_range", "range of the loss"), ("predictiveness", "max ‖∇L′ − ∇L‖"),
                ("beta", "effective β"))
    for ax, (attr, label) in zip(axes, measures, strict=True):
        for kind, run in runs.items():
            values = [max(getattr(p, attr), 1e-6) for p in run.probes]
            ax.semilogy(run.measured_steps, values, "o-", ms=3, color=_COLOURS[kind],
                        label=_NAMES[kind])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.suptitle("the landscape along the gradient direction", fontsize=10)


def draw_scale(fig: Figure, runs: Mapping[str, Any], lr: float) -> None:
    """Weight norm, angular step and effective rate lr/‖W‖² of the first layer."""
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.84, bottom=0.16, wspace=0.35)
    for (label, run), colour in zip(runs.items(), ("#1f77b4", "#9467bd"), strict=False):
        steps = np.arange(1, len(run.weight_norm) + 1)
        axes[0].plot(steps, run.weight_norm, color=colour, label=label)
        width = 20  # a moving average over 20 steps: single steps are noisy
        smoothed = np.convolve(run.angle, np.ones(width) / width, mode="valid")
        axes[1].semilogy(steps[width - 1:], smoothed, color=colour)
        axes[2].semilogy(steps, lr / run.weight_norm**2, color=colour)
    axes[0].set_title("‖W‖ of the first layer", fontsize=9)
    axes[1].set_title("angle per step (rad, mean of 20)", fontsize=9)
    axes[2].set_title("effective rate η/‖W‖²", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"a scale-invariant weight under SGD, η = {lr:g}", fontsize=10)


def draw_decoupling(fig: Figure, results: Mapping[float, Mapping[str, np.ndarray]]) -> None:
    """Suboptimality of GD on w and of the length-direction scheme, per condition number."""
    axes: Sequence[Any] = fig.subplots(1, len(results), sharey=True, squeeze=False)[0]
    fig.subplots_adjust(left=0.08, right=0.98, top=0.84, bottom=0.16, wspace=0.1)
    for ax, (condition, res) in zip(axes, results.items(), strict=True):
        ax.semilogy(np.maximum(res["gd"], 1e-16), color=_COLOURS["standard"], label="GD on w")
        ax.semilogy(np.maximum(res["decoupled"], 1e-16), color=_COLOURS["bn"],
                    label="length + direction")
        ax.set_title(f"condition number {condition:g}", fontsize=9)
        ax.set_xlabel("step")
    axes[0].set_ylabel("f(w) − f(w*)")
    axes[0].legend(fontsize=8)
    fig.suptitle("least squares: one vector, or a length and a direction", fontsize=10)
