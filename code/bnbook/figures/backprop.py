"""The backpropagation chapter's figures: the staged backward pass, and a blind gradient check.

Two figures and the two planted bugs the second one shows:

* :func:`backward_graph_stepper` walks the forward computation graph of batch normalization
  backwards, one node per step, with the line of :func:`bnbook.reference.batch_norm_backward_staged`
  that each step runs.
* :func:`upstream_blend_explorer` blends the upstream gradient from all ones to random and shows
  the true dx beside the dx of a wrong backward pass, to show which bugs ``dy = 1`` cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from bnbook import reference
from bnbook.figures.core import InteractiveFigure, Slider, Toggle
from bnbook.reference import BatchNormCache

Array = np.ndarray

# -- the computation graph ----------------------------------------------------------------------

#: Where each node of the forward graph sits (data coordinates) and what it computes.
GRAPH_NODES: dict[str, tuple[float, float, str]] = {
    "x": (0.5, 0.9, "x"),
    "mean": (2.0, 2.4, "μ = mean(x)"),
    "xc": (3.6, 0.9, "xc = x − μ"),
    "var": (4.9, 2.4, "var = mean(xc²)"),
    "istd": (7.7, 2.4, "istd = 1/√(var + ε)"),
    "x_hat": (7.7, 0.9, "x̂ = xc · istd"),
    "y": (9.55, 0.9, "y = γ·x̂ + β"),
    "gamma": (9.55, 2.4, "γ"),
    "beta": (9.55, -0.6, "β"),
}

#: The forward edges (producer, consumer). x and xc each feed two consumers.
GRAPH_EDGES: tuple[tuple[str, str], ...] = (
    ("x", "mean"), ("x", "xc"), ("mean", "xc"), ("xc", "var"), ("var", "istd"),
    ("xc", "x_hat"), ("istd", "x_hat"), ("x_hat", "y"), ("gamma", "y"), ("beta", "y"),
)


@dataclass(frozen=True)
class BackwardStep:
    """One step of the staged backward pass.

    Attributes:
        title: what the step does, in words.
        edges: the forward edges it sends gradient back along, with each one's local derivative.
        code: the lines of ``batch_norm_backward_staged`` it runs.
        partial: nodes whose gradient is still missing a path after this step.
    """

    title: str
    edges: tuple[tuple[str, str, str], ...]
    code: tuple[str, ...]
    partial: tuple[str, ...] = ()


#: The backward pass, in the order the staged code runs it.
BACKWARD_STEPS: tuple[BackwardStep, ...] = (
    BackwardStep(
        "from y to γ, β and x̂",
        (("gamma", "y", "x̂"), ("beta", "y", "1"), ("x_hat", "y", "γ")),
        ("dbias = dy.sum(axis=axes)",
         "dweight = (dy * x_hat).sum(axis=axes)",
         "dx_hat = dy * cache.weight"),
    ),
    BackwardStep(
        "from x̂ to xc (first path) and istd",
        (("xc", "x_hat", "istd"), ("istd", "x_hat", "xc")),
        ("dxc = dx_hat * istd", "distd = (dx_hat * xc).sum(axis=axes, keepdims=True)"),
        partial=("xc",),
    ),
    BackwardStep(
        "from istd to var",
        (("var", "istd", "−istd³/2"),),
        ("dvar = distd * -0.5 * (var + eps) ** -1.5",),
        partial=("xc",),
    ),
    BackwardStep(
        "from var to xc (second path): xc is complete",
        (("xc", "var", "2·xc/m"),),
        ("dxc += dvar * 2.0 * xc / m",),
    ),
    BackwardStep(
        "from xc to x (first path) and μ",
        (("x", "xc", "1"), ("mean", "xc", "−1")),
        ("dx = dxc.copy()", "dmean = -dxc.sum(axis=axes, keepdims=True)"),
        partial=("x",),
    ),
    BackwardStep(
        "from μ to x (second path): x is complete",
        (("x", "mean", "1/m"),),
        ("dx += dmean / m",),
    ),
)

_FORWARD_CODE = (
    "mean = x.mean(axis=axes)        xc = x - mean        var = (xc ** 2).mean(axis=axes)",
    "istd = 1 / sqrt(var + eps)      x_hat = xc * istd    y = weight * x_hat + bias",
)

_DONE, _PARTIAL, _TODO = "#f4b6b6", "#fbe3c4", "#ffffff"
_RED = "#c0392b"


def _completed(step: int) -> set[str]:
    """Nodes whose gradient is fully known after ``step`` backward steps."""
    done: set[str] = set()
    if step >= 1:
        done.add("y")
    for s in BACKWARD_STEPS[:step]:
        for producer, _, _ in s.edges:
            done.add(producer)
    if step >= 1:
        done -= set(BACKWARD_STEPS[step - 1].partial)
    return done


def _clip(start: str, toward: str) -> tuple[float, float]:
    """Where the segment from node ``start`` to node ``toward`` leaves ``start``'s box."""
    x0, y0, label = GRAPH_NODES[start]
    x1, y1, _ = GRAPH_NODES[toward]
    half_w = 0.048 * len(label) + 0.16  # box half-sizes in data units (9 pt text at this scale)
    half_h = 0.27
    dx, dy = x1 - x0, y1 - y0
    t = min(half_w / abs(dx) if dx else np.inf, half_h / abs(dy) if dy else np.inf)
    return x0 + t * dx, y0 + t * dy


def draw_backward_graph(fig: Figure, step: int) -> None:
    """The forward graph of batch normalization, with the first ``step`` backward steps done.

    Args:
        fig: the Figure to draw on.
        step: 0 shows the forward pass; 1 to 6 show the backward pass after that many steps
            (the steps of :data:`BACKWARD_STEPS`).
    """
    step = int(step)
    if not 0 <= step <= len(BACKWARD_STEPS):
        raise ValueError(f"step must be in [0, {len(BACKWARD_STEPS)}], got {step}")
    ax = fig.add_axes((0.0, 0.27, 1.0, 0.63))
    ax.set_xlim(0.0, 10.25)
    ax.set_ylim(-0.95, 2.75)
    ax.axis("off")
    current = BACKWARD_STEPS[step - 1] if step else None
    active = {(p, c): d for p, c, d in current.edges} if current else {}
    done = _completed(step)
    partial = set(current.partial) if current else set()

    for producer, consumer in GRAPH_EDGES:
        hot = (producer, consumer) in active
        a, b = _clip(producer, consumer), _clip(consumer, producer)
        ax.add_patch(FancyArrowPatch(
            a if not hot else b, b if not hot else a, arrowstyle="-|>", mutation_scale=12,
            shrinkA=0, shrinkB=0, color=_RED if hot else "#888888", lw=2.2 if hot else 1.0,
        ))
        if hot:
            (x0, y0, _), (x1, y1, _) = GRAPH_NODES[producer], GRAPH_NODES[consumer]
            vertical = abs(x1 - x0) < 1e-9
            ax.text((x0 + x1) / 2 + (0.1 if vertical else 0.0),
                    (y0 + y1) / 2 + (0.0 if vertical else 0.12), active[(producer, consumer)],
                    color=_RED, fontsize=8.5, ha="left" if vertical else "center",
                    va="center" if vertical else "bottom", zorder=3,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"})

    for name, (x, y, label) in GRAPH_NODES.items():
        fill = _PARTIAL if name in partial else _DONE if name in done else _TODO
        ax.text(x, y, label, ha="center", va="center", fontsize=9, zorder=2,
                bbox={"boxstyle": "round,pad=0.35", "fc": fill,
                      "ec": _RED if name in done or name in partial else "#444444"})

    if current is None:
        title = "forward pass: x feeds μ and xc; xc feeds var and x̂"
        lines = _FORWARD_CODE
    else:
        title = f"backward step {step} of {len(BACKWARD_STEPS)}: {current.title}"
        lines = current.code
    fig.text(0.02, 0.95, title, fontsize=10, fontweight="bold", va="top")
    fig.text(0.02, 0.22, "\n".join(lines), family="monospace", fontsize=9, va="top")
    if step:
        fig.text(0.98, 0.03, "red: gradient complete   orange: one path still missing",
                 fontsize=8, ha="right", color="#555555")


def backward_graph_stepper() -> InteractiveFigure:
    """Step through the staged backward pass on the computation graph, one node at a time."""
    steps = tuple(float(i) for i in range(len(BACKWARD_STEPS) + 1))
    return InteractiveFigure(
        draw_backward_graph,
        controls=[Slider("step", "backward step", steps, default=0.0, fmt="{:.0f}")],
        figsize=(8.5, 3.8),
        alt="The computation graph of batch normalization: x, mean, centred x, variance, "
        "inverse standard deviation, normalised x and output. Each step of the slider sends "
        "the gradient back along one more set of edges and shows the code line it runs.",
    )


# -- the blind gradient check -------------------------------------------------------------------


def backward_without_variance_path(dy: Array, cache: BatchNormCache) -> Array:
    """A planted bug: dx with the variance treated as a constant (its path left out).

    This is the staged backward with the two lines of the variance path deleted, the bug of
    someone who differentiates ``(x - mean) / std`` through the mean but not through ``std``.

    Args:
        dy: upstream gradient, shaped like the forward output.
        cache: what :func:`bnbook.reference.batch_norm_forward` returned.

    Returns:
        The wrong dL/dx, shaped like ``dy``.
    """
    dxc = dy * cache.weight * cache.inv_std  # the direct path through x_hat only
    dmean = -dxc.sum(axis=cache.axes, keepdims=True)  # (1, C, 1, ...)
    return dxc + dmean / cache.m


def backward_without_mean_path(dy: Array, cache: BatchNormCache) -> Array:
    """A planted bug: dx with the path through the mean left out (its last line deleted).

    Args:
        dy: upstream gradient, shaped like the forward output.
        cache: what :func:`bnbook.reference.batch_norm_forward` returned.

    Returns:
        The wrong dL/dx, shaped like ``dy``.
    """
    dx_hat = dy * cache.weight
    dxc = dx_hat * cache.inv_std
    distd = (dx_hat * cache.x_centered).sum(axis=cache.axes, keepdims=True)  # (1, C, 1, ...)
    dvar = distd * -0.5 * (cache.var + cache.eps) ** -1.5
    dxc = dxc + dvar * 2.0 * cache.x_centered / cache.m
    return dxc  # missing: dx += dmean / m, with dmean = -dxc.sum(axis=axes)


#: The bugs the blend figure can plant, by the name its toggle shows.
PLANTED_BUGS = {
    "variance path dropped": backward_without_variance_path,
    "mean path dropped": backward_without_mean_path,
}


def blend_problem(m: int = 16, seed: int = 22) -> tuple[BatchNormCache, Array]:
    """The one-feature batch of the blend figure and its random upstream gradient.

    Returns:
        ``(cache, r)``: the forward cache of a batch of ``m`` values (γ = 1.5, β = 0.5) and a
        standard normal upstream gradient ``r`` of shape (m, 1).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=2.0, scale=1.5, size=(m, 1))  # (m, C) = (m, 1)
    _, cache = reference.batch_norm_forward(x, np.array([1.5]), np.array([0.5]))
    return cache, rng.standard_normal((m, 1))


def blend_gradients(t: float, bug: str, m: int = 16, seed: int = 22) -> tuple[Array, ...]:
    """The upstream gradient ``dy = (1 - t) * 1 + t * r`` and what two backward passes make of it.

    Args:
        t: 0 for dy = 1 (what ``y.sum().backward()`` sends), 1 for a random dy.
        bug: a key of :data:`PLANTED_BUGS`.
        m: batch size.
        seed: seeds the batch and ``r``.

    Returns:
        ``(x_hat, dy, dx_true, dx_bug)``, each of shape (m,).
    """
    if bug not in PLANTED_BUGS:
        raise ValueError(f"bug must be one of {list(PLANTED_BUGS)}, got {bug!r}")
    cache, r = blend_problem(m, seed)
    dy = (1.0 - t) * np.ones_like(r) + t * r  # (m, 1)
    dx_true, _, _ = reference.batch_norm_backward(dy, cache)
    dx_bug = PLANTED_BUGS[bug](dy, cache)
    return cache.x_hat.ravel(), dy.ravel(), dx_true.ravel(), dx_bug.ravel()


def _limits(bug: str) -> tuple[float, float]:
    """Fixed y-limits for one bug across the whole slider, so growth is visible."""
    _, _, dx, wrong = blend_gradients(1.0, bug)
    _, _, dx0, wrong0 = blend_gradients(0.0, bug)
    top = 1.1 * max(np.abs(np.concatenate([dx, wrong, dx0, wrong0])).max(), 1e-3)
    diff = 1.1 * max(np.abs(wrong - dx).max(), np.abs(wrong0 - dx0).max(), 1e-3)
    return top, diff


def draw_upstream_blend(fig: Figure, t: float, bug: str) -> None:
    """dx from the right backward pass and from a planted bug, for a blend of dy = 1 and random.

    Args:
        fig: the Figure to draw on.
        t: the blend, 0 (dy = 1) to 1 (random dy).
        bug: a key of :data:`PLANTED_BUGS`.
    """
    x_hat, _, dx, wrong = blend_gradients(t, bug)
    top, diff_top = _limits(bug)
    ax_dx, ax_diff = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.78, bottom=0.17, wspace=0.22)
    ax_dx.plot(x_hat, dx, "o", color="#1f77b4", ms=5)
    ax_dx.plot(x_hat, wrong, "x", color=_RED, ms=6, mew=1.5)
    ax_dx.set_ylim(-top, top)
    ax_dx.set_title("dx per example: true (blue dots), buggy (red crosses)", fontsize=9)
    err = wrong - dx
    ax_diff.vlines(x_hat, 0.0, err, color=_RED, lw=3)
    ax_diff.set_ylim(-diff_top, diff_top)
    ax_diff.set_title("buggy − true", fontsize=9)
    for ax in (ax_dx, ax_diff):
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_xlabel("x̂ of each example", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_xlim(-2.6, 2.6)
    verdict = "PASSES" if np.abs(err).max() < 1e-6 else "fails"
    fig.suptitle(
        f"dy = {1 - t:.2f}·ones + {t:.2f}·random;  bug: {bug};  max |buggy − true| = "
        f"{np.abs(err).max():.1e}, so a check at tolerance 1e-6 {verdict}",
        fontsize=9,
    )


def upstream_blend_explorer() -> InteractiveFigure:
    """Slide dy from all ones to random and watch a planted backward bug appear (or not)."""
    return InteractiveFigure(
        draw_upstream_blend,
        controls=[
            Slider("t", "dy: ones → random", (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0),
                   default=0.0),
            Toggle("bug", "planted bug", tuple((name, name) for name in PLANTED_BUGS),
                   default="variance path dropped"),
        ],
        figsize=(9.0, 3.0),
        alt="Three panels against each example's normalised value: the upstream gradient, the "
        "true and the buggy input gradient, and their difference. With dy all ones the "
        "variance-path bug agrees with the truth; any random part in dy exposes it.",
    )
