"""The book's Sphinx glue: a built book that needs no network.

* Jupyter Book loads MathJax from a public CDN by default. The wheel ``django-static-mathjax``
  carries MathJax 3 as plain files; after the HTML build we copy its browser bundles into
  ``_static/mathjax``, and ``_config.yml`` points ``mathjax_path`` there.
* Jupyter Book always loads sphinx-thebe, whose only job is to fetch a kernel front end from a
  public CDN when a reader asks for one; it is also injected twice, which throws a script error on
  every page. We take its scripts off the pages.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx


def mathjax_dir() -> Path:
    """Return the folder of MathJax's browser bundles (``es5``) inside the installed wheel."""
    import mathjax  # the import name of django-static-mathjax

    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").is_file():
        raise FileNotFoundError(
            f"MathJax bundle not found at {es5}; reinstall django-static-mathjax"
        )
    return es5


def _copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    # Only the CHTML output and the components it loads on demand; the SVG bundles are unused.
    shutil.copytree(
        mathjax_dir(),
        target,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("tex-svg*", "tex-mml-svg*", "mml-svg*", "svg"),
    )


def _is_thebe(asset: Any) -> bool:
    name = str(getattr(asset, "filename", None) or asset or "")
    body = str(getattr(asset, "attributes", {}).get("body", ""))
    return "thebe" in name or "THEBE" in body


def _drop_thebe(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any],
                doctree: Any) -> None:
    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [asset for asset in context[key] if not _is_thebe(asset)]


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _drop_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
