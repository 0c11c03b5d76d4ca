"""bnbook.modules.BatchNormXd against torch.nn.BatchNormXd: same numbers, state and errors."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import pytest
import torch
from torch import nn

from bnbook import modules as bm

# (our class, torch's class, input shape)
CASES = [
    (bm.BatchNorm1d, nn.BatchNorm1d, (6, 3)),
    (bm.BatchNorm1d, nn.BatchNorm1d, (4, 3, 5)),
    (bm.BatchNorm2d, nn.BatchNorm2d, (3, 3, 4, 5)),
    (bm.BatchNorm3d, nn.BatchNorm3d, (2, 3, 3, 2, 4)),
]
CASE_IDS = ["1d-NC", "1d-NCL", "2d", "3d"]
OPTIONS = list(
    itertools.product([True, False], [True, False], [0.1, 0.5, None])
)  # affine, track_running_stats, momentum
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


def _pair(ours_cls, theirs_cls, dtype, **kwargs):
    ours = ours_cls(3, dtype=dtype, **kwargs)
    theirs = theirs_cls(3, dtype=dtype, **kwargs)
    if ours.weight is not None:
        # Move the affine part off the identity so that it matters, identically in both.
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for a, b in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
                if a is not None:
                    a.copy_(torch.randn(3, generator=g, dtype=dtype))
                    b.copy_(a)
    return ours, theirs


def _step(ours, theirs, shape, dtype, seed):
    """Feed the same batch and upstream gradient to both layers; compare everything."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yt = ours(xo), theirs(xt)
    yo.backward(dy)
    yt.backward(dy)
    tol = TOL[dtype]
    torch.testing.assert_close(yo, yt, **tol)
    torch.testing.assert_close(xo.grad, xt.grad, **tol)
    _assert_same_state(ours, theirs, tol)
    return yo


def _assert_same_state(ours, theirs, tol):
    for name in ("weight", "bias"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, **tol)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, name
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize(("ours_cls", "theirs_cls", "shape"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("affine", "track", "momentum"), OPTIONS)
def test_conformance(ours_cls, theirs_cls, shape, dtype, affine, track, momentum) -> None:
    ours, theirs = _pair(
        ours_cls, theirs_cls, dtype, affine=affine, track_running_stats=track, momentum=momentum
    )
    for seed in range(3):
        for m in (ours, theirs):
            m.zero_grad()
        y = _step(ours, theirs, shape, dtype, seed)
    # The layer really runs bnbook's hand-written backward, not torch's.
    assert type(y.grad_fn).__name__.startswith("BatchNormFunction")
    if track:
        assert int(ours.num_batches_tracked) == 3
    ours.eval()
    theirs.eval()
    for m in (ours, theirs):
        m.zero_grad()
    # Eval: running statistics if tracked, else (as in torch) the batch's own statistics.
    _step(ours, theirs, shape, dtype, seed=10)


@pytest.mark.parametrize(("ours_cls", "theirs_cls", "shape"), CASES, ids=CASE_IDS)
def test_no_bias_keyword(ours_cls, theirs_cls, shape) -> None:
    ours, theirs = _pair(ours_cls, theirs_cls, torch.float64, bias=False)
    assert ours.bias is None and list(ours.state_dict()) == list(theirs.state_dict())
    _step(ours, theirs, shape, torch.float64, seed=0)
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize(("ours_cls", "theirs_cls", "shape"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize(("affine", "track"), [(True, True), (False, True), (True, False)])
def test_state_dict_round_trip(ours_cls, theirs_cls, shape, affine, track) -> None:
    ours, theirs = _pair(ours_cls, theirs_cls, torch.float32, affine=affine,
                         track_running_stats=track)
    _step(ours, theirs, shape, torch.float32, seed=1)
    sd = ours.state_dict()
    assert list(sd) == list(theirs.state_dict())

    # ours -> a fresh torch layer -> a fresh one of ours, strictly; all three then agree.
    fresh_theirs = theirs_cls(3, affine=affine, track_running_stats=track)
    fresh_theirs.load_state_dict(sd, strict=True)
    fresh_ours = ours_cls(3, affine=affine, track_running_stats=track)
    fresh_ours.load_state_dict(fresh_theirs.state_dict(), strict=True)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    for m in (ours, fresh_theirs, fresh_ours):
        m.eval()
    y = ours(x)
    torch.testing.assert_close(fresh_theirs(x), y)
    torch.testing.assert_close(fresh_ours(x), y)
    for key, value in sd.items():
        assert torch.equal(fresh_ours.state_dict()[key], value), key


@pytest.mark.parametrize(("ours_cls", "theirs_cls", "shape"), CASES, ids=CASE_IDS)
def test_old_checkpoint_without_num_batches_tracked(ours_cls, theirs_cls, shape) -> None:
    """A state_dict saved before num_batches_tracked existed (no version metadata) still loads
    strictly, in torch and in ours, and both keep their own counter."""
    source = theirs_cls(3)
    source(torch.randn(shape))
    old = OrderedDict((k, v) for k, v in source.state_dict().items() if k != "num_batches_tracked")
    assert not hasattr(old, "_metadata")
    ours, theirs = ours_cls(3), theirs_cls(3)
    ours.load_state_dict(old, strict=True)
    theirs.load_state_dict(old, strict=True)
    assert torch.equal(ours.running_mean, source.running_mean)
    assert torch.equal(ours.num_batches_tracked, theirs.num_batches_tracked)
    assert int(ours.num_batches_tracked) == 0
    # With version metadata saying 2, a missing counter is an error in both.
    new = source.state_dict()
    del new["num_batches_tracked"]
    for m in (ours_cls(3), theirs_cls(3)):
        with pytest.raises(RuntimeError, match="num_batches_tracked"):
            m.load_state_dict(new, strict=True)


@pytest.mark.parametrize(("ours_cls", "theirs_cls", "shape"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"eps": 1e-3, "momentum": None}, {"affine": False, "track_running_stats": False}],
)
def test_repr_and_structure(ours_cls, theirs_cls, shape, kwargs) -> None:
    ours, theirs = ours_cls(3, **kwargs), theirs_cls(3, **kwargs)
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert hasattr(ours, name)
        assert (getattr(ours, name) is None) == (getattr(theirs, name) is None), name


def test_reset_running_stats_and_parameters() -> None:
    ours = bm.BatchNorm2d(3)
    with torch.no_grad():
        ours.weight.fill_(2.0)
        ours.bias.fill_(-1.0)
    ours(torch.randn(4, 3, 2, 2) + 5)
    assert int(ours.num_batches_tracked) == 1 and ours.running_mean.abs().min() > 0.1
    ours.reset_running_stats()
    fresh = nn.BatchNorm2d(3)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(ours, name), getattr(fresh, name)), name
    assert torch.equal(ours.weight, torch.full((3,), 2.0))  # parameters untouched
    ours.reset_parameters()
    assert torch.equal(ours.weight, fresh.weight) and torch.equal(ours.bias, fresh.bias)


def test_factory_kwargs() -> None:
    ours = bm.BatchNorm1d(4, dtype=torch.float64, device="cpu")
    theirs = nn.BatchNorm1d(4, dtype=torch.float64, device="cpu")
    for (name, a), (_, b) in zip(
        ours.state_dict().items(), theirs.state_dict().items(), strict=True
    ):
        assert a.dtype == b.dtype and a.device == b.device, name


def _buffers(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


BAD_INPUTS = [
    (bm.BatchNorm1d, nn.BatchNorm1d, (2, 3, 4, 5), "expected 2D or 3D input (got 4D input)"),
    (bm.BatchNorm1d, nn.BatchNorm1d, (3,), "expected 2D or 3D input (got 1D input)"),
    (bm.BatchNorm2d, nn.BatchNorm2d, (2, 3, 4), "expected 4D input (got 3D input)"),
    (bm.BatchNorm3d, nn.BatchNorm3d, (2, 3, 4, 5), "expected 5D input (got 4D input)"),
]


@pytest.mark.parametrize(("ours_cls", "theirs_cls", "shape", "message"), BAD_INPUTS)
def test_wrong_rank_same_error_as_torch_and_no_state_change(
    ours_cls, theirs_cls, shape, message
) -> None:
    ours = ours_cls(3)
    before = _buffers(ours)
    x = torch.randn(shape)
    with pytest.raises(ValueError) as ours_err:
        ours(x)
    with pytest.raises(ValueError) as theirs_err:
        theirs_cls(3)(x)
    assert str(ours_err.value) == str(theirs_err.value) == message
    for k, v in _buffers(ours).items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    ("cls", "shape", "match"),
    [
        (bm.BatchNorm2d, (2, 4, 3, 3), "num_features=3"),
        (bm.BatchNorm1d, (5, 2), "num_features=3"),
        (bm.BatchNorm1d, (1, 3), "Expected more than 1 value per channel when training"),
        (bm.BatchNorm2d, (1, 3, 1, 1), "Expected more than 1 value per channel when training"),
        (bm.BatchNorm3d, (2, 3, 2, 2, 2), None),  # integer input: rejected by the functional
    ],
)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_errors_leave_state_untouched(cls, shape, match, momentum) -> None:
    layer = cls(3, momentum=momentum)
    layer(torch.randn((4, 3) + shape[2:]) + 3)  # one good step so the state is not trivial
    before = _buffers(layer)
    x = torch.ones(shape, dtype=torch.long) if match is None else torch.randn(shape)
    with pytest.raises(ValueError, match=match or "^input"):
        layer(x)
    for k, v in _buffers(layer).items():
        assert torch.equal(v, before[k]), k


def test_one_value_per_channel_is_fine_in_eval() -> None:
    ours, theirs = bm.BatchNorm1d(3), nn.BatchNorm1d(3)
    ours.eval()
    theirs.eval()
    x = torch.randn(1, 3)
    torch.testing.assert_close(ours(x), theirs(x))


def test_tracking_switched_off_after_construction() -> None:
    """Buffers exist but track_running_stats was set to False later (a way to freeze them):
    training then neither updates nor counts, and eval still uses the frozen statistics."""
    ours, theirs = _pair(bm.BatchNorm2d, nn.BatchNorm2d, torch.float64)
    _step(ours, theirs, (3, 3, 2, 2), torch.float64, seed=0)
    for m in (ours, theirs):
        m.track_running_stats = False
        m.zero_grad()
    before = _buffers(ours)
    _step(ours, theirs, (3, 3, 2, 2), torch.float64, seed=1)
    for k, v in _buffers(ours).items():
        assert torch.equal(v, before[k]), k
    ours.eval()
    theirs.eval()
    for m in (ours, theirs):
        m.zero_grad()
    _step(ours, theirs, (3, 3, 2, 2), torch.float64, seed=2)


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_constructor_rejects_bad_num_features(bad, error) -> None:
    with pytest.raises(error, match="^num_features"):
        bm.BatchNorm2d(bad)


def test_channel_mismatch_caught_even_without_parameters_or_buffers() -> None:
    """torch.nn accepts any channel count when the layer holds no per-channel tensor; a layer
    built for 3 channels that silently normalises 5 hides a wiring bug, so ours refuses."""
    x = torch.randn(2, 5, 2, 2)
    assert nn.BatchNorm2d(3, affine=False, track_running_stats=False)(x).shape == x.shape
    with pytest.raises(ValueError, match="num_features=3"):
        bm.BatchNorm2d(3, affine=False, track_running_stats=False)(x)
