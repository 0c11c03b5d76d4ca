"""Notebooks are stored without outputs: git holds sources, the book build makes the outputs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_notebooks() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    found = {ROOT / p for p in out}
    # Untracked notebooks in the book's folders count too: they are about to be committed.
    for folder in ("chapters", "exercises"):
        found.update((ROOT / folder).glob("*.ipynb"))
    return sorted(p for p in found if p.exists())


NOTEBOOKS = _tracked_notebooks()


def test_there_are_notebooks() -> None:
    assert any(p.parent.name == "chapters" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_has_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"
    assert "widgets" not in nb.metadata, f"{path.name}: stored widget state; clear it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cell_has_its_own_id(path: Path) -> None:
    """nbformat 4.5 cells carry ids. nbformat.read quietly invents missing ones (with a
    warning in every build), so the file itself is read here."""
    raw = json.loads(path.read_text())
    if (raw["nbformat"], raw["nbformat_minor"]) < (4, 5):
        return
    ids = [cell.get("id") for cell in raw["cells"]]
    missing = [i for i, cell_id in enumerate(ids) if not cell_id]
    assert not missing, f"{path.name}: cells {missing} have no id"
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"
