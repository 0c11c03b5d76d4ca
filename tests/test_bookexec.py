"""bnbook.bookexec: the notebooks of the book, executed in parallel into the build's cache."""

from __future__ import annotations

from pathlib import Path

import nbformat
import yaml

from bnbook import bookexec

ROOT = Path(__file__).resolve().parents[1]


def test_finds_every_notebook_the_table_of_contents_lists() -> None:
    found = bookexec.book_notebooks(ROOT)
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    expected = [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]
    assert [p for p in found if p.parent.name == "chapters"] == expected
    exercises = sorted((ROOT / "exercises").glob("[0-9]*.ipynb"))
    assert [p for p in found if p.parent.name == "exercises"] == exercises
    assert len(found) == len(set(found))


def _book(tmp_path: Path, cells: dict[str, str]) -> None:
    (tmp_path / "chapters").mkdir()
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n"
        + "".join(f"  - file: chapters/{name}\n" for name in cells)
    )
    for name, code in cells.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        # Each notebook writes a file in its working folder: the notebook's own, as in myst-nb.
        nb.cells = [nbformat.v4.new_code_cell(f"open('{name}.ran', 'w').close()\n{code}")]
        nbformat.write(nb, tmp_path / "chapters" / f"{name}.ipynb")


def test_executes_into_the_cache_the_build_reads_and_leaves_failures_out(tmp_path, capsys) -> None:
    from jupyter_cache import get_cache

    _book(tmp_path, {"good": "print(6 * 7)", "bad": "raise RuntimeError('boom')"})
    # A failure is an exit status of 1, with the failed notebooks named at the end.
    assert bookexec.main([str(tmp_path), "--jobs", "2", "--timeout", "120"]) == 1
    out = capsys.readouterr().out
    assert "chapters/bad.ipynb FAILED" in out and "boom" in out
    assert out.rstrip().endswith("1 failed: chapters/bad.ipynb")
    assert (tmp_path / "chapters" / "good.ran").exists()  # ran in the notebook's folder

    cache = get_cache(str(tmp_path / "_build" / ".jupyter_cache"))
    good = nbformat.read(tmp_path / "chapters" / "good.ipynb", as_version=4)
    record = cache.match_cache_notebook(good)  # the lookup myst-nb makes
    _, merged = cache.merge_match_into_notebook(good)
    assert merged.cells[0].outputs[0]["text"] == "42\n"
    assert record.data["execution_seconds"] > 0
    bad = nbformat.read(tmp_path / "chapters" / "bad.ipynb", as_version=4)
    try:
        cache.match_cache_notebook(bad)
    except KeyError:
        pass
    else:
        raise AssertionError("a failed notebook must not be cached")

    # A second run finds the good notebook cached and executes only the failed one again.
    assert bookexec.main([str(tmp_path), "--jobs", "1"]) == 1
    assert "1 notebook(s) to execute" in capsys.readouterr().out


def test_exit_status_is_0_when_every_notebook_runs(tmp_path, capsys) -> None:
    _book(tmp_path, {"one": "x = 1", "two": "y = 2"})
    assert bookexec.main([str(tmp_path), "--jobs", "2", "--timeout", "120"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("0 failed")
