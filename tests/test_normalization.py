"""bnbook.normalization against torch.nn.functional: the shared core and every functional form.

Each check runs our function and torch's on the same data and compares outputs, the gradients
of the input and of the parameters, and running statistics; gradcheck and gradgradcheck compare
the hand-written backward with finite differences in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from bnbook import normalization as nF

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-11}}
SHAPE = (4, 6, 3, 5)  # (N, C, H, W)


def _data(shape, dtype, seed=0, scale=2.0, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


def _compare(ours, theirs, inputs, dtype):
    """Same output and same gradient for every input, given one upstream gradient."""
    a = [t.clone().requires_grad_() for t in inputs]
    b = [t.clone().requires_grad_() for t in inputs]
    ya, yb = ours(*a), theirs(*b)
    dy = _data(ya.shape, dtype, seed=99)
    torch.testing.assert_close(ya, yb, **TOL[dtype])
    ga = torch.autograd.grad(ya, a, dy)
    gb = torch.autograd.grad(yb, b, dy)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, **TOL[dtype])


# (name, ours, torch's, parameter shapes) for x of shape SHAPE
FORMS = [
    ("layer_norm", lambda x, w, b: nF.layer_norm(x, (3, 5), w, b),
     lambda x, w, b: F.layer_norm(x, (3, 5), w, b), (3, 5)),
    ("layer_norm_CHW", lambda x, w, b: nF.layer_norm(x, (6, 3, 5), w, b),
     lambda x, w, b: F.layer_norm(x, (6, 3, 5), w, b), (6, 3, 5)),
    ("group_norm", lambda x, w, b: nF.group_norm(x, 3, w, b),
     lambda x, w, b: F.group_norm(x, 3, w, b), (6,)),
    ("group_norm_G1", lambda x, w, b: nF.group_norm(x, 1, w, b),
     lambda x, w, b: F.group_norm(x, 1, w, b), (6,)),
    ("instance_norm", lambda x, w, b: nF.instance_norm(x, weight=w, bias=b),
     lambda x, w, b: F.instance_norm(x, weight=w, bias=b), (6,)),
    ("rms_norm", lambda x, w, b: nF.rms_norm(x, (3, 5), w) + b,
     lambda x, w, b: F.rms_norm(x, (3, 5), w) + b, (3, 5)),
    ("rms_norm_eps", lambda x, w, b: nF.rms_norm(x, (5,), w[0], eps=1e-3) + b,
     lambda x, w, b: F.rms_norm(x, (5,), w[0], eps=1e-3) + b, (3, 5)),
]
FORM_IDS = [f[0] for f in FORMS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_functional_matches_torch(form, dtype):
    _, ours, theirs, pshape = form
    x = _data(SHAPE, dtype)
    w, b = _data(pshape, dtype, seed=1), _data(pshape, dtype, seed=2)
    _compare(ours, theirs, (x, w, b), dtype)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_functional_without_affine_matches_torch(form):
    _, ours, theirs, pshape = form
    name = form[0]
    if name.startswith("rms"):
        o, t = (lambda x: nF.rms_norm(x, (3, 5))), (lambda x: F.rms_norm(x, (3, 5)))
    else:
        o, t = (lambda x: ours(x, None, None)), (lambda x: theirs(x, None, None))
    _compare(o, t, (_data(SHAPE, torch.float64),), torch.float64)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_gradcheck_and_gradgradcheck(form):
    _, ours, _, pshape = form
    x = _data((2, 6, 3, 5), torch.float64).requires_grad_()
    w = _data(pshape, torch.float64, seed=1).requires_grad_()
    b = _data(pshape, torch.float64, seed=2).requires_grad_()
    assert gradcheck(ours, (x, w, b))
    assert gradgradcheck(ours, (x, w, b))


def test_core_with_batch_norm_axes_is_batch_norm():
    x = _data(SHAPE, torch.float64)
    w, b = _data((6,), torch.float64, 1), _data((6,), torch.float64, 2)
    _compare(
        lambda x, w, b: nF.normalize(x, (0, 2, 3), w.view(1, 6, 1, 1), b.view(1, 6, 1, 1)),
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        (x, w, b), torch.float64,
    )


def test_core_axes_give_layer_and_instance_norm():
    x = _data(SHAPE, torch.float64)
    torch.testing.assert_close(nF.normalize(x, (1, 2, 3)), F.layer_norm(x, (6, 3, 5)))
    torch.testing.assert_close(nF.normalize(x, (2, 3)), F.instance_norm(x))
    torch.testing.assert_close(nF.normalize(x, (-2, -1), centre=False, eps=1e-6),
                               F.rms_norm(x, (3, 5), eps=1e-6))


def test_instance_norm_running_stats_match_torch():
    for use_input_stats in (True, False):
        x = _data(SHAPE, torch.float32)
        rm_o, rv_o = _data((6,), torch.float32, 3), _data((6,), torch.float32, 4).abs()
        rm_t, rv_t = rm_o.clone(), rv_o.clone()
        yo = nF.instance_norm(x, rm_o, rv_o, use_input_stats=use_input_stats, momentum=0.3)
        yt = F.instance_norm(x, rm_t, rv_t, use_input_stats=use_input_stats, momentum=0.3)
        torch.testing.assert_close(yo, yt)
        torch.testing.assert_close(rm_o, rm_t)
        torch.testing.assert_close(rv_o, rv_t)


def test_instance_norm_with_running_stats_gradcheck():
    x = _data((2, 3, 4), torch.float64).requires_grad_()
    w = _data((3,), torch.float64, 1).requires_grad_()
    rm, rv = _data((3,), torch.float64, 3), _data((3,), torch.float64, 4).abs() + 0.5

    def f(x, w):
        return nF.instance_norm(x, rm, rv, w, None, use_input_stats=False)

    assert gradcheck(f, (x, w)) and gradgradcheck(f, (x, w))
    _compare(f, lambda x, w: F.instance_norm(x, rm, rv, w, None, use_input_stats=False),
             (x.detach(), w.detach()), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_rms_norm_eps_none_is_float32_epsilon_for_half_types(dtype):
    # mean square 1e-7, close to float32's epsilon 1.19e-7: the output shows which eps was used.
    x = torch.full((2, 8), 3.1623e-4, dtype=torch.float64).to(dtype)
    expected_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    ours, theirs = nF.rms_norm(x, (8,)), F.rms_norm(x, (8,))
    explicit = nF.rms_norm(x, (8,), eps=expected_eps)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(ours, explicit, rtol=0, atol=0)
    if dtype in (torch.float16, torch.bfloat16):  # not the half type's own epsilon
        assert not torch.equal(ours, nF.rms_norm(x, (8,), eps=torch.finfo(dtype).eps))


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_bfloat16_input_matches_torch(form):
    _, ours, theirs, pshape = form
    x = _data(SHAPE, torch.bfloat16)
    w = _data(pshape, torch.bfloat16, 1)
    b = _data(pshape, torch.bfloat16, 2)
    yo, yt = ours(x, w, b), theirs(x, w, b)
    assert yo.dtype == torch.bfloat16
    torch.testing.assert_close(yo.float(), yt.float(), rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_constant_input_stays_finite(form):
    _, ours, _, pshape = form
    x = torch.full(SHAPE, 3.0, requires_grad=True)
    w = torch.ones(pshape, requires_grad=True)
    b = torch.zeros(pshape, requires_grad=True)
    y = ours(x, w, b)
    y.backward(torch.randn_like(y))
    for t in (y, x.grad, w.grad, b.grad):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_large_mean_float32_stays_accurate(form):
    _, ours, _, pshape = form
    x32 = _data(SHAPE, torch.float32, scale=1.0, shift=1e4)
    w, b = torch.ones(pshape), torch.zeros(pshape)
    exact = ours(x32.double(), w.double(), b.double())  # the same values, float64 arithmetic
    assert (ours(x32, w, b).double() - exact).abs().max() < 2e-3


def test_errors_name_the_argument_and_match_torch_classes():
    x = torch.randn(2, 6, 3)
    cases = [  # (ours, torch's, word the message must contain)
        (lambda: nF.layer_norm(x, (4,)), lambda: F.layer_norm(x, (4,)), "normalized_shape"),
        (lambda: nF.layer_norm(x, (3,), torch.ones(4)),
         lambda: F.layer_norm(x, (3,), torch.ones(4)), "weight"),
        (lambda: nF.layer_norm(x, (3,), None, torch.ones(2)),
         lambda: F.layer_norm(x, (3,), None, torch.ones(2)), "bias"),
        (lambda: nF.rms_norm(x, (5,)), lambda: F.rms_norm(x, (5,)), "normalized_shape"),
        (lambda: nF.rms_norm(x, (3,), torch.ones(2)),
         lambda: F.rms_norm(x, (3,), torch.ones(2)), "weight"),
        (lambda: nF.group_norm(x, 4), lambda: F.group_norm(x, 4), "num_groups"),
        (lambda: nF.group_norm(x, 3, torch.ones(5)),
         lambda: F.group_norm(x, 3, torch.ones(5)), "weight"),
        (lambda: nF.instance_norm(torch.randn(2, 6, 1)),
         lambda: F.instance_norm(torch.randn(2, 6, 1)), "spatial"),
    ]
    for ours, theirs, word in cases:
        with pytest.raises(Exception) as torch_err:
            theirs()
        with pytest.raises(torch_err.type, match=word):
            ours()


def test_vmap_and_grad_compose():
    from torch.func import grad, vmap

    xs = _data((3, 4, 6), torch.float64)
    g = vmap(grad(lambda z: nF.layer_norm(z, (6,)).pow(3).sum()))(xs)
    h = vmap(grad(lambda z: F.layer_norm(z, (6,)).pow(3).sum()))(xs)
    torch.testing.assert_close(g, h)


# -- batch renormalization ----------------------------------------------------------------------


def _renorm_reference(x, rm, rv, w, b, eps, r_max, d_max):
    """Ioffe (2017), Algorithm 1, with torch autograd: r and d detached (stop_gradient)."""
    dims = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu = x.mean(dim=dims, keepdim=True)
    sigma_b = torch.sqrt(x.var(dim=dims, unbiased=False, keepdim=True) + eps)
    sigma = torch.sqrt(rv.view(shape) + eps)
    r = (sigma_b / sigma).clamp(1 / r_max, r_max).detach()
    d = ((mu - rm.view(shape)) / sigma).clamp(-d_max, d_max).detach()
    return w.view(shape) * ((x - mu) / sigma_b * r + d) + b.view(shape)


@pytest.mark.parametrize("r_max, d_max", [(3.0, 5.0), (1.5, 0.2), (1.0, 0.0)])
def test_batch_renorm_matches_algorithm_1(r_max, d_max):
    x = _data(SHAPE, torch.float64)
    rm, rv = _data((6,), torch.float64, 3), _data((6,), torch.float64, 4).abs() + 0.5
    w, b = _data((6,), torch.float64, 1), _data((6,), torch.float64, 2)
    _compare(
        lambda x, w, b: nF.batch_renorm(x, rm.clone(), rv.clone(), w, b, True, 0.1, 1e-5,
                                        r_max, d_max),
        lambda x, w, b: _renorm_reference(x, rm, rv, w, b, 1e-5, r_max, d_max),
        (x, w, b), torch.float64,
    )


def test_batch_renorm_unclipped_output_is_running_stats_output():
    # No clipping: x_hat * r + d == (x - running_mean) / running_std exactly.
    x = _data(SHAPE, torch.float64)
    rm, rv = x.mean(dim=(0, 2, 3)) + 0.1, x.var(dim=(0, 2, 3)) * 1.2
    y = nF.batch_renorm(x, rm.clone(), rv.clone(), training=True, r_max=10.0, d_max=10.0)
    torch.testing.assert_close(y, F.batch_norm(x, rm, rv, training=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_renorm_with_r1_d0_is_batch_norm_and_updates_the_same_stats(dtype):
    x = _data(SHAPE, dtype)
    rm_o, rv_o = torch.zeros(6, dtype=dtype), torch.ones(6, dtype=dtype)
    rm_t, rv_t = rm_o.clone(), rv_o.clone()
    w, b = _data((6,), dtype, 1), _data((6,), dtype, 2)
    _compare(
        lambda x, w, b: nF.batch_renorm(x, rm_o, rv_o, w, b, True, 0.1, 1e-5, 1.0, 0.0),
        lambda x, w, b: F.batch_norm(x, rm_t, rv_t, w, b, True, 0.1, 1e-5),
        (x, w, b), dtype,
    )
    torch.testing.assert_close(rm_o, rm_t, **TOL[dtype])
    torch.testing.assert_close(rv_o, rv_t, **TOL[dtype])


def test_batch_renorm_argument_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="running_mean"):
        nF.batch_renorm(x, None, None, training=True)
    with pytest.raises(ValueError, match="r_max"):
        nF.batch_renorm(x, torch.zeros(3), torch.ones(3), training=True, r_max=0.5)
    with pytest.raises(ValueError, match="d_max"):
        nF.batch_renorm(x, torch.zeros(3), torch.ones(3), training=True, d_max=-1.0)
    with pytest.raises(RuntimeError, match="weight"):
        nF.batch_renorm(x, torch.zeros(3), torch.ones(3), torch.ones(4), training=True)
