"""The training-vs-inference chapter's figure: one example, two modes, a batch that moves.

One feature of one fixed example (value :data:`FIXED_EXAMPLE`) goes through a batch-norm layer
together with ``batch_size - 1`` other examples whose mean the reader shifts. In training mode
the layer normalises with the batch's own mean and (biased) variance, so the fixed example's
output follows its neighbours; in eval mode it uses the stored running statistics
(:data:`RUNNING_MEAN`, :data:`RUNNING_VAR`, as if learnt on standard-normal data), so the
output stays put. ``gamma = 1`` and ``beta = 0`` throughout: the output is x̂ itself.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from bnbook import reference
from bnbook.figures.core import InteractiveFigure, Slider, Toggle

#: The value of the example whose output the figure follows.
FIXED_EXAMPLE = 1.0
#: The running statistics the eval-mode layer uses (a layer trained on N(0, 1) data).
RUNNING_MEAN = 0.0
RUNNING_VAR = 1.0
#: The slider's positions: the mean of the other examples.
SHIFTS = tuple(round(-3.0 + 0.5 * i, 10) for i in range(13))
#: The toggle's positions.
BATCH_SIZES = (2, 16)
EPS = 1e-5


def other_examples(batch_size: int, shift: float, seed: int = 0) -> np.ndarray:
    """The ``batch_size - 1`` examples that share the fixed example's batch.

    The same standard-normal draw for a given batch size and seed, moved by ``shift``, so the
    slider changes only where the neighbours sit, not who they are.

    Args:
        batch_size: m, the batch size including the fixed example; at least 2.
        shift: added to every other example.
        seed: seed of the draw.

    Returns:
        Shape (batch_size - 1,), float64.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2, got {batch_size}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal(batch_size - 1) + shift


def example_outputs(shift: float, batch_size: int, eps: float = EPS) -> tuple[float, float]:
    """The fixed example's output in training mode and in eval mode.

    Args:
        shift: mean shift of the other examples (see :func:`other_examples`).
        batch_size: m, the batch size including the fixed example.
        eps: ε inside the square root.

    Returns:
        ``(train_output, eval_output)`` for the fixed example, with gamma = 1 and beta = 0.
    """
    batch = np.concatenate([[FIXED_EXAMPLE], other_examples(batch_size, shift)])  # (m,)
    gamma, beta = np.ones(1), np.zeros(1)
    # Training mode: the batch's own mean and biased variance; the example is row 0.
    train, _ = reference.batch_norm_forward(batch[:, None], gamma, beta, eps)  # (m, 1)
    # Eval mode: the stored statistics, whatever the rest of the batch.
    evaluated = reference.batch_norm_inference(
        np.array([[FIXED_EXAMPLE]]), np.array([RUNNING_MEAN]), np.array([RUNNING_VAR]),
        gamma, beta, eps,
    )  # (1, 1)
    return float(train[0, 0]), float(evaluated[0, 0])


def draw_train_vs_eval(fig: Figure, shift: float, batch_size: int) -> None:
    """The batch on the left; the fixed example's output in both modes on the right.

    Args:
        fig: the Figure to draw on.
        shift: mean shift of the other examples.
        batch_size: m, the batch size including the fixed example.
    """
    others = other_examples(batch_size, shift)
    batch = np.concatenate([[FIXED_EXAMPLE], others])
    train_now, eval_now = example_outputs(shift, batch_size)
    grid = np.linspace(SHIFTS[0], SHIFTS[-1], 121)  # finer than the slider: m = 2 jumps
    curve = np.array([example_outputs(s, batch_size) for s in grid])  # (121, 2)

    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1.0]})
    fig.subplots_adjust(left=0.04, right=0.98, top=0.84, bottom=0.17, wspace=0.22)

    # Left: where the examples sit. Grey dots are the neighbours, the red diamond is the example.
    jitter = np.random.default_rng(1).uniform(-0.3, 0.3, size=others.size)
    left.plot(others, jitter, "o", ms=4, color="#7f7f7f", alpha=0.8)
    left.plot([FIXED_EXAMPLE], [0.0], "D", ms=9, color="#d62728", zorder=3)
    left.axvline(batch.mean(), color="#1f77b4", lw=2)
    left.axvline(RUNNING_MEAN, color="k", lw=1.5, ls="--")
    left.text(0.02, 0.95, "batch mean (train)", color="#1f77b4", transform=left.transAxes,
              va="top", fontsize=8)
    left.text(0.02, 0.84, "running mean (eval)", color="k", transform=left.transAxes,
              va="top", fontsize=8)
    left.text(0.98, 0.95, "the example", color="#d62728", transform=left.transAxes,
              va="top", ha="right", fontsize=8)
    left.set_xlim(-6.0, 6.0)
    left.set_ylim(-0.6, 0.9)
    left.set_xticks([-6, -3, 0, 3, 6])
    left.set_yticks([])
    left.set_xlabel("input value (one feature)")
    left.set_title(f"the batch: {batch_size} examples", fontsize=10)

    # Right: the example's output as a function of the neighbours' mean, in both modes.
    right.plot(grid, curve[:, 0], color="#1f77b4", lw=1.5)
    right.plot(grid, curve[:, 1], color="k", lw=1.5, ls="--")
    right.plot([shift], [train_now], "o", color="#1f77b4", ms=8)
    right.plot([shift], [eval_now], "o", color="k", ms=6)
    right.axvline(shift, color="#bbbbbb", lw=1, zorder=0)
    right.set_xlim(SHIFTS[0] - 0.2, SHIFTS[-1] + 0.2)
    right.set_ylim(-4.5, 4.5)
    right.set_xlabel("mean of the other examples")
    right.set_ylabel("output for the example")
    right.set_xticks([-3, -2, -1, 0, 1, 2, 3])
    right.set_yticks([-4, -2, 0, 2, 4])
    right.text(0.98, 0.95, "train mode", color="#1f77b4", transform=right.transAxes,
               va="top", ha="right", fontsize=8)
    right.text(0.98, 0.84, "eval mode", color="k", transform=right.transAxes,
               va="top", ha="right", fontsize=8)
    right.set_title(f"train {train_now:+.2f}   eval {eval_now:+.2f}", fontsize=10)
    fig.suptitle(f"the example is x = {FIXED_EXAMPLE:g}; the others are moved by {shift:+.1f}",
                 fontsize=10)


def train_vs_eval_explorer() -> InteractiveFigure:
    """The batch-dependence explorer: a slider for the neighbours' mean, a batch-size toggle."""
    return InteractiveFigure(
        draw_train_vs_eval,
        controls=[
            Slider("shift", "mean of the others", SHIFTS, default=0.0, fmt="{:+.1f}"),
            Toggle("batch_size", "batch size",
                   tuple((str(m), m) for m in BATCH_SIZES), default=16),
        ],
        figsize=(8.0, 3.3),
        alt="Left: one example (red) among other examples whose mean the slider moves, with the "
        "batch mean and the running mean marked. Right: the example's output against the other "
        "examples' mean: the train-mode curve moves, the eval-mode line is flat.",
    )
