"""bnbook.functional.batch_norm against torch.nn.functional.batch_norm and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnbook.functional import batch_norm

SHAPES = [(6, 3), (4, 3, 5), (3, 2, 4, 3), (2, 3, 2, 3, 2)]


def _inputs(shape, dtype=torch.float64, seed=0, loc=0.5, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=g, dtype=torch.float64).mul_(scale).add_(loc).to(dtype)
    w = torch.randn(c, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(c, generator=g, dtype=torch.float64).to(dtype)
    rm = torch.randn(c, generator=g, dtype=torch.float64).to(dtype)
    rv = torch.rand(c, generator=g, dtype=torch.float64).add_(0.5).to(dtype)
    return x, w, b, rm, rv


def _run(fn, x, w, b, rm, rv, dy, training, momentum=0.1, eps=1e-5):
    """Forward and backward of ``fn`` on fresh leaves; returns output, grads and the stats."""
    x = x.detach().clone().requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = fn(x, rm, rv, w, b, training, momentum, eps)
    y.backward(dy)
    grads = (x.grad, None if w is None else w.grad, None if b is None else b.grad)
    return y, grads, rm, rv


def _assert_close_or_none(a, b, **tol):
    assert (a is None) == (b is None)
    if a is not None:
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", ["both", "weight_only", "bias_only", "none"])
# Eval without running statistics is an error, tested in test_bad_arguments.
@pytest.mark.parametrize(("training", "stats"), [(True, True), (True, False), (False, True)])
def test_matches_torch_float64(shape, affine, training, stats) -> None:
    x, w, b, rm, rv = _inputs(shape)
    w = w if affine in ("both", "weight_only") else None
    b = b if affine in ("both", "bias_only") else None
    rm, rv = (rm, rv) if stats else (None, None)
    dy = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = _run(batch_norm, x, w, b, rm, rv, dy, training, momentum=0.3)
    theirs = _run(F.batch_norm, x, w, b, rm, rv, dy, training, momentum=0.3)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-12, atol=1e-12)
    for a, t in zip(ours[1], theirs[1], strict=True):
        _assert_close_or_none(a, t, rtol=1e-10, atol=1e-12)
    _assert_close_or_none(ours[2], theirs[2], rtol=1e-12, atol=1e-12)
    _assert_close_or_none(ours[3], theirs[3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(shape, training) -> None:
    x, w, b, rm, rv = _inputs(shape, seed=2)
    args = (x.requires_grad_(), rm, rv, w.requires_grad_(), b.requires_grad_())

    # Running statistics are not updated here (momentum 0) so every call sees the same function.
    def f(x_, rm_, rv_, w_, b_):
        return batch_norm(x_, rm_, rv_, w_, b_, training=training, momentum=0.0)

    assert torch.autograd.gradcheck(f, args)


def test_double_backward_is_refused_clearly() -> None:
    """The backward is hand-written and marked once_differentiable: a second derivative raises
    instead of silently returning a wrong (zero) answer, so gradgradcheck is not supported."""
    x, w, b, _, _ = _inputs((4, 3, 2), seed=3)
    x.requires_grad_()
    y = batch_norm(x, None, None, w, b, training=True)
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_large_mean_keeps_its_variance() -> None:
    """float32 data around 1e4 with unit spread: the two-pass variance survives."""
    g = torch.Generator().manual_seed(4)
    x64 = torch.randn(256, 2, 8, 8, generator=g, dtype=torch.float64) + 1e4
    x32 = x64.float()
    dims = (0, 2, 3)
    # Reference: the float32 numbers themselves, analysed in float64.
    ref = F.batch_norm(x32.double(), None, None, training=True)
    true_var = x32.double().var(dim=dims, unbiased=False)  # ~1

    rm, rv = torch.zeros(2), torch.ones(2)
    y = batch_norm(x32, rm, rv, training=True, momentum=1.0)
    # float32 spaces numbers near 1e4 about 1e-3 apart, so a float32 mean is off by a few of
    # those steps; the normalised output inherits that shift and nothing worse.
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=5e-3)
    m = x32.numel() // 2
    torch.testing.assert_close(rv.double(), true_var * m / (m - 1), rtol=1e-4, atol=0)

    # The one-pass textbook formula E[x^2] - E[x]^2 in float32 cancels catastrophically:
    # both terms are ~1e8, where float32 steps are 8 apart, so the unit variance is lost.
    naive = (x32 * x32).mean(dim=dims) - x32.mean(dim=dims) ** 2
    assert ((naive.double() - true_var).abs() > 0.5).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("param_dtype", ["float32", "same"])
@pytest.mark.parametrize("training", [True, False])
def test_low_precision_matches_torch(dtype, param_dtype, training) -> None:
    x, w, b, rm, rv = _inputs((8, 3, 4, 4), dtype=torch.float32, seed=5)
    x = x.to(dtype)
    pdt = torch.float32 if param_dtype == "float32" else dtype
    w, b, rm, rv = (t.to(pdt) for t in (w, b, rm, rv))
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(dtype)
    ours = _run(batch_norm, x, w, b, rm, rv, dy, training)
    theirs = _run(F.batch_norm, x, w, b, rm, rv, dy, training)
    assert ours[0].dtype == dtype
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 5e-3, "atol": 5e-3}
    torch.testing.assert_close(ours[0], theirs[0], **tol)
    assert ours[1][0].dtype == dtype and ours[1][1].dtype == pdt and ours[1][2].dtype == pdt
    for a, t in zip(ours[1], theirs[1], strict=True):
        # Gradient sums over 128 values: compare relative to their size.
        torch.testing.assert_close(a.float(), t.float(), rtol=5e-2, atol=5e-2)
    assert ours[2].dtype == pdt
    torch.testing.assert_close(ours[2], theirs[2], **tol)
    torch.testing.assert_close(ours[3], theirs[3], **tol)
    # Computing in float32 is more exact than torch's half arithmetic could be: compare with a
    # float64 reference to make sure nothing was computed in the low precision.
    ref = F.batch_norm(
        x.double(), rm.double(), rv.double(), w.double(), b.double(), training=training
    )
    torch.testing.assert_close(ours[0].double(), ref, **tol)


def _layouts(x: torch.Tensor):
    """The same values in different memory layouts."""
    yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    yield "transposed", x.transpose(2, 3).contiguous().transpose(2, 3)
    big = torch.zeros(x.shape[0] * 2, x.shape[1], x.shape[2], x.shape[3] + 3, dtype=x.dtype)
    big[::2, :, :, 1:-2] = x
    yield "sliced", big[::2, :, :, 1:-2]


@pytest.mark.parametrize("training", [True, False])
def test_memory_layouts(training) -> None:
    x, w, b, rm, rv = _inputs((4, 3, 5, 6), seed=7)
    dy = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    expected = _run(F.batch_norm, x, w, b, rm, rv, dy, training)
    for name, xl in _layouts(x):
        assert not xl.is_contiguous(), name
        for _, dyl in _layouts(dy):
            got = _run(batch_norm, xl, w, b, rm, rv, dyl, training)
            torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
            for a, t in zip(got[1], expected[1], strict=True):
                torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got[2], expected[2])
            torch.testing.assert_close(got[3], expected[3])
    cl = x.contiguous(memory_format=torch.channels_last)
    y = batch_norm(cl, rm.clone(), rv.clone(), w, b, training=training)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_running_var_is_unbiased_and_momentum_weighs_the_batch() -> None:
    x, _, _, _, _ = _inputs((5, 3, 2), seed=9)
    rm, rv = torch.full((3,), 2.0, dtype=torch.float64), torch.full((3,), 3.0, dtype=torch.float64)
    batch_norm(x, rm, rv, training=True, momentum=0.25)
    dims = (0, 2)
    torch.testing.assert_close(rm, 0.75 * 2.0 + 0.25 * x.mean(dim=dims))
    torch.testing.assert_close(rv, 0.75 * 3.0 + 0.25 * x.var(dim=dims, unbiased=True))


def test_eval_uses_running_stats_and_leaves_them() -> None:
    x, w, b, rm, rv = _inputs((5, 3), seed=10)
    rm0, rv0 = rm.clone(), rv.clone()
    y = batch_norm(x, rm, rv, w, b, training=False)
    torch.testing.assert_close(y, (x - rm) / torch.sqrt(rv + 1e-5) * w + b)
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)


def _bad_calls():
    x = torch.randn(4, 3)
    ok = {"running_mean": torch.zeros(3), "running_var": torch.ones(3)}
    yield "input", dict(input=torch.randn(4), **ok), "input"
    yield "int input", dict(input=torch.ones(4, 3, dtype=torch.long), **ok), "input"
    yield "weight", dict(input=x, weight=torch.ones(2), **ok), "weight"
    yield "bias", dict(input=x, bias=torch.ones(3, 1), **ok), "bias"
    yield "running_mean", dict(input=x, running_mean=torch.zeros(4), running_var=ok[
        "running_var"]), "running_mean"
    yield "running_var", dict(input=x, running_mean=ok["running_mean"], running_var=torch.ones(
        2)), "running_var"
    yield "missing stats in eval", dict(input=x, running_mean=None, running_var=None), (
        "running_mean"
    )
    yield "one of two stats", dict(
        input=x, running_mean=None, running_var=torch.ones(3), training=True
    ), "running_mean"
    yield "eps", dict(input=x, eps=0.0, training=True, **ok), "eps"
    yield "momentum", dict(input=x, momentum=2.0, training=True, **ok), "momentum"
    yield "one value per channel", dict(
        input=torch.randn(1, 3), training=True, **ok
    ), "Expected more than 1 value per channel when training, got input size"


@pytest.mark.parametrize(("case", "kwargs", "message"), list(_bad_calls()))
def test_bad_arguments(case, kwargs, message) -> None:
    rm, rv = kwargs.get("running_mean"), kwargs.get("running_var")
    before = [None if t is None else t.clone() for t in (rm, rv)]
    with pytest.raises(ValueError, match=rf"^{message}"):
        batch_norm(**kwargs)
    # Nothing was touched before the error.
    for t, t0 in zip((rm, rv), before, strict=True):
        assert t is None or torch.equal(t, t0), case


def test_one_value_per_channel_message_matches_torch() -> None:
    x = torch.randn(1, 3, 1)
    with pytest.raises(ValueError) as theirs:
        F.batch_norm(x, None, None, training=True)
    with pytest.raises(ValueError) as ours:
        batch_norm(x, None, None, training=True)
    assert str(ours.value) == str(theirs.value)
