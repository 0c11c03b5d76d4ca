"""One validation: every backend refuses the same bad call with the same error, before any work.

The same bad arguments go through bnbook.functional.batch_norm, the Triton backend (interpreted
on a CPU-only machine) and the CUDA backend's Python wrapper, which must refuse them before it
needs a GPU. Each must raise the same exception class with the same message, and leave the
running statistics untouched.
"""

from __future__ import annotations

import math

import pytest
import torch

from bnbook import functional
from bnbook.kernels import cuda
from bnbook.validation import BatchNormArgumentError

# Before any `import triton` (see tests/test_kernels.py).
triton_bn = pytest.importorskip("bnbook.kernels.triton_bn")

DEVICE = "cuda" if torch.cuda.is_available() and not triton_bn.INTERPRET else "cpu"
BACKENDS = {
    "functional": functional.batch_norm,
    "triton": triton_bn.batch_norm,
    "cuda": cuda.batch_norm_cuda,
}


def _t(*shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype, device=DEVICE)


def _x():
    return torch.randn(4, 3, 5, device=DEVICE)


# name -> (positional args without the running statistics, running_mean, running_var, kwargs)
CASES = {
    "input not a tensor": (lambda: ([[1.0, 2.0]], None, None, dict(training=True))),
    "1-D input": (lambda: (torch.randn(5, device=DEVICE), None, None, dict(training=True))),
    "weight of the wrong size": (lambda: (_x(), _t(3), _t(3), dict(weight=_t(4)))),
    "bias of the wrong shape": (lambda: (_x(), _t(3), _t(3), dict(bias=_t(3, 1)))),
    "running_mean of the wrong size": (lambda: (_x(), _t(2), _t(3), dict(training=True))),
    "eval without running statistics": (lambda: (_x(), None, None, dict(training=False))),
    "only running_var in training": (lambda: (_x(), None, _t(3), dict(training=True))),
    "one value per channel": (lambda: (torch.randn(1, 3, 1, device=DEVICE), _t(3), _t(3),
                                       dict(training=True))),
    "eps = 0 in training": (lambda: (_x(), _t(3), _t(3), dict(training=True, eps=0.0))),
    "negative eps in eval": (lambda: (_x(), _t(3), _t(3), dict(training=False, eps=-1e-5))),
    "nan eps": (lambda: (_x(), _t(3), _t(3), dict(eps=math.nan))),
    "nan momentum with running stats": (lambda: (_x(), _t(3), _t(3),
                                                 dict(training=True, momentum=math.nan))),
    "momentum None": (lambda: (_x(), _t(3), _t(3), dict(training=True, momentum=None))),
    "training an int": (lambda: (_x(), _t(3), _t(3), dict(training=1))),
    "mixed dtypes": (lambda: (_x(), _t(3), _t(3), dict(weight=_t(3, dtype=torch.float64)))),
    "weight not a tensor": (lambda: (_x(), _t(3), _t(3), dict(weight=[1.0, 1.0, 1.0]))),
}


def _outcome(fn, make):
    x, rm, rv, kw = make()
    before = [None if t is None else t.clone() for t in (rm, rv)]
    try:
        fn(x, rm, rv, **kw)
    except Exception as e:  # noqa: BLE001 - the class is what is compared
        for t, b in zip((rm, rv), before, strict=True):
            if t is not None:
                assert torch.equal(t, b), "a rejected call changed the running statistics"
        return type(e), str(e)
    return None, None


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_backend_raises_the_same_error(case):
    outcomes = {name: _outcome(fn, CASES[case]) for name, fn in BACKENDS.items()}
    cls, message = outcomes["functional"]
    assert cls is not None, f"{case}: functional accepted it"
    assert cls in (TypeError, BatchNormArgumentError), cls
    for name, (other_cls, other_message) in outcomes.items():
        assert (other_cls, other_message) == (cls, message), f"{case}: {name} differs"


def test_float64_is_the_kernels_only_extra_refusal():
    """The kernels implement float16/bfloat16/float32; the message lists exactly those."""
    x = torch.randn(4, 3, 5, dtype=torch.float64, device=DEVICE)
    c3 = torch.ones(3, dtype=torch.float64, device=DEVICE)
    functional.batch_norm(x, c3, c3)  # torch and functional accept float64
    for fn in (triton_bn.batch_norm, cuda.batch_norm_cuda):
        with pytest.raises(BatchNormArgumentError,
                           match="input must have dtype float16, bfloat16, float32; got"):
            fn(x, c3, c3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_backend_validates_before_needing_a_device():
    """A good call reaches the device requirement, and only then fails on a CPU-only machine."""
    with pytest.raises(BatchNormArgumentError, match="needs a CUDA device"):
        cuda.batch_norm_cuda(_x(), _t(3), _t(3), training=True)
