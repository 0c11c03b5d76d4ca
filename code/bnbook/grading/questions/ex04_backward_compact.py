"""Questions of exercise 4, exercises/04_backward_compact.ipynb.

The compact backward pass and a fair speed comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bnbook.grading.backward import backward_question, nc_shape
from bnbook.grading.checks import Check, CheckFailed, Question, StudentCall, unpack


def _q_compact() -> Question:
    return backward_question("q1", "The compact backward", "bn_backward_compact", False,
                             [("dx on a random (N, C) batch", 2, nc_shape(5, 10)),
                              ("sum of dx is 0, on N=2 with mean 1e4", 1, nc_shape(2, 3))])


class FakeClock:
    """A clock that only moves when the timed functions run: timings the grader controls.

    Calls are made ``k``-th in global order; call ``k`` of a function lasts its base duration
    times ``1 + drift * k``, which a non-interleaved measurement turns into a bias; call
    ``outlier`` of ``f`` lasts 200 times longer, which a mean cannot hide.
    """

    def __init__(self, base_f: float, base_g: float, drift: float, outlier: int) -> None:
        self.now = 1000.0
        self.base = {"f": base_f, "g": base_g}
        self.drift, self.outlier = drift, outlier
        self.log: list[str] = []

    def __call__(self) -> float:
        return self.now

    def make(self, name: str) -> Callable[[], None]:
        def fn(*args: Any, **kwargs: Any) -> None:
            k = len(self.log)
            nth = self.log.count(name)
            self.log.append(name)
            d = self.base[name] * (1 + self.drift * k)
            if name == "f" and nth == self.outlier:
                d *= 200
            self.now += d
        return fn


def _q_speed() -> Question:
    def setup(rng: np.random.Generator) -> tuple[FakeClock, int]:
        repeats = int(rng.integers(9, 16))
        return FakeClock(float(rng.uniform(1, 2)) * 1e-3, float(rng.uniform(2, 3)) * 1e-3,
                         0.02, int(rng.integers(2, repeats - 1))), repeats

    def run_call(call: StudentCall, clock: FakeClock, repeats: int) -> tuple[Any, list[str]]:
        return call.call((clock.make("f"), clock.make("g"), repeats, clock), {},
                         check_mutation=False, after=lambda f, g, r, clk: clk.log)

    def expected(log: list[str], clock: FakeClock, name: str, how: str) -> float:
        ds = []
        count = 0
        for k, who in enumerate(log):
            if who == name:
                d = clock.base[name] * (1 + clock.drift * k)
                if name == "f" and count == clock.outlier:
                    d *= 200
                ds.append(d)
                count += 1
        ds = ds[-clock.repeats_timed:] if getattr(clock, "repeats_timed", 0) else ds
        return {"median": np.median, "mean": np.mean, "sum": np.sum}[how](ds)

    def run_medians(call: StudentCall, rng: np.random.Generator) -> None:
        clock, repeats = setup(rng)
        out, log = run_call(call, clock, repeats)
        mf, mg = (float(v) for v in unpack(out, 2, "compare_speed"))
        clock.repeats_timed = repeats  # warm-up calls before the timed ones are allowed
        want = (expected(log, clock, "f", "median"), expected(log, clock, "g", "median"))
        got = np.array([mf, mg])
        # A median over a window of drifting calls: allow the drift across one call either way.
        if np.allclose(got, want, rtol=0.06):
            return
        for how, why in (("mean", "the one slow outlier call drags the mean; report the median "
                                  "of the repeats."),
                         ("sum", "you returned the total time; report the median per call.")):
            alt = (expected(log, clock, "f", how), expected(log, clock, "g", how))
            if np.allclose(got, alt, rtol=0.06):
                raise CheckFailed(f"timings are wrong: {why}")
        if not np.any(got):
            raise CheckFailed("both timings are 0: read the time with the clock argument, "
                              "clock(), before and after each call.")
        if np.allclose(got[::-1], want, rtol=0.06):
            raise CheckFailed("the two timings are swapped: return (time of f, time of g).")
        raise CheckFailed(f"timings are wrong: expected about ({want[0]:.3g}, {want[1]:.3g}) s "
                          f"per call, got ({mf:.3g}, {mg:.3g}).")

    def run_interleaved(call: StudentCall, rng: np.random.Generator) -> None:
        clock, repeats = setup(rng)
        _, log = run_call(call, clock, repeats)
        seq = "".join(log)
        if seq.count("f") < repeats or seq.count("g") < repeats:
            raise CheckFailed(f"each function should run at least repeats={repeats} times; f ran "
                              f"{seq.count('f')} and g {seq.count('g')} times.")
        if max(len(run) for run in seq.replace("fg", "f g").replace("gf", "g f").split()) > 2:
            raise CheckFailed("the calls are not interleaved (you ran all of one function's "
                              "repeats, then the other's): slow drift of the machine (clock "
                              "boost, caches, other processes) then biases one side. Alternate "
                              "f and g in one loop.")

    return Question("q2", "A fair speed comparison", "compare_speed", [
        Check("returns the median time per call of each", 1, run_medians),
        Check("interleaves the two functions", 1, run_interleaved)], forbid_library_norms=False)


QUESTIONS: list[Question] = [_q_compact(), _q_speed()]
"""This notebook's questions, in the order of its ``check("qN")`` cells."""
