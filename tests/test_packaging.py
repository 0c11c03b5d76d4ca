"""bnbook as a library a user installs: ranges that keep their torch, a licence, types, names.

- Every runtime requirement is a compatible range (a lower and an upper bound, no ``==``), and
  the pinned environment (constraints.txt, which ``make install`` applies) satisfies every
  requirement, so ``make`` still installs torch 2.13.0 and the rest exactly.
- ``pip install .`` into a fresh venv that sees an existing environment with torch 2.13.0 would
  install bnbook and nothing else (an offline ``pip install --dry-run --no-index``), and the
  same dry run with a requirement torch 2.13.0 does not meet fails: the check can tell.
- The wheel carries the licence, ``py.typed``, the CUDA sources and ``bnbook.__version__``.
- ``import bnbook`` is light and its public names resolve lazily.
"""

from __future__ import annotations

import email
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs]
          for name, reqs in PROJECT["optional-dependencies"].items()}


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(ver)
    return pins


def _key(req: Requirement) -> str:
    return re.sub(r"[-_.]+", "-", req.name).lower()


def test_runtime_requirements_are_compatible_ranges():
    assert {_key(r) for r in RUNTIME} >= {"torch", "numpy"}
    for req in RUNTIME:
        ops = {spec.operator for spec in req.specifier}
        assert ops == {">=", "<"}, f"{req}: want a lower and an upper bound, got {ops}"
    torch_req = next(r for r in RUNTIME if _key(r) == "torch")
    assert torch_req.specifier.contains("2.13.0") and torch_req.specifier.contains("2.4.0")
    assert not torch_req.specifier.contains("3.0.0")


def test_the_pinned_environment_satisfies_every_requirement():
    """``make install`` is ``pip install -c constraints.txt -e '.[dev]'``: with these ranges the
    constraints still choose every version, torch 2.13.0 among them."""
    pins = _constraints()
    assert pins["torch"] == Version("2.13.0")
    for req in [*RUNTIME, *EXTRAS["dev"], *EXTRAS["triton"]]:
        if req.marker is not None and not req.marker.evaluate({"extra": "dev"}) \
                and not req.marker.evaluate({"extra": "triton"}):
            continue
        assert _key(req) in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[_key(req)], prereleases=True), \
            f"{req} excludes the pinned {pins[_key(req)]}"
    # and what is installed here is that environment
    assert Version(installed_version("torch")).base_version == "2.13.0"


def test_licence_and_version_metadata():
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bnbook.__version__"}
    import bnbook

    assert Version(bnbook.__version__) == Version(installed_version("bnbook"))


def test_import_is_light_and_names_resolve_lazily():
    script = (
        "import sys, json, bnbook\n"
        "heavy = [m for m in ('torch', 'triton', 'matplotlib', 'sklearn') if m in sys.modules]\n"
        "names = {n: type(getattr(bnbook, n)).__name__ for n in bnbook.__all__}\n"
        "print(json.dumps(dict(heavy=heavy, names=names, version=bnbook.__version__,"
        " triton='triton' in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["heavy"] == [], f"import bnbook imported {result['heavy']}"
    import bnbook

    assert set(bnbook.__all__) == {"__version__", *bnbook._EXPORTS, *bnbook._SUBMODULES}
    assert result["names"]["BatchNorm2d"] == "type" and result["names"]["kernels"] == "module"
    assert result["names"]["batch_norm"] == "function"
    assert not result["triton"], "resolving bnbook.kernels must not import triton"
    import bnbook.modules

    assert bnbook.BatchNorm2d is bnbook.modules.BatchNorm2d
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bnbook.nope  # noqa: B018


def _copy_project(dest: Path, torch_requirement: str | None = None) -> Path:
    """The files a build reads (pyproject, README, LICENSE, code/), optionally with another torch
    requirement; building from a copy leaves the work tree untouched."""
    dest.mkdir()
    text = (ROOT / "pyproject.toml").read_text()
    if torch_requirement is not None:
        text, n = re.subn(r'"torch[^"]*"', f'"{torch_requirement}"', text, count=1)
        assert n == 1
    (dest / "pyproject.toml").write_text(text)
    for name in ("README.md", "LICENSE"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "code" / "bnbook", dest / "code" / "bnbook",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def _venv_beside_this_environment(path: Path) -> Path:
    """A fresh venv with nothing of its own that sees this environment's packages (torch 2.13.0
    and the rest) through a .pth file: a user's environment that already has torch."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    (Path(purelib) / "_existing_environment.pth").write_text(sysconfig.get_paths()["purelib"])
    return python


def _dry_run(python: Path, project: Path, report: Path) -> subprocess.CompletedProcess:
    # Offline: --no-index finds nothing to download, so anything not already satisfied fails.
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run",
         "--no-index", "--no-build-isolation", "--disable-pip-version-check", "--quiet",
         "--report", str(report), str(project)],
        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_pip_install_beside_an_existing_torch_installs_only_bnbook(tmp_path):
    python = _venv_beside_this_environment(tmp_path / "venv")
    out = _dry_run(python, _copy_project(tmp_path / "project"), tmp_path / "report.json")
    assert out.returncode == 0, out.stderr[-3000:]
    installs = json.loads((tmp_path / "report.json").read_text())["install"]
    assert [item["metadata"]["name"] for item in installs] == ["bnbook"]
    # The control: a torch requirement that 2.13.0 does not meet makes the same run fail
    # (it would have to replace torch, and offline it cannot), so the check above can fail.
    bad = _copy_project(tmp_path / "pinned", torch_requirement="torch==2.12.0")
    out = _dry_run(python, bad, tmp_path / "bad.json")
    assert out.returncode != 0, "a torch requirement 2.13.0 fails must not resolve offline"
    assert "ResolutionImpossible" in out.stderr or "No matching distribution" in out.stderr, \
        out.stderr[-3000:]


@pytest.mark.slow
def test_wheel_ships_licence_types_and_cuda_sources(tmp_path):
    project = _copy_project(tmp_path / "project")
    script = ("import sys; from setuptools import build_meta as b; "
              "print(b.build_wheel(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "dist")], cwd=project,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = tmp_path / "dist" / out.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
    import bnbook

    assert "bnbook/py.typed" in names
    assert {"bnbook/kernels/csrc/batch_norm.cu", "bnbook/kernels/csrc/batch_norm_binding.cpp"} \
        <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-8:]
    assert meta["License-Expression"] == "MIT"
    assert meta["Version"] == bnbook.__version__
    assert "torch<3,>=2.4" in meta.get_all("Requires-Dist")
