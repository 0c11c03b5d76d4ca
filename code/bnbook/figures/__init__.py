"""Every figure of the book: a pure drawing function, a live form and a static-HTML form.

:mod:`bnbook.figures.core` holds the machinery (:class:`InteractiveFigure` and its controls);
each chapter's figures live in a module of their own named after the chapter. The names a
chapter uses are re-exported here, so ``from bnbook import figures`` is all a notebook needs.
"""

from bnbook.figures.core import Control, DrawFn, InteractiveFigure, Preset, Slider, Toggle
from bnbook.figures.transform import (
    TRANSFORM_MEAN,
    TRANSFORM_STD,
    draw_transform,
    transform_batch,
    transform_explorer,
)

__all__ = [
    "TRANSFORM_MEAN",
    "TRANSFORM_STD",
    "Control",
    "DrawFn",
    "InteractiveFigure",
    "Preset",
    "Slider",
    "Toggle",
    "draw_transform",
    "transform_batch",
    "transform_explorer",
]
