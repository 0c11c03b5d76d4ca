"""The production chapter's figure: test-time adaptation, one corruption at a time.

For a corruption of the test digits, the left panel shows one test image clean and corrupted;
the right panel shows the test accuracy of the BN MLP when its statistics are re-estimated from
n unlabelled corrupted images (pure, and mixed with the training statistics at prior N = 16),
against the accuracy with the training statistics and with the statistics of the whole corrupted
test set. The numbers come from :func:`bnbook.experiments.production.tta_curves`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from bnbook.figures.core import InteractiveFigure, Toggle

Curves = Mapping[str, Mapping[str, object]]


def draw_tta(fig: Figure, kind: str, curves: Curves) -> None:
    """Draw one corruption's state.

    Args:
        fig: the Figure to draw on.
        kind: the corruption, a key of ``curves``.
        curves: what :func:`bnbook.experiments.production.tta_curves` returns.
    """
    c = curves[kind]
    grid = fig.add_gridspec(2, 3, width_ratios=[0.55, 0.55, 2.4])
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.16, wspace=0.35, hspace=0.35)
    images = [np.asarray(c["clean_image"]), np.asarray(c["image"])]
    low, high = min(i.min() for i in images), max(i.max() for i in images)  # one grey scale
    for row, (image, title) in enumerate(zip(images, ("clean", kind), strict=True)):
        ax = fig.add_subplot(grid[row, 0:2])
        ax.imshow(image, cmap="gray_r", vmin=low, vmax=high)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[:, 2])
    n = np.asarray(c["n"], dtype=float)
    ax.plot(n, np.asarray(c["pure"]) * 100, "o-", color="#1f77b4", label="re-estimated from n")
    ax.plot(n, np.asarray(c["mixed"]) * 100, "s--", color="#ff7f0e",
            label="mixed with training statistics, N = 16")
    ax.axhline(float(c["train"]) * 100, color="k", lw=1.2, ls=":",
               label="training statistics")
    ax.axhline(float(c["test"]) * 100, color="#2ca02c", lw=1.2,
               label="all 397 test images")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n)
    ax.set_xticklabels([f"{int(v)}" for v in n])
    ax.set_ylim(0, 100)
    ax.set_xlabel("unlabelled corrupted images used for the statistics (n)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{kind}: {float(c['train']):.0%} with training statistics, "
                 f"{float(c['test']):.0%} with the test set's", fontsize=10)


def tta_explorer(curves: Curves | None = None) -> InteractiveFigure:
    """Test-time adaptation per corruption: a toggle for the corruption.

    Args:
        curves: from :func:`bnbook.experiments.production.tta_curves`; None computes the
            chapter's (trains the BN MLP for 300 steps, a few seconds).
    """
    if curves is None:
        from bnbook.experiments.production import tta_curves

        curves = tta_curves()
    kinds = tuple(curves)

    def draw(fig: Figure, kind: str) -> None:
        draw_tta(fig, kind, curves)

    draw.__name__ = "draw_tta"
    return InteractiveFigure(
        draw,
        controls=[Toggle("kind", "corruption", tuple((k, k) for k in kinds), default=kinds[0])],
        figsize=(8.0, 3.3),
        alt="Left: a test digit clean and corrupted. Right: test accuracy against the number of "
        "unlabelled corrupted images whose batch-norm statistics replace the training ones, "
        "pure and mixed with the training statistics, with the accuracy under the training "
        "statistics and under the whole corrupted test set's statistics as horizontal lines.",
    )
