"""Execute the book's notebooks in parallel into the cache that ``jupyter-book build`` reads.

Jupyter Book 1.x executes the notebooks of a book one after another while Sphinx reads them.
On a machine with several cores that leaves all but one idle for most of a clean build. This
module runs first (``make book`` calls ``python -m bnbook.bookexec``): it executes every
notebook listed in ``_toc.yml`` whose code is not in the cache yet, a few at a time, each in its
own folder and kernel exactly as myst-nb would, and stores the executed notebook in
``_build/.jupyter_cache``. The build then finds each notebook there and only renders it.

A notebook that fails is reported, with its error, and left out of the cache, so the build
executes it again itself and reports it in its own words; the exit status is then 1, so that
``make book`` can say, after building every other page, that the book is not whole.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["book_notebooks", "main"]


def book_notebooks(root: Path) -> list[Path]:
    """The ``.ipynb`` files that ``root/_toc.yml`` puts in the book (``file:`` and ``glob:``)."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    found: list[Path] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                path = root / f"{node['file']}.ipynb"
                if path.exists():
                    found.append(path)
            if "glob" in node:
                found.extend(sorted(p for p in root.glob(f"{node['glob']}.ipynb")))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(toc)
    return list(dict.fromkeys(found))  # in book order, each once


def _execute(path: str, timeout: int) -> tuple[str, Any, float, str | None]:
    """Run one notebook in its own folder; return it executed, or the error's text."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    notebook = nbformat.read(path, as_version=4)
    result = single_nb_execution(
        notebook, cwd=str(Path(path).parent), allow_errors=False, timeout=timeout,
        meta_override=True,
    )
    return path, notebook, result.time, result.exc_string if result.err else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnbook.bookexec", description=__doc__)
    parser.add_argument("root", nargs="?", default=".", help="the book's folder (has _toc.yml)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="notebooks executed at once (default: the number of cores)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")

    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    root = Path(args.root).resolve()
    cache = get_cache(str(root / "_build" / ".jupyter_cache"))
    todo = []
    for path in book_notebooks(root):
        try:
            cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            todo.append(path)
    # Longest first (file size is a fair proxy here), so no long notebook starts last.
    todo.sort(key=lambda p: p.stat().st_size, reverse=True)
    print(f"bookexec: {len(todo)} notebook(s) to execute, {args.jobs} at a time", flush=True)
    start, failed = time.perf_counter(), []
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_execute, str(p), args.timeout) for p in todo]
        for future in concurrent.futures.as_completed(futures):
            path, notebook, seconds, error = future.result()
            name = Path(path).relative_to(root)
            if error is not None:
                failed.append(str(name))
                print(f"bookexec: {name} FAILED after {seconds:.1f} s (the build will "
                      f"execute it again and report it):\n{error}", flush=True)
                continue
            cache.cache_notebook_bundle(
                CacheBundleIn(notebook, path, data={"execution_seconds": seconds}),
                check_validity=False, overwrite=True,
            )
            print(f"bookexec: {name} executed in {seconds:.1f} s", flush=True)
    print(f"bookexec: done in {time.perf_counter() - start:.1f} s, {len(failed)} failed"
          + (f": {', '.join(sorted(failed))}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
