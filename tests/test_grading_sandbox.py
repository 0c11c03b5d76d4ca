"""The sandbox around a student's function: misbehaving functions get zero and a clear message,
library layers are refused, inputs are fresh, deadlines are kept, and a platform without fork is
told so once instead of failing every check.

Wall-clock margins: only the tests about the deadline use a short one, with functions that never
return (so load cannot change their outcome) and a bound far above the deadline and far below the
time the function would run; every other test runs with a deadline no loaded machine reaches.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bnbook.grading import Grader, GradingUnavailable, StudentCall, forbidden_names_in, main
from bnbook.grading.grader import DEFAULT_TIMEOUT_S, TIMEOUT_ENV, default_timeout
from bnbook.grading.sandbox import fork_available

sys.path.insert(0, str(Path(__file__).resolve().parent / "solutions"))
from grading_harness import EXERCISES, TIMEOUT_S, define  # noqa: E402

SHORT_S = 0.5  # the deadline under test, for functions that never return
NEVER_S = 3600  # how long those functions would run if they were not stopped
BOUND_S = 120.0  # the grader must have stopped them by then (two calls of SHORT_S each)

# Functions that misbehave rather than compute wrongly (exercise 1, question 2): each must get
# zero with this message.
MISBEHAVING: list[tuple[str, str, str]] = [
    ("raises", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return x / 0 if False else weight @ x.T @ bias @ x
""", "raised ValueError"),
    ("wrong shape", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return (x - x.mean(0)).mean(0)
""", "has shape"),
    ("wrong type", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    return torch.from_numpy(x)
""", "is a torch.Tensor; return a NumPy array"),
    ("mutates", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    x -= x.mean(0)
    x /= np.sqrt((x ** 2).mean(0) + eps)
    return weight * x + bias
""", "changed its input `x` in place"),
    ("torch by name", """
import torch.nn.functional as F
def batchnorm_forward(x, weight, bias, eps=1e-5):
    t = torch.from_numpy(x)
    return F.batch_norm(t, None, None, torch.from_numpy(weight), torch.from_numpy(bias),
                        training=True, eps=eps).numpy()
""", "uses batch_norm"),
    ("torch hidden", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    layer = getattr(torch.nn.functional, "batch" + "_norm")
    t = torch.from_numpy(x)
    try:
        return layer(t, None, None, torch.from_numpy(weight), torch.from_numpy(bias),
                     training=True, eps=eps).numpy()
    except BaseException:
        return x
""", "calls torch.nn.functional.batch_norm"),
    ("module hidden", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    layer = getattr(torch.nn, "Batch" + "Norm1d")(x.shape[1], eps=eps, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight)); layer.bias.copy_(torch.from_numpy(bias))
        return layer(torch.from_numpy(x)).numpy()
""", "calls torch.nn.BatchNorm.forward"),
    ("bnbook hidden", """
import importlib
def batchnorm_forward(x, weight, bias, eps=1e-5):
    ref = importlib.import_module("bnbook.reference")
    return getattr(ref, "batch_norm" + "_forward")(x, weight, bias, eps)[0]
""", "calls bnbook.reference.batch_norm_forward"),
    ("stub", """
def batchnorm_forward(x, weight, bias, eps=1e-5):
    raise NotImplementedError
""", "not attempted yet"),
]


@pytest.fixture(autouse=True)
def _deadline_a_loaded_machine_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, str(TIMEOUT_S))


@pytest.mark.parametrize("case", range(len(MISBEHAVING)), ids=[m[0] for m in MISBEHAVING])
def test_misbehaving_function_gets_zero_and_a_clear_message(case: int) -> None:
    label, source, phrase = MISBEHAVING[case]
    ns = define(source, f"bad-{case}", np=np, torch=torch)
    result = Grader("01_forward_train", namespace=ns, verbose=False).run_question("q2")
    assert result.earned == 0
    assert all(phrase in c.message for c in result.checks), [c.message for c in result.checks]
    assert "Traceback" not in " ".join(c.message for c in result.checks)


@pytest.mark.parametrize("body", ["while True:\n        pass",
                                  f"import time\n    time.sleep({NEVER_S})"],
                         ids=["busy loop", "sleep"])
def test_never_returning_function_is_stopped_at_its_deadline(body: str) -> None:
    source = f"def batch_stats(x):\n    {body}\n"
    ns = define(source, "never")
    t0 = time.monotonic()
    result = Grader("01_forward_train", namespace=ns, timeout=SHORT_S,
                    verbose=False).run_question("q1")
    elapsed = time.monotonic() - t0
    assert len(result.checks) == 2 and result.earned == 0
    assert all(f"did not return within {SHORT_S:g} s" in c.message for c in result.checks)
    assert elapsed < BOUND_S  # stopped, not waited for (it would run for NEVER_S)


def test_raising_function_names_its_line() -> None:
    source = "def batch_stats(x):\n    m = x.mean(0)\n    return m, 1 / 0\n"
    ns = define(source, "zero")
    result = Grader("01_forward_train", namespace=ns, verbose=False).run_question("q1")
    assert result.earned == 0
    assert "ZeroDivisionError" in result.checks[0].message
    assert "line 3: `return m, 1 / 0`" in result.checks[0].message


def test_missing_function_and_bad_arguments() -> None:
    grader = Grader("02_running_stats", namespace={"update_running_stats": 3}, verbose=False)
    assert "is not defined" in grader.run_question("q1").checks[0].message
    grader.score()
    assert grader.report()["earned"] == 0
    with pytest.raises(ValueError, match="notebook must be one of"):
        Grader("99_nothing", namespace={})
    with pytest.raises(ValueError, match="qid must be one of"):
        grader.run_question("q7")


def test_source_scan_ignores_comments_and_strings() -> None:
    source = ('def f(x):\n    # like F.batch_norm, but by hand\n    s = "nn.BatchNorm1d"\n'
              "    return x\n"
              "def g(x):\n    return torch.nn.functional.layer_norm(x, x.shape[-1:])\n")
    ns = define(source, "scan", torch=torch)
    assert forbidden_names_in(ns["f"]) == []
    assert forbidden_names_in(ns["g"]) == ["layer_norm"]


def test_inputs_are_fresh_on_every_run(tmp_path: Path) -> None:
    # The student function runs in a child process; it leaves the input it saw in a file.
    log = tmp_path / "seen.txt"
    source = (f"def batch_stats(x):\n    open({str(log)!r}, 'a').write(repr(x.sum()) + '\\n')\n"
              "    return x.mean(0), x.var(0)\n")
    ns = define(source, "fresh")
    grader = Grader("01_forward_train", namespace=ns, verbose=False)
    grader.run_question("q1")
    grader.run_question("q1")
    seen = log.read_text().split()
    assert len(seen) == 4 and len(set(seen)) == 4


def test_library_layers_work_again_after_a_forbidden_call() -> None:
    # The traps live in the child process only: the notebook's own torch is untouched.
    x = torch.randn(5, 3, dtype=torch.float64)
    before = torch.nn.functional.batch_norm(x, None, None, training=True)
    Grader("01_forward_train", namespace=define(MISBEHAVING[5][1], "trap", np=np, torch=torch),
           verbose=False).run_question("q2")
    after = torch.nn.functional.batch_norm(x, None, None, training=True)
    assert torch.equal(before, after)


# ---------------------------------------------------------------------------- the deadline


def test_default_deadline_and_its_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMEOUT_ENV)
    assert default_timeout() == DEFAULT_TIMEOUT_S == 3.0
    assert Grader("01_forward_train", namespace={}).timeout == 3.0
    monkeypatch.setenv(TIMEOUT_ENV, "12.5")
    assert Grader("01_forward_train", namespace={}).timeout == 12.5
    assert Grader("01_forward_train", namespace={}, timeout=0.25).timeout == 0.25
    for bad in ("soon", "0", "-1", "inf", "nan"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=f"{TIMEOUT_ENV} must be a positive number"):
            default_timeout()


# ---------------------------------------------------------------------------- no fork


def _no_fork_by_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fork")


def _no_fork_by_start_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])


@pytest.mark.parametrize("remove_fork", [_no_fork_by_attribute, _no_fork_by_start_method],
                         ids=["os.fork missing", "no fork start method"])
def test_without_fork_the_grader_says_so_once(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture, remove_fork) -> None:
    assert fork_available()
    remove_fork(monkeypatch)
    assert not fork_available()
    # The notebook's first cell fails with the reason, instead of every check failing later.
    with pytest.raises(GradingUnavailable, match=r"needs os\.fork.*Linux or macOS.*WSL"):
        Grader("01_forward_train", namespace={})
    # A check reached some other way is not graded as the student's failure either.
    with pytest.raises(GradingUnavailable):
        StudentCall(lambda: 1, "f", 1.0, False)()
    # The command line stops before starting any kernel, with exit status 2.
    assert main([str(EXERCISES / "01_forward_train.ipynb")]) == 2
    err = capsys.readouterr().err
    assert "cannot grade" in err and "os.fork" in err and "WSL" in err
