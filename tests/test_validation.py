"""bnbook.validation.check_batch_norm_args against what torch.nn.functional.batch_norm does.

Each bad call is run through torch first: the test records which class torch raised and asserts
that ours raises an instance of that same class (so code written for torch catches it), with a
message naming the argument. Calls torch accepts must pass our check, except the few listed as
deliberately stricter, which torch is shown to accept.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnbook.validation import FLOAT_DTYPES, BatchNormArgumentError, check_batch_norm_args

C = 3


def _x(*shape, dtype=torch.float32):
    return torch.randn(shape or (4, C, 5), generator=torch.Generator().manual_seed(0)).to(dtype)


def _call(input=None, running_mean="default", running_var="default", weight=None, bias=None,
          training=False, momentum=0.1, eps=1e-5):
    """F.batch_norm's arguments with fresh tensors: ``"default"`` is zeros/ones of size C."""
    input = _x() if input is None else input
    c = input.shape[1] if isinstance(input, torch.Tensor) and input.dim() >= 2 else C
    if isinstance(running_mean, str):
        running_mean = torch.zeros(c)
    if isinstance(running_var, str):
        running_var = torch.ones(c)
    return dict(input=input, running_mean=running_mean, running_var=running_var, weight=weight,
                bias=bias, training=training, momentum=momentum, eps=eps)


# name -> (arguments, a word our message must contain). torch raises on every one of these.
BAD = {
    "running_mean wrong size": (_call(running_mean=torch.zeros(4)), "running_mean"),
    "running_mean wrong size, training": (
        _call(running_mean=torch.zeros(4), training=True), "running_mean"),
    "running_var wrong size": (_call(running_var=torch.ones(4)), "running_var"),
    "weight wrong size": (_call(weight=torch.ones(4)), "weight"),
    "bias wrong size": (_call(bias=torch.ones(2)), "bias"),
    "weight wrong size, no stats": (
        _call(running_mean=None, running_var=None, weight=torch.ones(4), training=True),
        "weight"),
    "running_mean (C, 1)": (_call(running_mean=torch.zeros(C, 1)), "running_mean"),
    "weight int64": (_call(weight=torch.ones(C, dtype=torch.long)), "weight"),
    "running_mean int64": (_call(running_mean=torch.zeros(C, dtype=torch.long)), "running_mean"),
    "weight float64, input float32": (_call(weight=torch.ones(C, dtype=torch.float64)), "weight"),
    "running stats float64, input float32, training": (
        _call(running_mean=torch.zeros(C, dtype=torch.float64), training=True), "running_mean"),
    "input float64, stats float32": (_call(input=_x(dtype=torch.float64)), "running_mean"),
    "input float16, weight float16, stats float32": (
        _call(input=_x(dtype=torch.float16), weight=torch.ones(C, dtype=torch.float16),
              training=True), "weight"),
    "input float16, weight float32, stats float16": (
        _call(input=_x(dtype=torch.float16), running_mean=torch.zeros(C, dtype=torch.float16),
              running_var=torch.ones(C, dtype=torch.float16), weight=torch.ones(C),
              training=True), "weight"),
    "input float32, stats float16": (
        _call(running_mean=torch.zeros(C, dtype=torch.float16),
              running_var=torch.ones(C, dtype=torch.float16)), "running_mean"),
    "only running_mean, training": (_call(running_var=None, training=True), "running_var"),
    "only running_var, training": (_call(running_mean=None, training=True), "running_mean"),
    "only running_mean, eval": (_call(running_var=None), "running_var"),
    "no running stats, eval": (_call(running_mean=None, running_var=None), "running_mean"),
    "one value per channel (1, C)": (
        _call(input=_x(1, C), running_mean=None, running_var=None, training=True),
        "more than 1 value"),
    "one value per channel (1, C, 1, 1)": (
        _call(input=_x(1, C, 1, 1), training=True), "more than 1 value"),
    "one value per channel (1, 0): torch counts N * prod(spatial)": (
        _call(input=_x(1, 0), running_mean=None, running_var=None, training=True),
        "more than 1 value"),
    "eps 0 in training": (_call(training=True, eps=0.0), "eps"),
    "eps negative in training": (_call(training=True, eps=-1e-5), "eps"),
    "eps negative in eval": (_call(eps=-1.0), "eps"),
    "weight on another device": (_call(weight=torch.ones(C, device="meta")), "weight"),
    "running_mean on another device, training": (
        _call(running_mean=torch.zeros(C, device="meta"), training=True), "running_mean"),
    "bias on another device": (_call(bias=torch.zeros(C, device="meta")), "bias"),
    "integer input": (_call(input=torch.ones(4, C, dtype=torch.long)), "input"),
    "complex input, training": (
        _call(input=torch.ones(4, C, dtype=torch.cfloat), running_mean=None, running_var=None,
              training=True), "input"),
    "1-D input, eval": (_call(input=torch.randn(4), running_mean=torch.zeros(4),
                              running_var=torch.ones(4)), "input"),
    "input not a Tensor": (_call(input=[[1.0, 2.0, 3.0]]), "input"),
    "weight a list": (_call(weight=[1.0] * C), "weight"),
    "running_mean a list": (_call(running_mean=[0.0] * C), "running_mean"),
    "training a string": (_call(training="yes"), "training"),
    "training None": (_call(training=None), "training"),
    "training an int": (_call(training=1), "training"),
    "momentum None": (_call(training=True, momentum=None), "momentum"),
    "eps a string": (_call(eps="small"), "eps"),
}


def _torch_error(kwargs) -> BaseException:
    with pytest.raises(Exception) as info:  # noqa: PT011 - which class is what we record
        F.batch_norm(**kwargs)
    return info.value


def _our_error(kwargs) -> BaseException:
    with pytest.raises(Exception) as info:  # noqa: PT011
        check_batch_norm_args(**kwargs)
    return info.value


@pytest.mark.parametrize("name", list(BAD))
def test_bad_call_raises_what_torch_raises(name) -> None:
    kwargs, word = BAD[name]
    theirs, ours = _torch_error(kwargs), _our_error(kwargs)
    expected = type(theirs)
    if expected is NotImplementedError:
        # torch: '"batch_norm" not implemented for 'Long''. A RuntimeError subclass: ours is a
        # RuntimeError (and a ValueError), which is what an `except RuntimeError` catches.
        expected = RuntimeError
    assert isinstance(ours, expected), f"torch raised {theirs!r}, we raised {ours!r}"
    assert isinstance(ours, (BatchNormArgumentError, TypeError))
    assert word in str(ours), str(ours)


def test_messages_mirror_torchs() -> None:
    """Where torch has a message, ours starts with the same words."""
    for name in ("one value per channel (1, C)", "eps 0 in training", "eps negative in eval",
                 "only running_mean, training", "no running stats, eval", "weight wrong size",
                 "weight on another device"):
        kwargs, _ = BAD[name]
        theirs, ours = str(_torch_error(kwargs)), str(_our_error(kwargs))
        head = theirs.split(" not ")[0] if name == "weight wrong size" else theirs.split("!")[0]
        assert ours.startswith(head), (name, theirs, ours)


def test_error_class_is_both_value_error_and_runtime_error() -> None:
    assert issubclass(BatchNormArgumentError, ValueError)
    assert issubclass(BatchNormArgumentError, RuntimeError)
    kwargs, _ = BAD["weight wrong size"]
    with pytest.raises(RuntimeError, match="weight should contain 3 elements"):
        check_batch_norm_args(**kwargs)
    with pytest.raises(ValueError, match="weight should contain 3 elements"):
        check_batch_norm_args(**kwargs)


def test_rank_zero_and_one_in_training() -> None:
    """torch raises IndexError here (its size check indexes dim 1); we name the expected shape."""
    for x in (torch.tensor(1.0), torch.randn(4)):
        with pytest.raises(IndexError):
            F.batch_norm(x, None, None, training=True)
        with pytest.raises(BatchNormArgumentError, match=r"shape \(N, C\)"):
            check_batch_norm_args(x, None, None, training=True)


# Calls torch accepts; we accept them too.
GOOD = {
    "momentum 2 (extrapolating)": _call(training=True, momentum=2.0),
    "momentum -1": _call(training=True, momentum=-1.0),
    "momentum 0 and 1": _call(training=True, momentum=1),
    "momentum a bool": _call(training=True, momentum=True),
    "momentum numpy float": _call(training=True, momentum=np.float64(0.1)),
    "momentum a 0-dim tensor": _call(training=True, momentum=torch.tensor(0.1)),
    "momentum nan without running stats": _call(
        running_mean=None, running_var=None, training=True, momentum=math.nan),
    "eps a 0-dim tensor": _call(training=True, eps=torch.tensor(1e-3)),
    "eps an int": _call(training=True, eps=1),
    "eps 0 in eval": _call(eps=0.0),
    "no running stats, training": _call(running_mean=None, running_var=None, training=True),
    "float16 input, float32 stats": _call(input=_x(dtype=torch.float16), training=True),
    "float16 input, float32 everything": _call(
        input=_x(dtype=torch.float16), weight=torch.ones(C), bias=torch.zeros(C)),
    "bfloat16 everything": _call(
        input=_x(dtype=torch.bfloat16), running_mean=torch.zeros(C, dtype=torch.bfloat16),
        running_var=torch.ones(C, dtype=torch.bfloat16),
        weight=torch.ones(C, dtype=torch.bfloat16), training=True),
    "float64 everything": _call(
        input=_x(dtype=torch.float64), running_mean=torch.zeros(C, dtype=torch.float64),
        running_var=torch.ones(C, dtype=torch.float64)),
    "two values per channel (2, C)": _call(input=_x(2, C), training=True),
    "(1, C, 2): two values per channel": _call(input=_x(1, C, 2), training=True),
    "(1, C) in eval": _call(input=_x(1, C)),
    "empty (0, C), training": _call(input=_x(0, C), training=True),
    "empty (0, C, 4, 4), training": _call(input=_x(0, C, 4, 4), training=True),
    "empty (0, C, 2, 2, 2), eval": _call(input=_x(0, C, 2, 2, 2)),
    "empty (4, C, 0), training": _call(input=_x(4, C, 0), training=True),
    "no channels (4, 0), training": _call(input=_x(4, 0), training=True),
}


@pytest.mark.parametrize("name", list(GOOD))
def test_what_torch_accepts_we_accept(name) -> None:
    kwargs = GOOD[name]
    F.batch_norm(**{**kwargs, "running_mean": _clone(kwargs["running_mean"]),
                    "running_var": _clone(kwargs["running_var"])})
    assert check_batch_norm_args(**kwargs) == kwargs["input"].shape[1]


def _clone(t):
    return None if t is None else t.clone()


# Deliberately stricter than torch: torch accepts these, we refuse (see the module docstring).
STRICTER = {
    "weight (C, 1)": (_call(weight=torch.ones(C, 1)), "weight"),
    "weight (1, C)": (_call(weight=torch.ones(1, C)), "weight"),
    "eps nan": (_call(training=True, eps=math.nan), "eps"),
    "eps inf": (_call(training=True, eps=math.inf), "eps"),
    "momentum nan with running stats": (_call(training=True, momentum=math.nan), "momentum"),
    "momentum inf with running stats": (_call(training=True, momentum=math.inf), "momentum"),
}


@pytest.mark.parametrize("name", list(STRICTER))
def test_deliberately_stricter_than_torch(name) -> None:
    kwargs, word = STRICTER[name]
    F.batch_norm(**{**kwargs, "running_mean": _clone(kwargs["running_mean"]),
                    "running_var": _clone(kwargs["running_var"])})  # torch accepts
    with pytest.raises(BatchNormArgumentError, match=word):
        check_batch_norm_args(**kwargs)


def test_backend_dtypes() -> None:
    """A backend that implements fewer dtypes says which ones, through the same check."""
    kwargs = _call(input=_x(dtype=torch.float64), running_mean=torch.zeros(C, dtype=torch.float64),
                   running_var=torch.ones(C, dtype=torch.float64))
    assert check_batch_norm_args(**kwargs) == C
    with pytest.raises(BatchNormArgumentError, match="float16, bfloat16, float32; got"):
        check_batch_norm_args(**kwargs, dtypes=FLOAT_DTYPES[:3])


def test_nothing_is_touched() -> None:
    rm, rv = torch.zeros(C), torch.ones(C)
    check_batch_norm_args(_x(), rm, rv, training=True, momentum=0.5)
    assert torch.equal(rm, torch.zeros(C)) and torch.equal(rv, torch.ones(C))
