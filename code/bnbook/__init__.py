"""bnbook: Batch Normalization from scratch, proven equal to PyTorch.

The public names below are imported on first use (PEP 562), so ``import bnbook`` stays cheap:
it imports neither torch nor triton, matplotlib or scikit-learn. ``bnbook.BatchNorm2d`` imports
``bnbook.modules`` (and torch) the first time it is touched; ``bnbook.kernels`` likewise.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The one place the version is written: pyproject.toml reads it ([tool.setuptools.dynamic]).
__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "BatchNorm1d": "bnbook.modules",
    "BatchNorm2d": "bnbook.modules",
    "BatchNorm3d": "bnbook.modules",
    "batch_norm": "bnbook.functional",
    "BatchNormArgumentError": "bnbook.validation",
    "check_batch_norm_args": "bnbook.validation",
    "eval_mode": "bnbook.inference",
    "recalibrate": "bnbook.inference",
    "fold_bn": "bnbook.inference",
    "fold_model": "bnbook.inference",
    "LayerNorm": "bnbook.norms",
    "GroupNorm": "bnbook.norms",
    "RMSNorm": "bnbook.norms",
    "InstanceNorm1d": "bnbook.norms",
    "InstanceNorm2d": "bnbook.norms",
    "InstanceNorm3d": "bnbook.norms",
    "BatchRenorm1d": "bnbook.norms",
    "BatchRenorm2d": "bnbook.norms",
    "BatchRenorm3d": "bnbook.norms",
    "SyncBatchNorm": "bnbook.distributed",
}
_SUBMODULES = (
    "distributed", "doctor", "functional", "inference", "kernels", "modules", "normalization",
    "norms", "reference", "validation",
)

# Written out (not built from the tables) so that linters and type checkers can read it; a test
# checks that it lists exactly the tables' names.
__all__ = [
    "__version__",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "batch_norm",
    "BatchNormArgumentError", "check_batch_norm_args",
    "eval_mode", "recalibrate", "fold_bn", "fold_model",
    "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "SyncBatchNorm",
    "distributed", "doctor", "functional", "inference", "kernels", "modules", "normalization",
    "norms", "reference", "validation",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from . import (
        distributed,
        doctor,
        functional,
        inference,
        kernels,
        modules,
        normalization,
        norms,
        reference,
        validation,
    )
    from .distributed import SyncBatchNorm
    from .functional import batch_norm
    from .inference import eval_mode, fold_bn, fold_model, recalibrate
    from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
    from .norms import (
        BatchRenorm1d,
        BatchRenorm2d,
        BatchRenorm3d,
        GroupNorm,
        InstanceNorm1d,
        InstanceNorm2d,
        InstanceNorm3d,
        LayerNorm,
        RMSNorm,
    )
    from .validation import BatchNormArgumentError, check_batch_norm_args


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access, then cache the name here."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
