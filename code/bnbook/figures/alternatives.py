"""Figures of the chapter "Alternatives": which values each normaliser pools, and the sweep.

* :func:`axes_explorer`: an (N, C, H·W) activation drawn as N slabs of C rows by H·W columns;
  the values that share one mean and variance with the highlighted value are shaded, for BN,
  LN, IN or GN with a chosen group count.
* :func:`small_batch_figure`: test error against batch size for each normaliser, mean and
  spread over seeds, in eval mode and with batch statistics; the data come from the chapter's
  run, so this one is a plain figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from bnbook.figures.core import InteractiveFigure, Slider, Toggle

__all__ = [
    "AXES_SHAPE",
    "axes_explorer",
    "draw_axes",
    "draw_small_batch",
    "pooled_mask",
    "small_batch_figure",
]

#: (N, C, H·W) of the drawn block: small enough to see every value.
AXES_SHAPE = (4, 8, 6)
_SHADE = ListedColormap(["#eeeeee", "#2a6ebb"])


def pooled_mask(kind: str, groups: int, shape: tuple[int, int, int] = AXES_SHAPE) -> np.ndarray:
    """Boolean (N, C, L) mask of the values pooled with value (0, 0, 0) by ``kind``.

    Args:
        kind: "BN" (all samples, one channel), "LN" (one sample, all channels), "IN" (one sample,
            one channel) or "GN" (one sample, the first C/groups channels).
        groups: GN's group count; must divide C. Ignored by the other kinds.
    """
    n, c, length = shape
    mask = np.zeros(shape, dtype=bool)
    if kind == "BN":
        mask[:, 0, :] = True
    elif kind == "LN":
        mask[0, :, :] = True
    elif kind == "IN":
        mask[0, 0, :] = True
    elif kind == "GN":
        if c % groups:
            raise ValueError(f"groups must divide C={c}, got {groups}")
        mask[0, : c // groups, :] = True
    else:
        raise ValueError(f"kind must be BN, LN, IN or GN, got {kind!r}")
    return mask


def draw_axes(fig: Figure, kind: str = "BN", groups: float = 2) -> None:
    """Draw the N slabs of an (N, C, H·W) block with the pooled values shaded."""
    n, c, length = AXES_SHAPE
    groups = int(groups)
    mask = pooled_mask(kind, groups)
    ax = fig.add_axes((0.02, 0.12, 0.96, 0.72))
    gap = 1.5
    for i in range(n):
        x0 = i * (length + gap)
        # One image per slab (a patch per value would make every frame ten times slower).
        ax.imshow(mask[i], cmap=_SHADE, vmin=0, vmax=1, extent=(x0, x0 + length, 0, c),
                  interpolation="nearest", origin="upper")
        for edge in range(1, length):
            ax.plot([x0 + edge] * 2, [0, c], color="white", lw=0.8)
        for edge in range(1, c):
            ax.plot([x0, x0 + length], [edge] * 2, color="white", lw=0.8)
        if kind == "GN":  # group boundaries
            for gidx in range(1, groups):
                y = c - gidx * (c // groups)
                ax.plot([x0, x0 + length], [y, y], color="#c0392b", lw=1.5)
        ax.text(x0 + length / 2, c + 0.4, f"sample {i}", ha="center", va="bottom", fontsize=9)
    ax.text(-0.4, c / 2, "channels C", rotation=90, ha="right", va="center", fontsize=9)
    ax.text((n * (length + gap) - gap) / 2, -0.5, "positions H·W in each slab", ha="center",
            va="top", fontsize=9)
    ax.set_xlim(-1.2, n * (length + gap))
    ax.set_ylim(-1.6, c + 1.4)
    ax.set_aspect("equal")
    ax.axis("off")
    m = int(mask.sum())
    per_sample = kind != "BN"
    count = {"BN": c, "LN": n, "IN": n * c, "GN": n * groups}[kind]
    title = {"BN": "BatchNorm", "LN": "LayerNorm", "IN": "InstanceNorm",
             "GN": f"GroupNorm, {groups} groups"}[kind]
    fig.suptitle(
        f"{title}: each statistic pools m = {m} values; {count} statistics per batch"
        + ("; no sample sees another" if per_sample else "; every sample shares them"),
        fontsize=10,
    )


def axes_explorer() -> InteractiveFigure:
    """BN / LN / IN / GN and GN's group count on an (N, C, H·W) = (4, 8, 6) block."""
    return InteractiveFigure(
        draw_axes,
        [
            Toggle("kind", "normaliser", (("BN", "BN"), ("LN", "LN"), ("IN", "IN"),
                                          ("GN", "GN")), "BN"),
            Slider("groups", "GN groups", (1, 2, 4, 8), 2, fmt="{:.0f}"),
        ],
        figsize=(8.0, 2.9),
        alt="An activation of 4 samples, 8 channels and 6 positions; the values that share one "
            "mean and variance with the first value are shaded for the chosen normaliser.",
    )


_COLORS = {"BN": "#2a6ebb", "BRN": "#8e44ad", "GN": "#27ae60", "LN": "#e67e22",
           "IN": "#7f8c8d", "none": "#444444"}


def draw_small_batch(
    fig: Figure,
    mode: str = "eval",
    *,
    errors: Mapping[str, Mapping[int, Sequence[float]]],
    train_mode_errors: Mapping[str, Mapping[int, Sequence[float]]],
    rect: tuple[float, float, float, float] = (0.1, 0.16, 0.62, 0.74),
    legend: bool = True,
) -> None:
    """Test error (%) against batch size per normaliser: mean over seeds, bars from min to max.

    Args:
        mode: "eval" (running statistics) or "train" (batch statistics, batches of that size).
        errors, train_mode_errors: kind -> batch size -> one error per seed, in [0, 1].
    """
    data = errors if mode == "eval" else train_mode_errors
    ax = fig.add_axes(rect)
    for kind, by_size in data.items():
        sizes = sorted(by_size)
        values = [100 * np.asarray(by_size[b], dtype=float) for b in sizes]
        mean = np.array([v.mean() for v in values])
        low = mean - np.array([v.min() for v in values])
        high = np.array([v.max() for v in values]) - mean
        ax.errorbar(sizes, mean, yerr=(low, high), marker="o", capsize=3, label=kind,
                    color=_COLORS.get(kind))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(next(iter(data.values()))))
    ax.set_xticklabels([str(b) for b in sorted(next(iter(data.values())))])
    ax.set_xlabel("batch size")
    ax.set_ylabel("test error (%)")
    ax.set_title("eval mode (running statistics)" if mode == "eval"
                 else "training mode (batch statistics)", fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9)


def small_batch_figure(
    errors: Mapping[str, Mapping[int, Sequence[float]]],
    train_mode_errors: Mapping[str, Mapping[int, Sequence[float]]],
) -> Any:
    """The small-batch sweep: eval-mode error (left) and training-mode error (right).

    A plain picture (an ``IPython.display.Image``), not an interactive figure: it shows the
    chapter's own run, which a factory without arguments could not reproduce.
    """
    import io

    import matplotlib
    from IPython.display import Image

    with matplotlib.style.context("default"):
        fig = Figure(figsize=(10.0, 3.4), dpi=80)
        FigureCanvasAgg(fig)
        for k, mode in enumerate(("eval", "train")):
            draw_small_batch(fig, mode, errors=errors, train_mode_errors=train_mode_errors,
                             rect=(0.07 + 0.45 * k, 0.16, 0.33, 0.72), legend=k == 1)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    return Image(data=buffer.getvalue(), format="png")
