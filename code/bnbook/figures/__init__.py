"""Every figure of the book: a pure drawing function, a live form and a static-HTML form.

:mod:`bnbook.figures.core` holds the machinery (:class:`InteractiveFigure` and its controls);
each chapter's figures live in a module of their own named after the chapter. Every figure's
factory is re-exported here, so ``figures.saturation_explorer()`` works after
``from bnbook import figures``; the drawing functions and data helpers stay in their modules.
"""

from bnbook.figures.alternatives import axes_explorer, small_batch_figure
from bnbook.figures.backprop import backward_graph_stepper, upstream_blend_explorer
from bnbook.figures.bn_training import (
    activations_explorer,
    batch_noise_explorer,
    init_explorer,
    lr_explorer,
    regularisation_explorer,
    steps_to_target_explorer,
)
from bnbook.figures.core import Control, DrawFn, InteractiveFigure, Preset, Slider, Toggle
from bnbook.figures.gpu_kernels import tiling_explorer
from bnbook.figures.production import tta_explorer
from bnbook.figures.train_inference import train_vs_eval_explorer
from bnbook.figures.transform import (
    TRANSFORM_MEAN,
    TRANSFORM_STD,
    draw_transform,
    transform_batch,
    transform_explorer,
)
from bnbook.figures.why_bn_works import gradient_explosion_explorer, stability_explorer
from bnbook.figures.why_normalize import runaway_bias_explorer, saturation_explorer

__all__ = [
    "TRANSFORM_MEAN",
    "TRANSFORM_STD",
    "Control",
    "DrawFn",
    "InteractiveFigure",
    "Preset",
    "Slider",
    "Toggle",
    "activations_explorer",
    "axes_explorer",
    "backward_graph_stepper",
    "batch_noise_explorer",
    "draw_transform",
    "gradient_explosion_explorer",
    "init_explorer",
    "lr_explorer",
    "regularisation_explorer",
    "runaway_bias_explorer",
    "saturation_explorer",
    "small_batch_figure",
    "stability_explorer",
    "steps_to_target_explorer",
    "tiling_explorer",
    "train_vs_eval_explorer",
    "transform_batch",
    "transform_explorer",
    "tta_explorer",
    "upstream_blend_explorer",
]
