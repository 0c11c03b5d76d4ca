"""The CPU benchmark's measuring machinery (benchmarks/cpu_batchnorm.py), without timing anything
that matters: the order of calls, the pairing of ratios, and what the results file keeps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_batchnorm.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cpu_batchnorm", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_round_calls_every_contender_once_in_a_shuffled_order(bench) -> None:
    calls: list[str] = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timed = bench.interleaved(contenders, repeats=30, warmup=2)
    warm, rounds = calls[:6], calls[6:]
    assert warm == list("abcabc")  # warm-up: in the given order, untimed
    orders = [tuple(rounds[i:i + 3]) for i in range(0, len(rounds), 3)]
    assert len(orders) == 30 and all(sorted(o) == ["a", "b", "c"] for o in orders)
    assert len(set(orders)) > 1  # not one fixed order
    assert {o[0] for o in orders} == {"a", "b", "c"}  # each contender sometimes runs first
    for t in timed.values():
        assert t["repeats"] == 30 and len(t["times_s"]) == 30
        assert t["p10_s"] <= t["median_s"] <= t["p90_s"]


def test_paired_ratio_is_the_median_of_per_round_ratios(bench) -> None:
    """Round by round: 2/1, 4/1, 9/3 -> median 3; the ratio of the medians would say 4."""
    timed = {"a": {"times_s": [2.0, 4.0, 9.0]}, "b": {"times_s": [1.0, 1.0, 3.0]}}
    got = bench.paired_ratio(timed, "a", "b")
    assert got["median"] == 3.0
    assert np.median(timed["a"]["times_s"]) / np.median(timed["b"]["times_s"]) == 4.0
    assert got["p10"] == pytest.approx(np.percentile([2.0, 4.0, 3.0], 10))
    assert got["p90"] == pytest.approx(np.percentile([2.0, 4.0, 3.0], 90))


def test_results_keep_no_per_call_times_and_rows_without_a_target_print(bench) -> None:
    timed = {"x": {"median_s": 1e-3, "p10_s": 1e-3, "p90_s": 2e-3, "times_s": [1e-3]}}
    kept = bench._without_times(timed)
    assert kept == {"x": {"median_s": 1e-3, "p10_s": 1e-3, "p90_s": 2e-3}}
    assert "times_s" in timed["x"]  # the caller's dict is left as it was
    results = {
        "machine": {"cpu_model": "cpu", "logical_cores": 2, "torch_threads": 1,
                    "torch": "t", "numpy": "n"},
        "rows": [{"name": "row", "contenders": kept, "ratio": 2.5, "ratio_definition": "x / y",
                  "target": None, "target_met": None}],
    }
    table = bench.markdown(results)
    assert "| row | x | 1.00 | 1.00 | 2.00 | 2.50 (x / y) | - | - |" in table


def test_prepare_runs_untimed_right_before_each_call_of_its_contender(bench, monkeypatch) -> None:
    """A fake clock that only the contenders advance: whatever prepare does is not timed."""
    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    calls: list[str] = []

    def call(name: str, cost: float):
        def run() -> None:
            calls.append(name)
            now[0] += cost
        return run

    timed = bench.interleaved(
        {"cold": call("cold", 1e-3), "warm": call("warm", 2e-3)},
        repeats=8,
        warmup=1,
        prepare={"cold": call("flush", 5.0)},
    )
    # Every call of "cold", warm-up included, comes right after its own preparation.
    assert calls.count("flush") == calls.count("cold") == 9
    assert all(calls[i - 1] == "flush" for i, c in enumerate(calls) if c == "cold")
    assert "flush" not in [calls[i - 1] for i, c in enumerate(calls) if c == "warm" and i]
    assert timed["cold"]["times_s"] == pytest.approx([1e-3] * 8)
    assert timed["warm"]["times_s"] == pytest.approx([2e-3] * 8)
    assert bench.paired_ratio(timed, "cold", "warm")["median"] == pytest.approx(0.5)


def test_the_memory_row_times_one_pass_from_cache_and_from_memory(bench, monkeypatch) -> None:
    """Its shape, with a small flush buffer and few rounds (the real figures are make bench's)."""
    monkeypatch.setattr(bench, "FLUSH_BYTES", 2**20)
    row = bench.memory_row(repeats=3, warmup=1)
    assert set(row["contenders"]) == {"from cache", "from memory"}
    assert row["flush_bytes"] == 2**20 and row["target"] is None
    assert row["ratio_definition"].startswith("from memory / from cache")
    low, high = row["ratio_p10_p90"]
    assert low <= row["ratio"] <= high
    assert all(t["repeats"] == 3 and "times_s" not in t for t in row["contenders"].values())
