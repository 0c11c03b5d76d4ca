"""GPU benchmark: bnbook's Triton and CUDA C++ BatchNorm against PyTorch (cuDNN and native).

One command on a machine with a CUDA GPU:

    python benchmarks/gpu_batchnorm.py            # the full sweep (a few minutes)
    python benchmarks/gpu_batchnorm.py --quick    # a short smoke run

For each shape, dtype and pass (forward-train with the running-statistics update, backward,
forward-eval) it times, in one run: bnbook Triton, bnbook CUDA (if it builds), PyTorch default
(cuDNN) and PyTorch with torch.backends.cudnn.enabled=False. Median of many repeats timed with
CUDA events after warm-up, with a 256 MB buffer written between repeats to flush L2. It also
measures copy bandwidth (tensor.copy_) as the roofline. Each row reports the median time, the
effective GB/s on the minimum bytes, the fraction of copy bandwidth and the speed-up over
default PyTorch. Results go to benchmarks/results/gpu_<device>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"

# (name, shape, channels_last)
SHAPES: list[tuple[str, tuple[int, ...], bool]] = [
    ("NCHW 256x256x14x14", (256, 256, 14, 14), False),
    ("NCHW 64x64x56x56", (64, 64, 56, 56), False),
    ("NCHW 32x512x7x7", (32, 512, 7, 7), False),
    ("NHWC 256x256x14x14", (256, 256, 14, 14), True),
    ("2D 65536x1024", (65536, 1024), False),
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PASSES = ("forward_train", "backward", "forward_eval")


def min_bytes(numel: int, itemsize: int, pass_name: str, channel_on_chip: bool) -> int:
    """The fewest bytes a pass must move between DRAM and the chip.

    Args:
        numel: elements of the input, E.
        itemsize: bytes per element, s.
        pass_name: "forward_train", "backward" or "forward_eval".
        channel_on_chip: whether a channel's data stays on chip between the statistics and
            the normalise passes (then the forward reads x once).

    Returns:
        Forward-eval 2Es (read x, write y); forward-train 2Es if a channel stays on chip else
        3Es (x read twice); backward 3Es (read x and dy, write dx; the per-channel sums are
        negligible).
    """
    e_s = numel * itemsize
    if pass_name == "forward_eval":
        return 2 * e_s
    if pass_name == "forward_train":
        return (2 if channel_on_chip else 3) * e_s
    return 3 * e_s


class Timer:
    """Median of CUDA-event times, with L2 flushed by writing a 256 MB buffer before each rep."""

    def __init__(self, warmup: int, reps: int) -> None:
        self.warmup, self.reps = warmup, reps
        self.flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")

    def __call__(self, fn: Callable[[], Any], setup: Callable[[], Any] | None = None) -> float:
        """Median microseconds of ``fn()``; ``setup()`` runs untimed before each call."""
        for _ in range(self.warmup):
            if setup is not None:
                setup()
            fn()
        times = []
        for _ in range(self.reps):
            if setup is not None:
                setup()
            self.flush.zero_()  # evict the inputs from L2: a cold read, as in a real network
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        return statistics.median(times)


def copy_bandwidth(timer: Timer) -> float:
    """GB/s of ``dst.copy_(src)`` on 1 GiB buffers (read + write counted)."""
    src = torch.empty(2**30, dtype=torch.int8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    us = timer(lambda: dst.copy_(src))
    return 2 * src.numel() / (us * 1e-6) / 1e9


def implementations(with_cuda: bool) -> dict[str, Callable[..., torch.Tensor]]:
    """name -> a function with the signature of F.batch_norm."""
    from bnbook.kernels import triton_bn

    impls: dict[str, Callable[..., torch.Tensor]] = {"bnbook_triton": triton_bn.batch_norm}
    if with_cuda:
        from bnbook.kernels import cuda

        impls["bnbook_cuda"] = cuda.batch_norm_cuda
    impls["torch_cudnn"] = F.batch_norm

    def no_cudnn(*args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.backends.cudnn.flags(enabled=False):
            return F.batch_norm(*args, **kwargs)

    impls["torch_native"] = no_cudnn
    return impls


def bench_case(
    timer: Timer, impl: Callable[..., torch.Tensor], shape: tuple[int, ...],
    channels_last: bool, dtype: torch.dtype,
) -> dict[str, float]:
    """Median µs of the three passes of one implementation on one case."""
    c = shape[1]
    x = torch.randn(shape, device="cuda", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.ones(c, device="cuda", requires_grad=True)
    b = torch.zeros(c, device="cuda", requires_grad=True)
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    dy = torch.randn_like(x)
    out: dict[str, float] = {}
    with torch.no_grad():
        out["forward_train"] = timer(lambda: impl(x, rm, rv, w, b, True, 0.1, 1e-5))
        out["forward_eval"] = timer(lambda: impl(x, rm, rv, w, b, False, 0.1, 1e-5))
    xg = x.detach().requires_grad_()
    state: dict[str, torch.Tensor] = {}

    def setup() -> None:
        xg.grad = w.grad = b.grad = None
        state["y"] = impl(xg, rm, rv, w, b, True, 0.1, 1e-5)

    out["backward"] = timer(lambda: state["y"].backward(dy), setup)
    return out


def channel_on_chip(shape: tuple[int, ...], channels_last: bool, dtype: torch.dtype) -> bool:
    """Whether bnbook's Triton forward takes its fused path (a channel re-read from L2)."""
    from bnbook.kernels import triton_bn

    x = torch.empty(shape, device="cuda", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = triton_bn.geometry(x)
    assert g is not None
    return triton_bn.make_plan(g, x.element_size(), device=x.device).fused


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write the JSON. Returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run: 2 shapes, 5 reps")
    parser.add_argument("--no-cuda-ext", action="store_true", help="skip the CUDA C++ build")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA device: this benchmark needs a GPU. On a GPU machine run\n"
              "    python benchmarks/gpu_batchnorm.py [--quick]", file=sys.stderr)
        return 2
    import triton

    with_cuda = not args.no_cuda_ext
    if with_cuda:
        try:
            from bnbook.kernels import cuda

            cuda.load()
        except Exception as exc:  # report and go on without it: the other rows still count
            print(f"bnbook CUDA extension did not build, skipping it: {exc}", file=sys.stderr)
            with_cuda = False
    timer = Timer(warmup=3 if args.quick else 10, reps=5 if args.quick else 50)
    copy_gbs = copy_bandwidth(timer)
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s")
    impls = implementations(with_cuda)
    shapes = SHAPES[2:4] if args.quick else SHAPES
    rows = []
    for name, shape, cl in shapes:
        numel = 1
        for n in shape:
            numel *= n
        for dname, dtype in DTYPES.items():
            on_chip = channel_on_chip(shape, cl, dtype)
            times = {k: bench_case(timer, f, shape, cl, dtype) for k, f in impls.items()}
            for pass_name in PASSES:
                nbytes = min_bytes(numel, torch.finfo(dtype).bits // 8, pass_name, on_chip)
                base = times["torch_cudnn"][pass_name]
                for impl_name, t in times.items():
                    us = t[pass_name]
                    gbs = nbytes / (us * 1e-6) / 1e9
                    rows.append(dict(shape=name, dims=list(shape), channels_last=cl, dtype=dname,
                                     pass_=pass_name, impl=impl_name, median_us=round(us, 2),
                                     min_bytes=nbytes, gb_per_s=round(gbs, 1),
                                     fraction_of_copy=round(gbs / copy_gbs, 3),
                                     speedup_vs_torch=round(base / us, 3)))
                    print(f"{name:20s} {dname:8s} {pass_name:13s} {impl_name:13s} "
                          f"{us:9.1f} us {gbs:7.0f} GB/s {gbs / copy_gbs:6.1%} "
                          f"x{base / us:5.2f}")
    for r in rows:
        r["pass"] = r.pop("pass_")
    device = torch.cuda.get_device_name()
    result = dict(device=device, torch=torch.__version__, triton=triton.__version__,
                  cuda=torch.version.cuda, date=dt.datetime.now(dt.UTC).isoformat(),
                  quick=args.quick, copy_gb_per_s=round(copy_gbs, 1), results=rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_")
    path = RESULTS / f"gpu_{slug}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
