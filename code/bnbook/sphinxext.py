"""The book's Sphinx glue: serve MathJax from the built book, so it works with no network.

Jupyter Book loads MathJax from a public CDN by default. The wheel ``django-static-mathjax``
carries MathJax 3 as plain files; after the HTML build we copy its browser bundles into
``_static/mathjax``, and ``_config.yml`` points ``mathjax_path`` there.
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


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
