"""The CUDA C++ kernels compile: nvcc on the .cu (sm_90), g++ on the torch binding.

Running them needs a GPU: on a GPU machine the last test builds the extension with
torch.utils.cpp_extension and compares it with torch.nn.functional.batch_norm.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch
import torch.nn.functional as F

from bnbook.kernels import cuda

CU = cuda.CSRC / "batch_norm.cu"
BINDING = cuda.CSRC / "batch_norm_binding.cpp"


def test_sources_ship_in_the_package():
    assert CU.is_file() and BINDING.is_file()
    assert "#include <torch" not in CU.read_text(), "the .cu must compile without torch headers"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cu_compiles_for_sm90(tmp_path):
    out = subprocess.run(["nvcc", "-c", "-arch=sm_90", "-std=c++17", "-O3", "-Werror",
                          "all-warnings", str(CU), "-o", str(tmp_path / "batch_norm.o")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # Both entry points the binding declares are defined with C linkage.
    symbols = subprocess.run(["nm", str(tmp_path / "batch_norm.o")], capture_output=True,
                             text=True).stdout if shutil.which("nm") else ""
    if symbols:
        for name in ("bnbook_bn_forward", "bnbook_bn_backward", "bnbook_error_string"):
            assert f" T {name}" in symbols, name


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_binding_compiles_against_torch_headers():
    from torch.utils.cpp_extension import include_paths

    flags = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    out = subprocess.run(["g++", "-std=c++20", "-fsyntax-only", *flags,
                          "-DTORCH_EXTENSION_NAME=bnbook_bn_cuda", str(BINDING)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_no_cuda_gives_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        cuda.batch_norm_cuda(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_kernels_match_torch(channels_last):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 5, 9, 11, generator=gen) * 2 + 3).cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(5).cuda(), torch.randn(5).cuda()
    dy = torch.randn(x.shape, generator=gen).cuda()
    results = []
    for fn in (cuda.batch_norm_cuda, F.batch_norm):
        xi = x.clone().requires_grad_()
        wi, bi = w.clone().requires_grad_(), b.clone().requires_grad_()
        rm, rv = torch.zeros(5).cuda(), torch.ones(5).cuda()
        y = fn(xi, rm, rv, wi, bi, True, 0.1, 1e-5)
        y.backward(dy)
        results.append((y, rm, rv, xi.grad, wi.grad, bi.grad))
    for a, r in zip(*results, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
