"""bnbook.norms against torch.nn: same numbers, gradients, state, repr and errors.

BatchRenorm has no torch counterpart: with r_max=1, d_max=0 it is checked against
torch.nn.BatchNormXd, and otherwise against Algorithm 1 of Ioffe (2017) written with autograd.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnbook import norms

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-11}}

# (ours, torch's, constructor args, input shape)
CASES = [
    (norms.LayerNorm, nn.LayerNorm, ((5,),), (4, 3, 5)),
    (norms.LayerNorm, nn.LayerNorm, ((3, 5), 1e-3), (4, 3, 5)),
    (norms.LayerNorm, nn.LayerNorm, (5,), (4, 5)),
    (norms.LayerNorm, nn.LayerNorm, ((5,),), (4, 3, 5), {"bias": False}),
    (norms.LayerNorm, nn.LayerNorm, ((5,),), (4, 3, 5), {"elementwise_affine": False}),
    (norms.RMSNorm, nn.RMSNorm, ((5,),), (4, 3, 5)),
    (norms.RMSNorm, nn.RMSNorm, ((3, 5), 1e-4), (4, 3, 5)),
    (norms.RMSNorm, nn.RMSNorm, (5,), (4, 5), {"elementwise_affine": False}),
    (norms.GroupNorm, nn.GroupNorm, (2, 6), (4, 6, 3, 3)),
    (norms.GroupNorm, nn.GroupNorm, (3, 6), (4, 6)),
    (norms.GroupNorm, nn.GroupNorm, (6, 6, 1e-3), (2, 6, 5), {"bias": False}),
    (norms.GroupNorm, nn.GroupNorm, (1, 6), (2, 6, 2, 2, 2), {"affine": False}),
    (norms.InstanceNorm1d, nn.InstanceNorm1d, (6,), (4, 6, 5)),
    (norms.InstanceNorm1d, nn.InstanceNorm1d, (6,), (6, 5)),  # unbatched
    (norms.InstanceNorm2d, nn.InstanceNorm2d, (6,), (4, 6, 3, 3), {"affine": True}),
    (norms.InstanceNorm2d, nn.InstanceNorm2d, (6,), (4, 6, 3, 3),
     {"affine": True, "track_running_stats": True}),
    (norms.InstanceNorm2d, nn.InstanceNorm2d, (6,), (6, 3, 3), {"track_running_stats": True}),
    (norms.InstanceNorm3d, nn.InstanceNorm3d, (6,), (2, 6, 2, 3, 2),
     {"affine": True, "track_running_stats": True, "momentum": None}),
]
IDS = [f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)]


def _make(case, dtype):
    ours_cls, theirs_cls, args, shape = case[:4]
    kwargs = case[4] if len(case) > 4 else {}
    ours = ours_cls(*args, **kwargs, dtype=dtype)
    theirs = theirs_cls(*args, **kwargs, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the affine part off the identity, identically in both
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs, shape


def _step(ours, theirs, shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    theirs_before = copy.deepcopy(theirs)
    yo, yt = ours(xo), theirs(xt)
    yo.backward(dy)
    yt.backward(dy)
    torch.testing.assert_close(yo, yt, **TOL[dtype])
    if dtype == torch.float64:
        torch.testing.assert_close(xo.grad, xt.grad, **TOL[dtype])
    else:
        # float32: measured against torch in float64 on the same values, ours must be as close
        # as torch's own float32 (or within 1e-5). In a group of two nearly equal values
        # (GroupNorm of (N, C) input) 1/std is large and torch's float32 backward is off by ~1e-4
        # where ours stays within ~2e-6.
        exact = copy.deepcopy(theirs_before).double()
        x64 = x.double().requires_grad_()
        exact(x64).backward(dy.double())
        err_ours = (xo.grad.double() - x64.grad).abs().max().item()
        err_torch = (xt.grad.double() - x64.grad).abs().max().item()
        assert err_ours <= max(err_torch, 1e-5), (err_ours, err_torch)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **TOL[dtype], msg=name)
    for (name, a), b in zip(ours.named_buffers(), theirs.buffers(), strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_module_matches_torch_in_train_and_eval(case, dtype):
    ours, theirs, shape = _make(case, dtype)
    for seed in range(3):
        _step(ours, theirs, shape, dtype, seed)
    ours.eval()
    theirs.eval()
    _step(ours, theirs, shape, dtype, 10)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_repr_and_state_dict_both_ways(case):
    ours, theirs, shape = _make(case, torch.float32)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _step(ours, theirs, shape, torch.float32, 0)  # the running statistics move, if any
    fresh_ours, fresh_theirs, _ = _make(case, torch.float32)
    fresh_ours.load_state_dict(theirs.state_dict())
    fresh_theirs.load_state_dict(ours.state_dict())
    for a, b in zip(fresh_ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(fresh_theirs.state_dict().values(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bfloat16_module_matches_torch(case):
    ours, theirs, shape = _make(case, torch.float32)
    ours, theirs = ours.to(torch.bfloat16), theirs.to(torch.bfloat16)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 2 + 1).bfloat16()
    yo, yt = ours(x), theirs(x)
    assert yo.dtype == torch.bfloat16
    torch.testing.assert_close(yo.float(), yt.float(), rtol=2e-2, atol=3e-2)


def test_instance_norm_keeps_torch_quirks():
    # num_batches_tracked is never advanced; momentum=None freezes the running statistics.
    for cls in (norms.InstanceNorm2d, nn.InstanceNorm2d):
        layer = cls(3, track_running_stats=True, momentum=None)
        layer(torch.randn(2, 3, 4, 4) + 5)
        assert layer.num_batches_tracked.item() == 0
        assert torch.equal(layer.running_mean, torch.zeros(3))


def test_defaults_match_torch():
    assert (norms.InstanceNorm2d(4).affine, norms.InstanceNorm2d(4).track_running_stats) == (
        False, False)
    assert norms.RMSNorm(4).eps is None
    assert norms.BatchRenorm2d(4).r_max == 3.0 and norms.BatchRenorm2d(4).d_max == 5.0


def test_constructor_and_shape_errors_match_torch():
    cases = [  # (ours, torch's, word in our message)
        (lambda: norms.GroupNorm(4, 6), lambda: nn.GroupNorm(4, 6), "num_groups"),
        (lambda: norms.GroupNorm(2, 6)(torch.randn(2, 4, 3)),
         lambda: nn.GroupNorm(2, 6)(torch.randn(2, 4, 3)), "weight"),
        (lambda: norms.LayerNorm(4)(torch.randn(2, 5)),
         lambda: nn.LayerNorm(4)(torch.randn(2, 5)), "normalized_shape"),
        (lambda: norms.RMSNorm(4)(torch.randn(2, 5)),
         lambda: nn.RMSNorm(4)(torch.randn(2, 5)), "normalized_shape"),
        (lambda: norms.InstanceNorm2d(4, affine=True)(torch.randn(2, 5, 3, 3)),
         lambda: nn.InstanceNorm2d(4, affine=True)(torch.randn(2, 5, 3, 3)), "num_features"),
        (lambda: norms.InstanceNorm2d(4)(torch.randn(2, 4)),
         lambda: nn.InstanceNorm2d(4)(torch.randn(2, 4)), "4D input"),
        (lambda: norms.InstanceNorm1d(4)(torch.randn(2, 4, 1)),
         lambda: nn.InstanceNorm1d(4)(torch.randn(2, 4, 1)), "spatial element"),
    ]
    for ours, theirs, word in cases:
        with pytest.raises(Exception) as torch_err:
            theirs()
        with pytest.raises(torch_err.type, match=word):
            ours()


# -- BatchRenorm ---------------------------------------------------------------------------------

RENORM = [
    (norms.BatchRenorm1d, nn.BatchNorm1d, (8, 3)),
    (norms.BatchRenorm1d, nn.BatchNorm1d, (4, 3, 5)),
    (norms.BatchRenorm2d, nn.BatchNorm2d, (3, 3, 4, 2)),
    (norms.BatchRenorm3d, nn.BatchNorm3d, (2, 3, 2, 2, 3)),
]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("ours_cls, torch_cls, shape", RENORM)
def test_batch_renorm_with_r1_d0_is_batch_norm(ours_cls, torch_cls, shape, momentum):
    for dtype in (torch.float32, torch.float64):
        ours = ours_cls(3, momentum=momentum, r_max=1.0, d_max=0.0, dtype=dtype)
        theirs = torch_cls(3, momentum=momentum, dtype=dtype)
        theirs.load_state_dict(ours.state_dict())
        for seed in range(3):
            _step(ours, theirs, shape, dtype, seed)
        ours.eval()
        theirs.eval()
        _step(ours, theirs, shape, dtype, 10)


def test_batch_renorm_state_dict_loads_to_and_from_batch_norm():
    bn = nn.BatchNorm2d(3)
    bn(torch.randn(4, 3, 2, 2) * 3 + 1)
    ours = norms.BatchRenorm2d(3)
    ours.load_state_dict(bn.state_dict())
    ours(torch.randn(4, 3, 2, 2))
    back = nn.BatchNorm2d(3)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.running_mean, ours.running_mean)
    assert back.num_batches_tracked.item() == 2


def test_batch_renorm_training_uses_running_statistics():
    # Ioffe (2017), Algorithm 1 by autograd with r and d detached: output and all gradients.
    torch.manual_seed(0)
    layer = norms.BatchRenorm2d(3, r_max=2.0, d_max=0.5, dtype=torch.float64)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 3.0]))
        layer.running_var.copy_(torch.tensor([0.3, 4.0, 1.0]))
        layer.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    x = (torch.randn(2, 3, 3, 3, dtype=torch.float64) * 2).requires_grad_()
    rm, rv = layer.running_mean.clone(), layer.running_var.clone()
    w, b = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone()
    b.requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y = layer(x)
    shape = (1, 3, 1, 1)
    mu = x2.mean(dim=(0, 2, 3), keepdim=True)
    sb = torch.sqrt(x2.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + layer.eps)
    s = torch.sqrt(rv.view(shape) + layer.eps)
    r = (sb / s).clamp(0.5, 2.0).detach()
    d = ((mu - rm.view(shape)) / s).clamp(-0.5, 0.5).detach()
    ref = w.view(shape) * ((x2 - mu) / sb * r + d) + b.view(shape)
    assert not torch.allclose(y, torch.nn.functional.batch_norm(x2, None, None, w, b, True))
    dy = torch.randn_like(y)
    y.backward(dy)
    ref.backward(dy)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.weight.grad, w.grad)
    torch.testing.assert_close(layer.bias.grad, b.grad)


def test_batch_renorm_errors():
    with pytest.raises(ValueError, match="track_running_stats"):
        norms.BatchRenorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match="num_features"):
        norms.BatchRenorm2d(3)(torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match="4D input"):
        norms.BatchRenorm2d(3)(torch.randn(2, 3))
    layer = norms.BatchRenorm1d(3)
    layer.r_max = 0.5
    with pytest.raises(ValueError, match="r_max"):
        layer(torch.randn(4, 3))
    assert layer.num_batches_tracked.item() == 0  # a rejected batch is not counted
