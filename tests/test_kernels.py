"""bnbook.kernels (Triton) against torch.nn.functional.batch_norm.

On a machine without CUDA the kernels run in triton's interpreter (chosen by
bnbook.kernels.triton_bn itself, with no environment variable left set), on small shapes; with
a GPU they run natively. Every case forces the tile size down (max_tile) so that the Chan merges
across tiles and across split programs are exercised, not just a single tile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from bnbook.validation import BatchNormArgumentError

# Before any `import triton`: on a CPU-only machine triton_bn imports triton so that triton's own
# library functions run in the interpreter.
triton_bn = pytest.importorskip("bnbook.kernels.triton_bn")

DEVICE = "cuda" if torch.cuda.is_available() and not triton_bn.INTERPRET else "cpu"


def _inputs(shape, dtype=torch.float32, channels_last=False, seed=0, loc=1.5, spread=2.0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=gen) * spread + loc).to(dtype)
    if channels_last:
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    w = torch.randn(c, generator=gen) * 0.5 + 1.0
    b = torch.randn(c, generator=gen)
    rm = torch.randn(c, generator=gen)
    rv = torch.rand(c, generator=gen) + 0.5
    dy = torch.randn(shape, generator=gen).to(dtype)
    return [t.to(DEVICE) for t in (x, w, b, rm, rv, dy)]


def _run(fn, x, w, b, rm, rv, dy, training, **kw):
    """Forward + backward; returns y, running stats after, and the three gradients."""
    x = x.detach().clone().requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = fn(x, rm, rv, w, b, training, 0.1, 1e-5, **kw)
    y.backward(dy)
    return y, rm, rv, x.grad, None if w is None else w.grad, None if b is None else b.grad


CASES = [
    # (shape, channels_last, path, max_tile)
    ((3, 5, 7, 9), False, "auto", None),  # ragged NCHW, one tile per channel
    ((3, 5, 7, 9), False, "split", 16),  # many tiles, several split programs
    ((3, 5, 7, 9), False, "fused", 16),  # many tiles, one program per channel
    ((3, 5, 7, 9), True, "split", 16),  # channels_last: channel-blocked tiles of (N*H*W, C)
    ((3, 5, 7, 9), True, "fused", 16),
    ((37, 6), False, "split", 8),  # (N, C)
    ((4, 3, 10), False, "split", 8),  # (N, C, L)
    ((2, 3, 4, 5, 3), False, "split", 8),  # (N, C, D, H, W)
    ((2, 3, 4, 5, 3), True, "auto", 16),  # channels_last_3d
]


@pytest.mark.parametrize(("shape", "channels_last", "path", "max_tile"), CASES)
def test_training_matches_torch(shape, channels_last, path, max_tile):
    x, w, b, rm, rv, dy = _inputs(shape, channels_last=channels_last)
    ours = _run(triton_bn.batch_norm, x, w, b, rm, rv, dy, True, path=path, max_tile=max_tile)
    ref = _run(F.batch_norm, x, w, b, rm, rv, dy, True)
    names = ("output", "running_mean", "running_var", "grad_input", "grad_weight", "grad_bias")
    for name, a, r in zip(names, ours, ref, strict=True):
        # float32 with float32 accumulation in both: a few ulps of values of order 1-100
        # (grad_weight sums up to ~300 products, hence its absolute slack).
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4, msg=name)
    assert ours[0].stride() == ref[0].stride(), "the output keeps the input's memory format"
    assert ours[3].stride() == x.stride()


@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_matches_torch(channels_last):
    x, w, b, rm, rv, dy = _inputs((3, 5, 7, 9), channels_last=channels_last, seed=1)
    ours = _run(triton_bn.batch_norm, x, w, b, rm, rv, dy, False, path="split", max_tile=32)
    ref = _run(F.batch_norm, x, w, b, rm, rv, dy, False)
    for name, a, r in zip(("output", "rm", "rv", "dx", "dw", "db"), ours, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4, msg=name)
    torch.testing.assert_close(ours[1], rm)  # eval leaves the running statistics alone
    torch.testing.assert_close(ours[2], rv)


def test_weight_bias_none_and_no_running_stats():
    x, _, _, _, _, dy = _inputs((4, 3, 6, 5), seed=2)
    ours = _run(triton_bn.batch_norm, x, None, None, None, None, dy, True, max_tile=32)
    ref = _run(F.batch_norm, x, None, None, None, None, dy, True)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours[3], ref[3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_precision_matches_float64_reference(dtype, channels_last):
    x, w, b, rm, rv, dy = _inputs((4, 6, 5, 7), dtype=dtype, channels_last=channels_last, seed=3)
    ours = _run(triton_bn.batch_norm, x, w, b, rm, rv, dy, True, path="split", max_tile=32)
    # Reference: the same (already rounded) half inputs, computed in float64.
    ref = _run(F.batch_norm, x.double(), w.double(), b.double(), rm.double(), rv.double(),
               dy.double(), True)
    assert ours[0].dtype == dtype and ours[3].dtype == dtype
    # Statistics are float32 in our kernel, so the only large error is the final rounding of y
    # and dx to the storage dtype: half an ulp, i.e. 2**-11 (fp16) or 2**-8 (bf16) relative.
    # Allow two ulps relative to each tensor's largest value.
    ulp = torch.finfo(dtype).eps
    for name, a, r in (("output", ours[0], ref[0]), ("grad_input", ours[3], ref[3])):
        err = (a.double() - r).abs().max().item()
        assert err <= 2 * ulp * r.abs().max().item(), f"{name}: error {err}"
    # Running stats and parameter gradients are float32 sums: far tighter than the output.
    torch.testing.assert_close(ours[1].double(), ref[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[2].double(), ref[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[4].double(), ref[4], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours[5].double(), ref[5], rtol=1e-4, atol=1e-4)


def test_large_mean_float32_survives():
    """Data of mean 1e4 and std 1: the naive E[x^2] - E[x]^2 fails, our statistics do not."""
    x, w, b, rm, rv, dy = _inputs((8, 4, 6, 6), loc=1e4, spread=1.0, seed=4)
    ours = _run(triton_bn.batch_norm, x, w, b, rm, rv, dy, True, path="split", max_tile=16)
    ref = _run(F.batch_norm, x.double(), w.double(), b.double(), rm.double(), rv.double(),
               dy.double(), True)
    # x - mean in float32 carries at most half an ulp of 1e4 (~5e-4) against a std of 1.
    torch.testing.assert_close(ours[0].double(), ref[0], rtol=0, atol=2e-3)
    torch.testing.assert_close(ours[2].double(), ref[2], rtol=1e-3, atol=0)  # running var
    torch.testing.assert_close(ours[3].double(), ref[3], rtol=0, atol=2e-3)
    # The test can tell: the one-pass formula in float32 is off by far more than our error.
    xf = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
    naive = (xf * xf).mean(1) - xf.mean(1) ** 2  # (C,)
    exact = x.double().transpose(0, 1).reshape(x.shape[1], -1).var(1, unbiased=False)  # (C,)
    ours_var = (ours[2] - 0.9 * rv) / 0.1 * (xf.shape[1] - 1) / xf.shape[1]  # batch var back
    assert (naive.double() - exact).abs().max() > 100 * (ours_var.double() - exact).abs().max()


def test_bad_input_raises_naming_the_argument():
    """The shared validation's errors (tests/test_validation_parity.py compares every backend)."""
    x = torch.randn(4, 3, 5, device=DEVICE)
    c3 = torch.ones(3, device=DEVICE)
    with pytest.raises(BatchNormArgumentError, match="input"):
        triton_bn.batch_norm(torch.randn(5, device=DEVICE), None, None, training=True)
    with pytest.raises(BatchNormArgumentError, match="input must have dtype float16, bfloat16"):
        triton_bn.batch_norm(x.double(), c3.double(), c3.double())
    with pytest.raises(BatchNormArgumentError, match="weight should contain 3 elements"):
        triton_bn.batch_norm(x, c3, c3, weight=torch.ones(4, device=DEVICE))
    with pytest.raises(BatchNormArgumentError, match="running_mean"):
        triton_bn.batch_norm(x, torch.ones(2, device=DEVICE), c3)
    with pytest.raises(BatchNormArgumentError, match="running_mean"):
        triton_bn.batch_norm(x, None, None, training=False)
    with pytest.raises(BatchNormArgumentError, match="more than 1 value per channel"):
        triton_bn.batch_norm(torch.randn(1, 3, 1, device=DEVICE), c3, c3, training=True)
    with pytest.raises(BatchNormArgumentError, match="eps must be positive during training"):
        triton_bn.batch_norm(x, c3, c3, training=True, eps=0.0)  # accepted before the shared check
    with pytest.raises(ValueError, match="path"):
        triton_bn.batch_norm(x, c3, c3, path="fast")
    with pytest.raises(ValueError, match="max_tile"):
        triton_bn.batch_norm(x, c3, c3, max_tile=3)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (0, 3)])
def test_empty_input_matches_torch(shape):
    """Empty batches: an empty output, running statistics untouched, zero parameter gradients."""
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    w = torch.randn(3, device=DEVICE, requires_grad=True)
    b = torch.randn(3, device=DEVICE, requires_grad=True)
    rm, rv = torch.randn(3, device=DEVICE), torch.rand(3, device=DEVICE) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    y = triton_bn.batch_norm(x, rm, rv, w, b, True)
    gx, gw, gb = torch.autograd.grad(y.sum(), (x, w, b))
    ref_y = F.batch_norm(x, rm0.clone(), rv0.clone(), w, b, True)
    ref = torch.autograd.grad(ref_y.sum(), (x, w, b))
    assert y.shape == ref_y.shape == x.shape
    torch.testing.assert_close(rm, rm0, rtol=0, atol=0)
    torch.testing.assert_close(rv, rv0, rtol=0, atol=0)
    for a, r in zip((gx, gw, gb), ref, strict=True):
        assert torch.equal(a, r)
    assert torch.equal(gw, torch.zeros(3, device=DEVICE))


def _small(requires_grad=True):
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(4, 3, 5, generator=gen) * 2 + 1).to(DEVICE).requires_grad_(requires_grad)
    w = (torch.rand(3, generator=gen) + 0.5).to(DEVICE).requires_grad_(requires_grad)
    v = torch.randn(4, 3, 5, generator=gen).to(DEVICE)  # a fixed upstream weighting
    return x, w, v


def _bn(x, w):
    return triton_bn.batch_norm(x, None, None, w, None, True, max_tile=8)


def test_create_graph_first_order_still_matches_torch():
    """create_graph=True is legal: the first-order gradients are the kernel's, exactly used."""
    x, w, v = _small()
    gx, gw = torch.autograd.grad((_bn(x, w) * v).sum(), (x, w), create_graph=True)
    rx, rw = torch.autograd.grad((F.batch_norm(x, None, None, w, None, True) * v).sum(), (x, w))
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-5)
    assert gx.requires_grad  # tied to x, so that a second differentiation reaches the refusal


@pytest.mark.parametrize("upstream", ["constant", "depends_on_x"])
def test_double_backward_is_refused_not_zero(upstream):
    """Grad of grad raises, whether or not the upstream gradient itself requires grad.

    torch's once_differentiable only wraps the gradients when the *upstream gradient* requires
    grad: with a constant upstream (loss = sum(y * v)) it would hand back gradients with no
    graph, and a Hessian through BN would come out silently 0. The kernels' own wrapper ties the
    gradients to x and weight too.
    """
    x, w, v = _small()
    y = _bn(x, w)
    loss = (y * v).sum() if upstream == "constant" else (y * y * v).sum()
    gx, = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="first-order backward only.*bnbook.functional"):
        torch.autograd.grad((gx * gx).sum(), (x, w))


def test_hessian_raises_instead_of_returning_zero():
    x, w, v = _small(requires_grad=False)
    # The true Hessian is not zero (torch's own BN, same function):
    h = torch.autograd.functional.hessian(
        lambda t: (F.batch_norm(t, None, None, w, None, True) * v).sum(), x)
    assert h.abs().max() > 1e-3
    with pytest.raises(RuntimeError, match="first-order backward only"):
        torch.autograd.functional.hessian(lambda t: (_bn(t, w) * v).sum(), x)


def test_forward_mode_ad_is_refused():
    import torch.autograd.forward_ad as fwad

    x, w, _ = _small(requires_grad=False)
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(lambda t: _bn(t, w), (x,), (torch.ones_like(x),))
    with fwad.dual_level(), pytest.raises(NotImplementedError, match="forward-mode AD"):
        _bn(fwad.make_dual(x, torch.ones_like(x)), w)


def test_vmap_and_batched_gradients_are_refused():
    x, w, _ = _small(requires_grad=False)
    with pytest.raises(NotImplementedError, match="vmap"):
        torch.func.vmap(lambda t: _bn(t, w))(x.unsqueeze(0).repeat(2, 1, 1, 1))
    with pytest.raises(NotImplementedError, match="torch.func transforms"):
        torch.func.grad(lambda t: (_bn(t, w) ** 2).sum())(x)
    xg = x.clone().requires_grad_()
    y = _bn(xg, w)
    with pytest.raises(NotImplementedError, match="is_grads_batched"):
        torch.autograd.grad(y, xg, torch.randn(2, *y.shape, device=DEVICE),
                            is_grads_batched=True)


def test_import_and_use_leave_the_environment_unchanged():
    """No TRITON_INTERPRET, no TRITON_DEFAULT_FP_FUSION: not after import, not after a launch."""
    script = textwrap.dedent("""
        import json, os, warnings
        warnings.simplefilter("error")  # triton's FP-fusion default warning would fail here
        before = dict(os.environ)
        import bnbook, bnbook.kernels
        after_package = dict(os.environ)
        from bnbook.kernels import triton_bn
        import torch
        y = triton_bn.batch_norm(torch.randn(3, 2, 4), None, None, training=True)
        print(json.dumps(dict(package=after_package == before, module=dict(os.environ) == before,
                              interpret=triton_bn.INTERPRET, finite=bool(y.isfinite().all()))))
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == dict(package=True, module=True, interpret=not torch.cuda.is_available(),
                          finite=True)


def test_kernels_compile_for_sm90_with_the_real_compiler():
    """The interpreter checks the arithmetic; this checks the kernels lower to an sm_90 cubin.

    triton's own compiler and bundled ptxas need no GPU. It must run in a process where the
    interpreter is off, since under TRITON_INTERPRET=1 the kernels are not compilable objects.
    """
    script = textwrap.dedent("""
        from bnbook.kernels import triton_bn
        sizes = triton_bn.compile_for_gpu("bf16", arch=90, block_b=1, block_c=64, block_s=64)
        assert set(sizes) == set(triton_bn._KERNELS) and min(sizes.values()) > 0, sizes
        print(sizes)
    """)
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0 and "ptxas" in out.stderr and "not found" in out.stderr.lower():
        pytest.skip("triton's bundled ptxas is missing")
    assert out.returncode == 0, out.stderr[-3000:]
