"""The CUDA C++ kernels without a GPU: they compile, their source keeps its promises, and a CPU
model of their statistics is accurate where the shifted one-pass formula they used to use is not.

- nvcc compiles the .cu for sm_90 with warnings as errors; g++ compiles the torch binding.
- Every launch's grid goes through grid_2d() (capped at the hardware's 65,535 in y) and every
  kernel loops grid-stride, so a large N*H*W cannot exceed the grid.
- The statistics are per-tile two-pass moments merged with Chan's rule (a NumPy model of the
  exact per-thread order is checked against float64).
- The binding makes the input's device current (OptionalCUDAGuard) and uses its stream.
- ``bnbook.kernels.cuda`` imports and validates without triton.
On a GPU machine the last tests build the extension and compare it with torch.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnbook.kernels import cuda
from bnbook.kernels.layout import Geometry

CU = cuda.CSRC / "batch_norm.cu"
BINDING = cuda.CSRC / "batch_norm_binding.cpp"
CU_TEXT = CU.read_text()
BINDING_TEXT = BINDING.read_text()


def _constant(name: str) -> int:
    return int(re.search(rf"constexpr int(?:64_t)? {name} = (\d+);", CU_TEXT).group(1))


def _kernels() -> dict[str, str]:
    """Every __global__ function of the .cu -> its source text up to the next one."""
    starts = [m.start() for m in re.finditer(r"(?:template <typename T>\n)?__global__", CU_TEXT)]
    bodies = [CU_TEXT[a:b] for a, b in zip(starts, [*starts[1:], CU_TEXT.index("int64_t cdiv")],
                                            strict=True)]
    return {re.search(r"__global__ void (\w+)\(", body).group(1): body for body in bodies}


def test_sources_ship_in_the_package():
    assert CU.is_file() and BINDING.is_file()
    assert "#include <torch" not in CU_TEXT, "the .cu must compile without torch headers"


# ---- the grid ---------------------------------------------------------------------------------


def test_every_launch_uses_a_capped_grid():
    """No grid dimension is computed from N*H*W without a cap: all go through grid_2d()."""
    launches = re.findall(r"<<<\s*([^,]+),", CU_TEXT)
    assert len(launches) == 10, launches  # forward 4 and backward 4 (+2 per layout choice)
    for grid in launches:
        assert re.fullmatch(r"\w+", grid), f"launch with an inline grid expression: {grid}"
        assigned = re.findall(rf"const dim3 {grid} = (\w+)\(", CU_TEXT)
        assert assigned and set(assigned) == {"grid_2d"}, grid
    body = CU_TEXT[CU_TEXT.index("dim3 grid_2d("):]
    body = body[:body.index("\n}\n")]
    assert "kMaxGridYZ" in body and "kMaxGridX" in body
    assert _constant("kMaxGridYZ") == 65535 and _constant("kMaxGridX") == 2**31 - 1
    assert "dim3(" not in CU_TEXT.replace("dim3(kLanesC, kRowsC)", "").replace(
        "return dim3(static_cast", ""), "a dim3 grid built outside grid_2d"


def test_every_kernel_loops_grid_stride():
    """Each kernel covers its whole range whatever grid it gets (the cap may shrink the grid)."""
    kernels = _kernels()
    assert len(kernels) == 10, sorted(kernels)
    for name, body in kernels.items():
        assert re.search(r"\+= \(?(?:int64_t\)?)?\s*gridDim\.[xy]|\+= gridDim\.[xy]", body), name


def test_host_split_count_is_capped():
    """The Python side never asks for more splits than a grid's y dimension can hold."""
    huge_s_inner = Geometry(B=2**20, C=1, S=2**16, sb=2**16, sc=2**16, ss=1)
    huge_c_inner = Geometry(B=1, C=3, S=2**40, sb=0, sc=1, ss=3)
    for g in (huge_s_inner, huge_c_inner):
        assert 1 <= cuda.n_splits(g, n_sm=10**6) <= 65535
    assert cuda.n_splits(Geometry(2, 512, 49, 512 * 49, 49, 1), n_sm=132) == 1  # little work
    assert cuda.MAX_SPLITS == 65535


# ---- the statistics ---------------------------------------------------------------------------


def test_variance_is_two_pass_per_tile_not_shifted_one_pass():
    assert "from_shifted" not in CU_TEXT and "shift" not in CU_TEXT.split("namespace {")[1]
    tile = CU_TEXT[CU_TEXT.index("Moments tile_moments("):]
    tile = tile[:tile.index("\n}\n")]
    # pass 1: the tile's mean; pass 2: squared deviations from it (registers, not memory)
    assert "sum / static_cast<float>(count)" in tile and "v[k] - mean" in tile and "d * d" in tile
    kernels = _kernels()
    for name in ("stats_s_inner", "stats_c_inner"):
        assert "chan_merge(m, tile_moments(v, count))" in kernels[name], name
    assert "chan_merge(m, Moments{part_n" in kernels["finalize_forward"]


def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """chan_merge of the .cu, elementwise on float32 arrays (empty sides pass the other)."""
    n = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_b = np.where(n > 0, n_b / np.where(n > 0, n, 1), 0).astype(np.float32)
    delta = mean_b - mean_a
    mean = np.where(n_a == 0, mean_b, np.where(n_b == 0, mean_a, mean_a + delta * frac_b))
    m2 = np.where(n_a == 0, m2_b, np.where(n_b == 0, m2_a, m2_a + m2_b + delta * delta * n_a
                                             * frac_b))
    return n.astype(np.float32), mean.astype(np.float32), m2.astype(np.float32)


def _kernel_model_s_inner(values: np.ndarray, n_splits: int) -> tuple[float, float]:
    """(mean, biased variance) of one channel as stats_s_inner + finalize_forward compute them.

    Same order as the .cu, in float32: split k owns a contiguous slice; thread t of 256 takes
    the slice's elements t, t + 256, ...; every kTile of them form a tile (two-pass moments),
    merged in order into the thread's moments; threads merge in a tree (half = 128, 64, ...),
    and the finalize kernel merges the splits in order.
    """
    threads, tile = _constant("kThreads"), _constant("kTile")
    x = values.astype(np.float32)
    per = -(-x.size // n_splits)
    total = (np.float32(0), np.float32(0), np.float32(0))
    for k in range(n_splits):
        part = x[k * per:(k + 1) * per]
        steps = -(-part.size // (threads * tile)) * tile
        grid = np.full(steps * threads, np.nan, dtype=np.float32)
        grid[:part.size] = part
        grid = grid.reshape(steps // tile, tile, threads)  # (tiles, kTile, threads)
        n = np.zeros(threads, np.float32)
        mean = np.zeros(threads, np.float32)
        m2 = np.zeros(threads, np.float32)
        for v in grid:  # one tile per thread, in order
            valid = ~np.isnan(v)
            count = valid.sum(0).astype(np.float32)
            s = np.where(valid, v, 0).sum(0, dtype=np.float32)
            t_mean = np.where(count > 0, s / np.maximum(count, 1), 0).astype(np.float32)
            d = np.where(valid, v - t_mean, 0).astype(np.float32)
            t_m2 = (d * d).sum(0, dtype=np.float32)
            n, mean, m2 = _chan(n, mean, m2, count, t_mean, t_m2)
        half = threads // 2
        while half:
            n, mean, m2 = _chan(n[:half], mean[:half], m2[:half], n[half:2 * half],
                                mean[half:2 * half], m2[half:2 * half])
            half //= 2
        total = _chan(*(np.float32(t) for t in total), n[0], mean[0], m2[0])
    return float(total[1]), float(total[2] / total[0])


def _shifted_one_pass_model(values: np.ndarray) -> float:
    """The formula the kernel had: per thread, sums of d = x - x[0]; M2 = sum(d^2) - sum(d)^2/n."""
    x = values.astype(np.float32).reshape(-1, 256)  # (elements per thread, threads)
    d = x - x[0, 0]
    n = np.float32(x.shape[0])
    sd, sdd = d.sum(0, dtype=np.float32), (d * d).sum(0, dtype=np.float32)
    m2 = np.maximum(sdd - sd * (sd / n), 0)
    n_all, mean_all, m2_all = np.float32(0), np.float32(0), np.float32(0)
    for t in range(256):
        n_all, mean_all, m2_all = _chan(n_all, mean_all, m2_all, n, x[0, 0] + sd[t] / n, m2[t])
    return float(m2_all / n_all)


@pytest.mark.parametrize("n_splits", [1, 3])
def test_kernel_statistics_model_is_accurate_where_the_shifted_formula_cancels(n_splits):
    """A channel whose first element lies far from the mean: the old shift cancels, tiles don't.

    One outlier of 3000 among 2**16 standard-normal values: the variance is ~138. With the shift
    K = x[0] = 3000, each thread's sum of (x - K)^2 is ~2.3e9, where float32's spacing is 256,
    for a thread M2 of ~3.5e4 that the subtraction must recover; the per-tile two-pass never
    forms a number larger than the spread of 8 values. Measured: tiles ~3e-7 relative error,
    shifted one-pass ~1e-2.
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2**16)
    x[0] = 3000.0
    exact_var = float(np.var(x))  # float64
    exact_mean = float(np.mean(x))
    mean, var = _kernel_model_s_inner(x, n_splits)
    assert abs(var - exact_var) / exact_var < 1e-5, (var, exact_var)
    assert abs(mean - exact_mean) < 1e-5
    shifted = _shifted_one_pass_model(x)
    assert abs(shifted - exact_var) / exact_var > 1e-3, "the test must tell the formulas apart"


@pytest.mark.parametrize("loc", [0.0, 1e4])
def test_kernel_statistics_model_large_mean(loc):
    """Data of std 1 around a mean of 0 or 1e4 (the case E[x^2] - E[x]^2 loses entirely)."""
    x = np.random.default_rng(1).standard_normal(3 * 2**12 + 17) + loc  # ragged: partial tiles
    mean, var = _kernel_model_s_inner(x, 2)
    # float32 x itself carries half an ulp of 1e4 (~5e-4): compare with the rounded data
    exact = np.var(x.astype(np.float32).astype(np.float64))
    assert abs(var - exact) / exact < 2e-5 and abs(mean - x.mean()) <= 1e-3 * max(1, loc / 1e4)


# ---- the binding ------------------------------------------------------------------------------


def test_binding_guards_the_device_and_uses_its_stream():
    assert "#include <c10/cuda/CUDAGuard.h>" in BINDING_TEXT
    for fn in ("void forward(", "void backward("):
        body = BINDING_TEXT[BINDING_TEXT.index(fn):]
        body = body[:body.index("\n}\n")]
        guard = body.find("const c10::cuda::OptionalCUDAGuard guard(x.device());")
        launch = body.find("bnbook_bn_")
        assert 0 <= guard < launch, f"{fn}: the guard must be made before the launch"
        assert "current_stream()" in body and "x.is_cuda()" in BINDING_TEXT
    assert "c10::cuda::getCurrentCUDAStream()" in BINDING_TEXT


# ---- compiling --------------------------------------------------------------------------------


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


def _cuda_include() -> Path | None:
    nvcc = shutil.which("nvcc")
    candidates = [Path("/usr/local/cuda/include")]
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.insert(0, real.parent.parent / "include")
        text = real.read_text(errors="ignore") if real.stat().st_size < 4096 else ""
        candidates += [Path(p).parent.parent / "include" for p in re.findall(r"(/\S+/nvcc)", text)]
    return next((p for p in candidates if (p / "cuda_runtime_api.h").is_file()), None)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_binding_compiles_against_torch_headers():
    from torch.utils.cpp_extension import include_paths

    cuda_include = _cuda_include()
    if cuda_include is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime_api.h) for the device guard")
    # A CPU build of torch ships c10/cuda's headers but not the generated cuda_cmake_macros.h
    # (it only sets Windows export macros); the define skips that one include.
    flags = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}",
                                                   f"-I{cuda_include}",
                                                   "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"]
    out = subprocess.run(["g++", "-std=c++20", "-fsyntax-only", *flags,
                          "-DTORCH_EXTENSION_NAME=bnbook_bn_cuda", str(BINDING)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


# ---- the Python side --------------------------------------------------------------------------


def test_cuda_backend_imports_and_validates_without_triton():
    """With triton unimportable, the CUDA backend imports, validates, and names the device."""
    script = textwrap.dedent("""
        import json, sys
        sys.modules["triton"] = None  # any `import triton` now raises ImportError
        import torch
        from bnbook.kernels import cuda
        from bnbook.validation import BatchNormArgumentError
        errors = []
        for args, kw in (((torch.randn(4, 3), torch.zeros(2), torch.ones(3)), {}),
                         ((torch.randn(4, 3), torch.zeros(3), torch.ones(3)),
                          dict(training=True, eps=0.0)),
                         ((torch.randn(4, 3), torch.zeros(3), torch.ones(3)),
                          dict(training=True))):
            try:
                cuda.batch_norm_cuda(*args, **kw)
                errors.append(None)
            except BatchNormArgumentError as e:
                errors.append(str(e))
        print(json.dumps(dict(errors=errors, triton=sys.modules["triton"] is None)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["triton"]
    size, eps, device = result["errors"]
    assert size.startswith("running_mean should contain 3 elements")
    assert eps.startswith("batch_norm eps must be positive during training")
    if not torch.cuda.is_available():
        assert "needs a CUDA device (this machine has none): input is on cpu" in device


def test_no_cuda_gives_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        cuda.batch_norm_cuda(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        cuda.load()


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_kernels_beyond_65535_blocks_and_far_first_element():
    """channels_last with N*H*W = 2**22 rows (a y grid of 2**16 row chunks before the cap), and
    a first element 300 away from a unit-spread channel."""
    x = torch.randn(64, 8, 256, 256, device="cuda").contiguous(memory_format=torch.channels_last)
    x[0, :, 0, 0] = 300.0
    rm, rv = torch.zeros(8, device="cuda"), torch.ones(8, device="cuda")
    y = cuda.batch_norm_cuda(x, rm, rv, None, None, True, 1.0, 1e-5)
    ref = F.batch_norm(x.double(), None, None, None, None, True, 0.0, 1e-5)
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(rv.double(), x.double().transpose(0, 1).reshape(8, -1).var(1),
                               rtol=1e-5, atol=0)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
