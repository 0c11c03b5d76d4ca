"""Running a student's function safely: a forked call with a deadline, trapped norms, mutations.

The lowest layer of :mod:`bnbook.grading`; it imports nothing from the package. Each call of a
student function runs in a forked child process, so that

* a function that never returns can be killed at a deadline (wall clock, measured in the parent);
* an in-place change to its inputs can be seen (the child compares deep copies it took first);
* calls to torch's and bnbook's own normalisation layers can be trapped without touching the
  notebook's torch (the child patches its own copy of the modules and then exits).

The child sends back a plain dict, ``{"status": ...}``; turning that into feedback is the job of
:class:`bnbook.grading.checks.StudentCall`. Fork is required: :func:`require_fork` says so
clearly on a platform without it (Windows), instead of letting every check fail.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import multiprocessing
import os
import pickle
import re
import select
import signal
import sys
import time
import tokenize
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GradingUnavailable", "fork_available", "require_fork", "run_forked",
           "forbidden_names_in", "import_forbidden_modules", "FORBIDDEN_BNBOOK"]

# Names whose appearance in a student's function means it hands the work to a library layer.
_FORBIDDEN_SOURCE = re.compile(
    r"\b(batch_norm|layer_norm|group_norm|instance_norm|native_batch_norm|native_layer_norm|"
    r"native_group_norm|BatchNorm\w*|SyncBatchNorm|LayerNorm|GroupNorm|InstanceNorm\w*|"
    r"batch_norm_forward|batch_norm_backward\w*|batch_norm_inference|update_running_stats|"
    r"fuse_\w*bn\w*)\b"
)
# Callables trapped at run time while a student function runs (module, attribute names).
_FORBIDDEN_TORCH = (
    ("torch.nn.functional", ("batch_norm", "layer_norm", "group_norm", "instance_norm")),
    ("torch", ("batch_norm", "native_batch_norm", "layer_norm", "native_layer_norm",
               "group_norm", "native_group_norm", "instance_norm", "_native_batch_norm_legit",
               "_batch_norm_impl_index")),
    ("torch.nn.utils.fusion", ("fuse_conv_bn_weights", "fuse_linear_bn_weights",
                               "fuse_conv_bn_eval", "fuse_linear_bn_eval")),
)
_FORBIDDEN_MODULE_FORWARD = (
    ("torch.nn.modules.batchnorm", "_BatchNorm"),
    ("torch.nn.modules.normalization", "LayerNorm"),
    ("torch.nn.modules.normalization", "GroupNorm"),
    ("torch.nn.modules.instancenorm", "_InstanceNorm"),
)
FORBIDDEN_BNBOOK = ("bnbook.reference", "bnbook.functional", "bnbook.norms", "bnbook.modules")
"""bnbook modules whose public functions and layers are trapped (if imported before the fork)."""

_PACKAGE_DIR = Path(__file__).resolve().parent


class GradingUnavailable(RuntimeError):
    """Raised when this platform cannot run the grader (it needs ``os.fork``)."""


def fork_available() -> bool:
    """Whether this platform can fork: ``os.fork`` exists and multiprocessing offers "fork"."""
    return hasattr(os, "fork") and "fork" in multiprocessing.get_all_start_methods()


def require_fork() -> None:
    """Fail once, clearly, where the grader cannot work, rather than in every check.

    Raises:
        GradingUnavailable: when ``os.fork`` is missing (Windows, some embedded Pythons).
    """
    if not fork_available():
        raise GradingUnavailable(
            f"the exercise grader needs os.fork, which this platform ({sys.platform}) does not "
            "have: it runs each call of your function in a forked process, so that a call that "
            "never returns can be stopped and library layers can be trapped. Run the exercises "
            "on Linux or macOS, or on Windows inside WSL (Windows Subsystem for Linux).")


class _ForbiddenCall(BaseException):  # noqa: N818 - a sentinel, not an error a student handles
    """Raised inside the child when the student's code reaches a trapped library layer.

    A BaseException, so that a student's ``except Exception`` cannot swallow it.
    """


_forbidden_hits: list[str] = []


def _forbidden(name: str) -> _ForbiddenCall:
    """Record and build the sentinel for a trapped call (called from patched code objects)."""
    _forbidden_hits.append(name)
    return _ForbiddenCall(name)


def _raiser(*args: Any, **kwargs: Any) -> Any:
    # Its code object replaces a library function's; it resolves everything through builtins
    # because it runs with that function's globals, and reads the trapped name from its frame.
    import sys as _sys

    sandbox = __import__("bnbook.grading.sandbox", fromlist=["_forbidden"])
    raise sandbox._forbidden(_sys._getframe().f_code.co_qualname)


def _raiser_named(label: str) -> Any:
    raise _forbidden(label)


def _trap_attr(owner: Any, name: str, label: str) -> None:
    target = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if target is None or not callable(target):
        return
    code = getattr(target, "__code__", None)
    replacement = _raiser.__code__.replace(co_name=name, co_qualname=label)
    if code is not None and not code.co_freevars:
        # Swapping the code object also catches references the student took before the call,
        # e.g. ``from torch.nn.functional import batch_norm as bn``.
        try:
            target.__code__ = replacement
            return
        except (AttributeError, TypeError, ValueError):
            pass
    fn = lambda *a, **k: _raiser_named(label)
    try:
        setattr(owner, name, fn)
    except (AttributeError, TypeError):
        pass


def _install_traps() -> None:
    """Replace library normalisation layers with the sentinel raiser (child process only)."""
    for modname, names in _FORBIDDEN_TORCH:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for name in names:
            _trap_attr(mod, name, f"{modname}.{name}")
    for modname, clsname in _FORBIDDEN_MODULE_FORWARD:
        try:
            cls = getattr(importlib.import_module(modname), clsname)
        except (ImportError, AttributeError):
            continue
        _trap_attr(cls, "forward", f"torch.nn.{clsname.lstrip('_')}.forward")
    for modname in FORBIDDEN_BNBOOK:
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        for name in dir(mod):
            obj = getattr(mod, name)
            if name.startswith("_") or getattr(obj, "__module__", None) != modname:
                continue
            if isinstance(obj, type):
                _trap_attr(obj, "forward", f"{modname}.{name}.forward")
            else:
                _trap_attr(mod, name, f"{modname}.{name}")


def import_forbidden_modules() -> None:
    """Import bnbook's layers in the parent, so that every forked child inherits and traps them."""
    for modname in FORBIDDEN_BNBOOK:
        try:
            importlib.import_module(modname)
        except Exception:  # noqa: BLE001 - a module that fails to import cannot be called
            pass


# ---------------------------------------------------------------------------- mutation detection


def _copy_value(v: Any) -> Any:
    try:
        return copy.deepcopy(v)
    except Exception:  # an uncopyable argument cannot be compared afterwards; skip it
        return None


def _same_value(a: Any, b: Any) -> bool:
    if a is None:
        return True
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and bool(
            np.array_equal(a, b, equal_nan=True))
    if type(a).__module__.startswith("torch") and hasattr(a, "detach"):
        import torch

        return bool(torch.equal(a.detach(), b.detach())) if a.shape == b.shape else False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return True


# ---------------------------------------------------------------------------- the forked call


def _student_frame(tb: Any, fn_name: str) -> str:
    """Where in the student's code an exception came from, as ' (line N: `code`)'."""
    frames = [f for f in traceback.extract_tb(tb)
              if Path(f.filename).resolve().parent != _PACKAGE_DIR]
    if not frames:
        return ""
    f = frames[-1]
    where = f"{f.name}, line {f.lineno}" if f.name != fn_name else f"line {f.lineno}"
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" ({where}:{code})"


def _child_call(fn: Callable[..., Any], args: tuple, kwargs: dict, forbid: bool,
                check_mutation: bool, after: Callable[..., Any] | None) -> dict[str, Any]:
    """Run the student function; everything it produced, as a picklable dict."""
    if "torch" in sys.modules:
        # torch's OpenMP pool does not survive fork; one thread keeps the child from hanging.
        sys.modules["torch"].set_num_threads(1)
    if forbid:
        _install_traps()
    before = [_copy_value(a) for a in args] if check_mutation else []
    kbefore = {k: _copy_value(v) for k, v in kwargs.items()} if check_mutation else {}
    name = getattr(fn, "__name__", "your function")
    try:
        out = fn(*args, **kwargs)
    except _ForbiddenCall as exc:
        return {"status": "forbidden", "what": str(exc)}
    except NotImplementedError:
        return {"status": "stub"}
    except BaseException as exc:  # noqa: BLE001 - anything the student raises is feedback
        if _forbidden_hits:
            return {"status": "forbidden", "what": _forbidden_hits[0]}
        msg = f"{type(exc).__name__}: {exc}"[:300]
        return {"status": "raised", "what": msg + _student_frame(exc.__traceback__, name)}
    if _forbidden_hits:  # the student caught the sentinel with a bare except
        return {"status": "forbidden", "what": _forbidden_hits[0]}
    mutated = []
    if check_mutation:
        try:
            params = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            params = []
        for i, (old, new) in enumerate(zip(before, args, strict=True)):
            if not _same_value(old, new):
                mutated.append(params[i] if i < len(params) else f"argument {i + 1}")
        mutated += [k for k, v in kbefore.items() if not _same_value(v, kwargs[k])]
    extra = after(*args, **kwargs) if after is not None else None
    return {"status": "ok", "out": out, "extra": extra, "mutated": mutated}


def run_forked(fn: Callable[..., Any], args: tuple, kwargs: dict, timeout: float,
               forbid: bool, check_mutation: bool,
               after: Callable[..., Any] | None) -> dict[str, Any]:
    """Call ``fn`` in a forked child with a deadline; never raises for student behaviour.

    Args:
        fn: the student's function.
        args: positional arguments (the child works on its own copy-on-write copy).
        kwargs: keyword arguments.
        timeout: seconds of wall-clock time, counted in the parent from the fork, before the
            child is killed.
        forbid: trap library normalisation layers in the child.
        check_mutation: compare every argument with a deep copy taken before the call.
        after: run in the child after ``fn`` as ``after(*args, **kwargs)``; its result comes back
            as ``"extra"`` (how a check inspects a model the function changed).

    Returns:
        ``{"status": "ok", "out", "extra", "mutated", "printed"}`` or ``{"status": s, ...}`` with
        s one of "stub", "raised", "forbidden", "timeout", "crashed", "unpicklable".

    Raises:
        GradingUnavailable: on a platform without ``os.fork``.
    """
    require_fork()
    r, w = os.pipe()
    with warnings.catch_warnings():
        # A Jupyter kernel has threads; the child only runs the student's code and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            captured = io.StringIO()
            sys.stdout = sys.stderr = captured
            result = _child_call(fn, args, kwargs, forbid, check_mutation, after)
            result["printed"] = captured.getvalue()[-2000:]
            try:
                payload = pickle.dumps(result)
            except Exception as exc:  # noqa: BLE001
                payload = pickle.dumps({"status": "unpicklable", "what": str(exc)[:200]})
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    finished = timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 1 << 20)
            if not chunk:
                finished = True
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        if not finished:  # timed out, or the wait was interrupted: never leave it running
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if timed_out:
        return {"status": "timeout"}
    try:
        return pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - the child died (e.g. killed for memory)
        return {"status": "crashed"}


# ---------------------------------------------------------------------------- source scan


def _code_tokens(source: str) -> str:
    """The source without comments and strings, so a mention in a comment is not a call."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type not in (tokenize.COMMENT, tokenize.STRING):
                out.append(tok.string)
    except (tokenize.TokenError, IndentationError):
        return source
    return " ".join(out)


def forbidden_names_in(fn: Callable[..., Any]) -> list[str]:
    """Library normalisation names that a function's source code uses.

    Args:
        fn: the student's function.

    Returns:
        The distinct forbidden names found, in order; empty when the source is unavailable.
    """
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return []
    found = _FORBIDDEN_SOURCE.findall(_code_tokens(source))
    own = getattr(fn, "__name__", "")
    return list(dict.fromkeys(n for n in found if n != own))
