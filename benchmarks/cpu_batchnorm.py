"""CPU benchmarks of bnbook's batch norm, recorded in benchmarks/results/cpu.json.

Run from the repository root::

    .venv/bin/python benchmarks/cpu_batchnorm.py [--threads 1] [--repeats 100] [--skip-book]

What is measured, each contender side by side in ONE process:

1. ``bnbook.functional.batch_norm`` forward + backward against torch's native kernel
   (``torch.nn.functional.batch_norm``), float32, on (64, 64, 28, 28) and on (4096, 256), and
   on (32, 256), where the passes over memory cost almost nothing and the ratio is that of the
   costs per call (no target).
   Reported ratio: ours / native, taken round by round (below); target <= 1.5. A third
   contender, "passes", runs only the full-size tensor operations of ours (the nine passes over
   memory of its training forward and backward), without argument checks, autograd or
   per-channel arithmetic: the least that composing torch ops costs for this algorithm,
   recorded as ``passes_ratio``. A fourth, "passes in a Function", runs the same passes as the
   forward and backward of the thinnest ``torch.autograd.Function`` (``function_ratio``): what
   autograd adds to any layer written in Python, before a single check or per-channel
   operation.
2. One of those passes, the mean of a (4096, 256) float32 tensor, timed with the tensor in the
   cache (the same pass ran just before) and with it in memory only (a buffer larger than the
   last-level cache was read through just before). Reported ratio: from memory / from
   cache, what the trip to memory adds to a pass (no target).
3. The NumPy reference's compact backward against its staged (node-by-node) backward.
   Reported ratio: staged / compact; expected between 7/6 and 8/5, the range the backprop
   chapter derives from the two versions' counts of allocations and of arrays read and
   written.
4. The book: a clean build (``python -m bnbook.bookexec``, then ``jupyter-book build``, as
   ``make book`` runs them) of a copy of the repository in a temporary folder,
   then a rebuild with nothing changed (served from the execution cache). Wall seconds.

Machine noise (other processes, frequency changes) hits the contenders alike because their
calls are interleaved: in each round every contender runs once, in an order shuffled round by
round (a fixed order gives whoever runs after a given contender that contender's cache and
allocator state every time). Each contender's row reports the median and the 10th/90th
percentiles of its timed calls, taken after a warm-up; each ratio is the median, over rounds,
of the two contenders' times in that round (its 10th/90th percentiles are recorded too, and so
is the ratio of the two medians). The thread count is fixed and recorded.

Every row records the git commit it measured (and whether the work tree had uncommitted
changes) and the UTC date it was measured on, so a reader can tell which code a number
describes. With ``--skip-book`` the book row of the previous results file is kept as it was,
with its own commit and date (marked ``carried_over``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bnbook import functional as bnF
from bnbook import reference as ref

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cpu.json"
# Never copied into the book's build folder: environments, caches and earlier builds.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "_build", ".jupyter_cache", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".hypothesis", ".ipynb_checkpoints", "*.egg-info", ".whl", ".gl",
)


def interleaved(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    prepare: dict[str, Callable[[], object]] | None = None,
) -> dict[str, dict[str, float]]:
    """Time each contender ``repeats`` times, in rounds: one call of each per round.

    The order within a round is shuffled (seeded, so reproducible): a contender that always ran
    right after the same other one would inherit that one's state of the caches and of the
    allocator, a bias a fixed order A, B, A, B, ... never averages out (measured here: the same
    code ran 2-7% faster when it came later in a fixed round).

    Args:
        contenders: name -> a call to time.
        repeats: timed rounds (calls per contender).
        warmup: untimed calls per contender first (allocator, caches, lazy initialisation).
        prepare: name -> an untimed call made right before each call of that contender
            (warm-up calls included), to set up the state it is to be timed in.

    Returns:
        name -> {"median_s", "p10_s", "p90_s", "repeats", "page_faults_per_call", "times_s"}:
        page faults are the mean count of minor page faults (first touches of fresh memory by
        the process) per timed call, or None where the platform does not count them;
        ``times_s`` are the timed calls in round order, so that two contenders' calls of one
        round can be paired (:func:`paired_ratio`).
    """
    prepare = prepare or {}
    for _ in range(warmup):
        for name, fn in contenders.items():
            if name in prepare:
                prepare[name]()
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    faults: dict[str, int] = dict.fromkeys(contenders, 0)
    order = list(contenders.items())
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name, fn in order:
            if name in prepare:
                prepare[name]()
            before = _minor_faults()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            faults[name] += _minor_faults() - before
    counted = _minor_faults() >= 0
    return {
        name: {
            "median_s": float(np.median(t)),
            "p10_s": float(np.percentile(t, 10)),
            "p90_s": float(np.percentile(t, 90)),
            "repeats": repeats,
            "page_faults_per_call": faults[name] / repeats if counted else None,
            "times_s": [float(v) for v in t],
        }
        for name, t in times.items()
    }


def _without_times(timed: dict[str, dict]) -> dict[str, dict]:
    """``timed`` without the per-call times (kept out of the results file)."""
    return {name: {k: v for k, v in t.items() if k != "times_s"} for name, t in timed.items()}


def paired_ratio(timed: dict[str, dict], a: str, b: str) -> dict[str, float]:
    """a's time over b's, round by round: median and 10th/90th percentiles of the ratios.

    Two calls of one round ran moments apart, so a slow spell of the machine (another process,
    a frequency change) slows both and cancels in their ratio; the ratio of the two overall
    medians would mix calls from different spells.
    """
    ratios = np.asarray(timed[a]["times_s"]) / np.asarray(timed[b]["times_s"])
    return {
        "median": float(np.median(ratios)),
        "p10": float(np.percentile(ratios, 10)),
        "p90": float(np.percentile(ratios, 90)),
    }


def ratio_fields(timed: dict[str, dict], a: str, b: str) -> dict:
    """A row's contenders (without per-call times) and a's time over b's (:func:`paired_ratio`),
    as every timed row records them."""
    paired = paired_ratio(timed, a, b)
    return {
        "contenders": _without_times(timed),
        "ratio": paired["median"],
        "ratio_definition": f"{a} / {b} (median of per-round ratios)",
        "ratio_p10_p90": [paired["p10"], paired["p90"]],
        "ratio_of_medians": timed[a]["median_s"] / timed[b]["median_s"],
    }


def _minor_faults() -> int:
    """Minor page faults of this process so far (-1 where the platform does not count them)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return -1
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _fwd_bwd(
    fn: Callable[..., torch.Tensor], x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
    dy: torch.Tensor,
) -> Callable[[], object]:
    """One training step of ``fn`` (a batch_norm with F.batch_norm's signature): forward and
    the gradients of x, weight and bias."""
    running_mean, running_var = torch.zeros(x.shape[1]), torch.ones(x.shape[1])

    def run() -> object:
        y = fn(x, running_mean, running_var, w, b, True, 0.1, 1e-5)
        # autograd.grad, not backward(): no accumulation into .grad is timed.
        return torch.autograd.grad(y, (x, w, b), dy)

    return run


def _forward_passes(x: torch.Tensor, per_channel: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four full-size passes of ``bnbook.functional``'s training forward, by the same
    helpers: the mean, the centred squares, their mean (the variance) and the output, written
    into the squares' buffer. ``per_channel`` stands in for the scale and the shift."""
    dims = bnF._reduction_dims(x.ndim)
    mean = x.mean(dims, keepdim=True)
    squares = bnF._centred_squares(x, mean, torch.empty_like(x))
    var = squares.mean(dims, keepdim=True)
    return torch.addcmul(per_channel, x, per_channel, out=squares), mean, var


def _backward_passes(
    x: torch.Tensor, mean: torch.Tensor, dy: torch.Tensor, per_channel: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The five full-size passes of its backward: sum(dy), (x - mean) * dy and its sum, and dx
    as two fused multiply-adds into the product's buffer."""
    dims = bnF._reduction_dims(x.ndim)
    sum_dy = dy.sum(dims, keepdim=True)
    sum_dy_xc, buffer = bnF._sum_dy_centred(x, mean, dy, dims, fast=True)
    assert buffer is not None
    dx = torch.addcmul(per_channel, x, per_channel, value=-1, out=buffer)
    return dx.addcmul_(dy, per_channel), sum_dy_xc, sum_dy


def _stand_in(x: torch.Tensor) -> torch.Tensor:
    """Per-channel operands (scale, shift, k, c) for the passes-only contenders."""
    return torch.ones((1, x.shape[1]) + (1,) * (x.ndim - 2))


def _passes_only(x: torch.Tensor, dy: torch.Tensor) -> Callable[[], object]:
    """The nine full-size passes of the layer's training step, and nothing else."""
    x, per_channel = x.detach(), _stand_in(x)

    def run() -> object:
        y, mean, _ = _forward_passes(x, per_channel)
        return y, _backward_passes(x, mean, dy, per_channel)

    return run


class _PassesFunction(torch.autograd.Function):
    """The nine passes as the thinnest autograd.Function: no checks, no per-channel arithmetic,
    no running statistics; the gradients of weight and bias are the two sums, unscaled."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        per_channel = _stand_in(x)
        y, mean, _ = _forward_passes(x, per_channel)
        ctx.save_for_backward(x, mean, per_channel)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, mean, per_channel = ctx.saved_tensors
        dx, sum_dy_xc, sum_dy = _backward_passes(x, mean, dy, per_channel)
        return dx, sum_dy_xc.reshape(-1), sum_dy.reshape(-1)


def _passes_in_function(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dy: torch.Tensor
) -> Callable[[], object]:
    """The nine passes through autograd, called and differentiated as the layers are."""

    def run() -> object:
        return torch.autograd.grad(_PassesFunction.apply(x, w, b), (x, w, b), dy)

    return run


def torch_rows(repeats: int, warmup: int) -> list[dict]:
    """bnbook.functional vs native batch norm, forward + backward in training mode."""
    rows = []
    # The third shape is small enough for the passes to cost almost nothing: what remains is
    # the cost per call (Python, autograd, per-channel ops), which no size target applies to.
    for shape, target in [((64, 64, 28, 28), 1.5), ((4096, 256), 1.5), ((32, 256), None)]:
        g = torch.Generator().manual_seed(0)
        c = shape[1]
        x = torch.randn(shape, generator=g).requires_grad_()
        w = torch.rand(c, generator=g).add_(0.5).requires_grad_()
        b = torch.randn(c, generator=g).requires_grad_()
        dy = torch.randn(shape, generator=g)
        # Each contender updates its own running statistics, as a layer in training would.
        timed = interleaved(
            {
                "ours": _fwd_bwd(bnF.batch_norm, x, w, b, dy),
                "native": _fwd_bwd(F.batch_norm, x, w, b, dy),
                "passes": _passes_only(x, dy),
                "passes in a Function": _passes_in_function(x, w, b, dy),
            },
            repeats,
            warmup,
        )
        fields = ratio_fields(timed, "ours", "native")
        rows.append(
            {
                "name": f"functional fwd+bwd {tuple(shape)} float32",
                **fields,
                "passes_ratio": paired_ratio(timed, "passes", "native")["median"],
                "function_ratio": paired_ratio(timed, "passes in a Function", "native")["median"],
                "target": None if target is None else f"<= {target}",
                "target_met": None if target is None else fields["ratio"] <= target,
            }
        )
    return rows


# Read through before each timed call "from memory": more than the last-level cache a core
# can use on current CPUs (this machine's: 32 MiB), so that none of the timed tensor is left in it.
FLUSH_BYTES = 256 * 2**20


def memory_row(repeats: int, warmup: int) -> dict:
    """One full-size pass, timed with its tensor in the cache and with it in memory only.

    The pass is the layer's first, the per-channel mean of a (4096, 256) float32 input (4 MiB).
    "from cache": the same pass ran just before, so the tensor is in the cache. "from memory":
    a buffer larger than the last-level cache was read through just before (read, not written:
    no dirty lines left to write back during the timed call), so every byte comes from memory.
    The ratio says how much of a pass's time is the trip to memory, that is, how much a fused
    kernel, which makes fewer passes, saves per pass it does not make.
    """
    x = torch.randn((4096, 256), generator=torch.Generator().manual_seed(0))
    flush = torch.zeros(FLUSH_BYTES // 4)

    def one_pass() -> object:
        return x.mean(0)

    timed = interleaved(
        {"from cache": one_pass, "from memory": one_pass},
        repeats,
        warmup,
        prepare={"from cache": one_pass, "from memory": flush.sum},
    )
    return {
        "name": "one pass (4096, 256) float32: mean over the batch",
        **ratio_fields(timed, "from memory", "from cache"),
        "flush_bytes": FLUSH_BYTES,
        "target": None,
        "target_met": None,
    }


def numpy_row(repeats: int, warmup: int) -> dict:
    """The reference's staged backward vs its compact backward."""
    shape = (32, 64, 14, 14)
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    dy = rng.normal(size=shape)
    _, cache = ref.batch_norm_forward(x, rng.normal(size=64), rng.normal(size=64))
    timed = interleaved(
        {
            "compact": lambda: ref.batch_norm_backward(dy, cache),
            "staged": lambda: ref.batch_norm_backward_staged(dy, cache),
        },
        repeats,
        warmup,
    )
    fields = ratio_fields(timed, "staged", "compact")
    return {
        "name": f"numpy backward {shape} float64",
        **fields,
        "target": "7/6 to 8/5 (the backprop chapter's bound)",
        "target_met": 7 / 6 <= fields["ratio"] <= 8 / 5,
    }


def book_row(results: dict | None = None) -> dict:
    """A clean build of the book in a temporary copy of the repository, then a cached rebuild.

    ``results``, if given, replaces the copy's results file first: the book built is then the
    one that will show these results (the speed chapter reads them and checks them), not the
    one that showed the previous ones. A notebook that fails to execute makes the run not ok:
    bookexec exits with 1 and names it, and no build is timed after that (the build's own
    reports of a failed execution are caught too).
    """
    jb = Path(sys.executable).with_name("jupyter-book")
    timings: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bnbook-book-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)
        if results is not None:
            (copy / RESULTS.relative_to(ROOT)).write_text(json.dumps(results, indent=2) + "\n")
        for run in ("clean", "cached"):
            failures = []
            start = time.perf_counter()
            # What `make book` runs: the notebooks one per core into the cache, then the build.
            for command in ([sys.executable, "-m", "bnbook.bookexec", str(copy)],
                            [str(jb), "build", str(copy), "--keep-going"]):
                proc = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    # The copy's own package first: the chapters find the results file (and
                    # everything else) through bnbook's location, which would otherwise be
                    # the installed one, in the repository being measured.
                    env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(
                        [str(copy / "code"), *filter(None, [os.environ.get("PYTHONPATH")])])},
                    check=False,
                )
                failures += [line for line in (proc.stdout + proc.stderr).splitlines()
                             if " FAILED after " in line or "Executing notebook failed" in line
                             or "Execution Failed" in line]
                if proc.returncode != 0:
                    break
            timings[run] = {
                "wall_s": time.perf_counter() - start,
                "returncode": proc.returncode,
                "ok": proc.returncode == 0 and not failures
                and (copy / "_build" / "html" / "index.html").exists(),
            }
            if failures:
                timings[run]["notebook_failures"] = failures[:20]
            if proc.returncode != 0:
                timings[run]["stderr_tail"] = proc.stderr[-2000:]
    return {"name": "jupyter-book build (clean, then cached rebuild)", "book": timings}


def provenance() -> dict:
    """The code being measured: git commit, uncommitted changes, and the UTC date now."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                  text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def stamped(row: dict) -> dict:
    """``row`` with the commit, dirty flag and UTC date of this measurement added."""
    return {**row, **provenance()}


def previous_book_row(path: Path) -> dict | None:
    """The book row of an earlier results file, with its own commit and date, if any."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for row in old.get("rows", []):
        if "book" in row:
            return {
                **row,
                "commit": row.get("commit"),
                "date_utc": row.get("date_utc") or old.get("machine", {}).get("date_utc"),
                "carried_over": True,
            }
    return None


def machine_info() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def markdown(results: dict) -> str:
    lines = [
        f"CPU: {results['machine']['cpu_model']}, {results['machine']['logical_cores']} cores, "
        f"torch threads {results['machine']['torch_threads']}, torch "
        f"{results['machine']['torch']}, numpy {results['machine']['numpy']}",
        "",
        "| benchmark | contender | median ms | p10 ms | p90 ms | ratio | target | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in results["rows"]:
        if "book" in row:
            for run, t in row["book"].items():
                status = "ok" if t["ok"] else f"FAILED (rc {t['returncode']})"
                lines.append(
                    f"| {row['name']} | {run} | {t['wall_s'] * 1e3:.0f} | | | | | {status} |"
                )
            continue
        for i, (name, t) in enumerate(row["contenders"].items()):
            tail = (
                f"{row['ratio']:.2f} ({row['ratio_definition']}) | {row['target'] or '-'} | "
                f"{ {True: 'yes', False: 'NO', None: '-'}[row['target_met']]}"
                if i == 0
                else " | |"
            )
            lines.append(
                f"| {row['name'] if i == 0 else ''} | {name} | {t['median_s'] * 1e3:.2f} | "
                f"{t['p10_s'] * 1e3:.2f} | {t['p90_s'] * 1e3:.2f} | {tail} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per contender")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per contender")
    parser.add_argument("--skip-book", action="store_true", help="do not build the book")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write JSON")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [stamped(row) for row in torch_rows(args.repeats, args.warmup)]
    rows.append(stamped(memory_row(args.repeats, args.warmup)))
    rows.append(stamped(numpy_row(args.repeats, args.warmup)))
    output = args.output.resolve()
    shown = output.relative_to(ROOT) if output.is_relative_to(ROOT) else output
    kept = previous_book_row(args.output)
    results = {"machine": machine_info(), "provenance": provenance(),
               "settings": vars(args) | {"output": str(shown)},
               "rows": rows + ([kept] if kept is not None else [])}
    if not args.skip_book:
        # Built with the rows just measured in place of the old ones (the old build time
        # stays until this one is known).
        results["rows"] = [*rows, stamped(book_row(results))]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
