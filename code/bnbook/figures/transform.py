"""The transform chapter's figure: normalise, then scale and shift."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from bnbook import reference
from bnbook.figures.core import InteractiveFigure, Preset, Slider

#: The raw batch of the transform explorer: its (biased) mean and standard deviation are set
#: exactly, so "set to identity" lands on a grid point (γ = σ, β = μ).
TRANSFORM_MEAN = 3.0
TRANSFORM_STD = 2.0


def transform_batch(m: int = 256, seed: int = 0) -> np.ndarray:
    """A skewed batch of one feature with mean exactly 3 and standard deviation exactly 2."""
    rng = np.random.default_rng(seed)
    raw = rng.gamma(shape=2.0, scale=1.0, size=m)  # skewed on purpose: BN keeps the shape
    z = (raw - raw.mean()) / raw.std()  # (m,), biased std as in BN
    return TRANSFORM_MEAN + TRANSFORM_STD * z


def draw_transform(fig: Figure, gamma: float, beta: float, *, x: np.ndarray | None = None,
                   eps: float = 1e-5) -> None:
    """Normalise, then scale and shift: the raw batch, x̂, and y = γ·x̂ + β on one axis.

    Args:
        fig: the Figure to draw on.
        gamma: the scale γ (PyTorch's ``weight``).
        beta: the shift β (PyTorch's ``bias``).
        x: the batch of one feature; defaults to :func:`transform_batch`.
        eps: ε inside the square root.
    """
    x = transform_batch() if x is None else np.asarray(x, dtype=np.float64)
    # The package's forward pass on m examples of one feature: biased variance, as the layer.
    out, cache = reference.batch_norm_forward(x[:, None], [gamma], [beta], eps)  # (m, 1)
    x_hat, y = cache.x_hat[:, 0], out[:, 0]
    identity = np.allclose(y, x, atol=1e-4)

    axes = fig.subplots(3, 1, sharex=True)
    fig.subplots_adjust(left=0.25, right=0.98, top=0.9, bottom=0.13, hspace=0.15)
    bins = np.linspace(-7.0, 13.0, 81)
    rows = [
        (x, "raw batch x", "#7f7f7f"),
        (x_hat, "normalised x̂", "#1f77b4"),
        (y, "output y = γ·x̂ + β", "#d62728"),
    ]
    for ax, (values, title, colour) in zip(axes, rows, strict=True):
        counts, _ = np.histogram(values, bins=bins)  # one filled outline: far cheaper than bars
        ax.stairs(counts, bins, fill=True, color=colour, alpha=0.85)
        ax.axvline(values.mean(), color="k", lw=1)
        ax.set_yticks([])
        ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=9)
        ax.text(0.99, 0.85, f"mean {values.mean():+.2f}   std {values.std():.2f}",
                transform=ax.transAxes, ha="right", fontsize=9)
    if identity:
        axes[2].stairs(np.histogram(x, bins=bins)[0], bins, color="k", lw=1.2)
        axes[2].text(0.01, 0.85, "identity: y = x", transform=axes[2].transAxes, fontsize=9,
                     fontweight="bold")
    axes[2].set_xlim(bins[0], bins[-1])
    axes[2].set_xlabel("value")
    fig.suptitle(f"γ = {gamma:.2f}, β = {beta:.2f}", fontsize=10)


def transform_explorer() -> InteractiveFigure:
    """The normalise-then-scale-and-shift explorer: sliders for γ and β, an identity button."""
    return InteractiveFigure(
        draw_transform,
        controls=[
            Slider.range("gamma", "γ (weight)", 0.0, 3.0, 0.5, default=1.0),
            Slider.range("beta", "β (bias)", -2.0, 4.0, 1.0, default=0.0),
        ],
        presets=[
            Preset("set to identity (γ = σ, β = μ)",
                   {"gamma": TRANSFORM_STD, "beta": TRANSFORM_MEAN}),
            Preset("reset (γ = 1, β = 0)", {"gamma": 1.0, "beta": 0.0}),
        ],
        figsize=(7.5, 4.2),
        alt="Three histograms sharing one axis: the raw batch, its normalisation, and the "
        "output after scale γ and shift β.",
    )
