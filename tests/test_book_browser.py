"""The built HTML book in a real browser: math renders, figures respond, nothing is fetched.

Drives Debian's Chromium through Playwright (which never downloads a browser of its own here).
Needs the book built first (`make book`; `make test` builds it before running pytest).
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium not found: install it (Debian: `apt-get install chromium`) to run the "
        "browser tests; .ci/run does this",
    ),
]

# The flags keep Chromium from phoning home: this machine has no network, and every stray
# connection attempt would be refused (and would show up in the request log below).
_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=_FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """Open a page of the built book by file:// (as a reader offline would) and log requests."""
    if not (HTML / "index.html").is_file():
        pytest.fail(f"the book is not built at {HTML}: run `make book` first")
    pages = []

    def _open(relative: str):
        page = browser.new_page(viewport={"width": 1280, "height": 1800})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((HTML / relative).as_uri(), wait_until="load")
        pages.append(page)
        return page, requests, errors

    yield _open
    for page in pages:
        page.close()


def _remote(requests: list[str]) -> list[str]:
    """The requests that left the book: anything but its own files and inline data."""
    return [u for u in requests if not u.startswith(("file://", "data:", "blob:"))]


def _wait_for_math(page) -> dict:
    page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                           timeout=30_000)
    return page.evaluate(
        """() => MathJax.startup.promise.then(() => ({
            rendered: document.querySelectorAll('mjx-container').length,
            errors: document.querySelectorAll('mjx-merror').length,
            raw: document.querySelectorAll('.math:not(:has(mjx-container))').length,
        }))"""
    )


def test_chapter_math_renders_offline(open_page) -> None:
    page, requests, errors = open_page("chapters/transform.html")
    math = _wait_for_math(page)
    assert math["rendered"] >= 10, math
    assert math["errors"] == 0 and math["raw"] == 0, math
    remote = _remote(requests)
    assert not remote, f"the page fetched from the network: {remote}"
    assert any("/_static/mathjax/" in u for u in requests), "MathJax must come from the book"
    html = (HTML / "chapters" / "transform.html").read_text()
    assert "unpkg.com" not in html and "cdn.jsdelivr" not in html and "cdnjs" not in html
    assert not errors, errors


def test_figure_slider_and_preset_change_the_picture(open_page) -> None:
    from bnbook import figures

    page, requests, errors = open_page("chapters/transform.html")
    figure = page.locator(".bnfig").first
    figure.scroll_into_view_if_needed()
    image = figure.locator("img.bnfig-img")
    gamma = figure.locator('input[type="range"]').nth(0)
    readout = figure.locator("output").nth(0)
    before = image.get_attribute("src")
    assert readout.inner_text() == "1.00"

    gamma.focus()
    page.keyboard.press("ArrowRight")  # one step of the γ slider, as a reader would
    assert readout.inner_text() == "1.50"
    after = image.get_attribute("src")
    assert after != before, "moving the slider must change the picture"

    figure.get_by_role("button", name="set to identity (γ = σ, β = μ)").click()
    assert [figure.locator("output").nth(k).inner_text() for k in (0, 1)] == ["2.00", "3.00"]
    shown = base64.b64decode(image.get_attribute("src").split(",", 1)[1])
    # The picture shown is exactly what the drawing function makes for that state.
    assert shown == figures.transform_explorer().png(gamma=2.0, beta=3.0)

    data = json.loads(figure.locator("script.bnfig-data").text_content())
    assert len(data["index"]) == 7 * 7
    remote = _remote(requests)
    assert not remote and not errors, (remote, errors)


def test_intro_page_links_the_chapter(open_page) -> None:
    page, _, errors = open_page("intro.html")
    link = page.locator('a[href*="chapters/transform"]').first
    assert link.count() == 1
    link.click()
    page.wait_for_load_state("load")
    assert page.url.endswith("chapters/transform.html")
    assert not errors


def _book_pages() -> list[str]:
    pages = ["intro.html"]
    for folder in ("chapters", "exercises"):
        pages += sorted(f"{folder}/{p.name}" for p in (HTML / folder).glob("*.html"))
    return pages


def test_every_page_loads_offline_without_script_errors(open_page) -> None:
    pages = _book_pages()
    assert len(pages) >= 4, pages
    for relative in pages:
        page, requests, errors = open_page(relative)
        if page.locator(".math").count():
            math = _wait_for_math(page)
            assert math["errors"] == 0 and math["raw"] == 0, (relative, math)
        remote = _remote(requests)
        assert not remote, f"{relative} fetched from the network: {remote}"
        assert not errors, f"{relative}: script errors {errors}"
        page.close()


# Every interactive figure of the book, page by page, in the order the page shows them, as
# "module:factory" in bnbook.figures. A figure added to a chapter must be listed here: the test
# below fails when a page shows a figure this table does not know.
FIGURES: dict[str, list[str]] = {
    "chapters/alternatives.html": ["bnbook.figures.alternatives:axes_explorer"],
    "chapters/bn_training.html": [
        "bnbook.figures.bn_training:activations_explorer",
        "bnbook.figures.bn_training:lr_explorer",
        "bnbook.figures.bn_training:init_explorer",
        "bnbook.figures.bn_training:regularisation_explorer",
        "bnbook.figures.bn_training:batch_noise_explorer",
        "bnbook.figures.bn_training:steps_to_target_explorer",
    ],
    "chapters/why_bn_works.html": [
        "bnbook.figures.why_bn_works:stability_explorer",
        "bnbook.figures.why_bn_works:gradient_explosion_explorer",
    ],
    "chapters/production.html": ["bnbook.figures.production:tta_explorer"],
    "chapters/gpu_kernels.html": ["bnbook.figures.gpu_kernels:tiling_explorer"],
    "chapters/transform.html": ["bnbook.figures.transform:transform_explorer"],
    "chapters/train_inference.html": ["bnbook.figures.train_inference:train_vs_eval_explorer"],
    "chapters/backprop.html": [
        "bnbook.figures.backprop:backward_graph_stepper",
        "bnbook.figures.backprop:upstream_blend_explorer",
    ],
    "chapters/why_normalize.html": [
        "bnbook.figures.why_normalize:saturation_explorer",
        "bnbook.figures.why_normalize:runaway_bias_explorer",
    ],
}


def _factory(spec: str):
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)()


def _shown_png(figure) -> bytes:
    return base64.b64decode(figure.locator("img.bnfig-img").get_attribute("src").split(",", 1)[1])


def _select(page, figure, control_index: int, control, position: int) -> None:
    """Move one control to `position` as a reader would: keys on a slider, a click on a button."""
    from bnbook.figures import Slider

    if isinstance(control, Slider):
        slider = figure.locator(f'input[type="range"][data-control="{control_index}"]')
        slider.focus()
        page.keyboard.press("Home")
        for _ in range(position):
            page.keyboard.press("ArrowRight")
    else:
        figure.locator(
            f'button[data-control="{control_index}"][data-option="{position}"]'
        ).click()


def test_every_figure_is_listed() -> None:
    for relative in _book_pages():
        shown = (HTML / relative).read_text().count('class="bnfig"')
        assert shown == len(FIGURES.get(relative, [])), (
            f"{relative} shows {shown} interactive figure(s) but FIGURES lists "
            f"{FIGURES.get(relative, [])}: add it to the table"
        )


@pytest.mark.parametrize(
    ("relative", "k"), [(page, k) for page, specs in FIGURES.items() for k in range(len(specs))]
)
def test_every_figure_responds_with_the_drawing_functions_pictures(open_page, relative, k) -> None:
    """Each control moves the picture, and the picture shown is the one `draw` makes there."""
    interactive = _factory(FIGURES[relative][k])
    page, requests, errors = open_page(relative)
    figure = page.locator(".bnfig").nth(k)
    figure.scroll_into_view_if_needed()
    start = _shown_png(figure)
    assert start == interactive.png(), "the first picture must be the default state's"

    # Every control to its last position, then the first control back to its first one.
    state = dict(interactive.defaults)
    for i, control in enumerate(interactive.controls):
        last = len(control.options) - 1
        _select(page, figure, i, control, last)
        state[control.name] = control.options[last]
        assert _shown_png(figure) == interactive.png(**state), (relative, k, state)
    first = interactive.controls[0]
    _select(page, figure, 0, first, 0)
    state[first.name] = first.options[0]
    assert _shown_png(figure) == interactive.png(**state), (relative, k, state)

    readouts = figure.locator("output")
    sliders = [c for c in interactive.controls if not hasattr(c, "choices")]
    assert [readouts.nth(i).inner_text() for i in range(readouts.count())] == [
        c.text(state[c.name]) for c in sliders
    ]
    moved = {interactive.png(**{c.name: o}) for c in interactive.controls for o in c.options}
    assert len(moved) > 1, "a figure whose controls never change the picture is not interactive"
    remote = _remote(requests)
    assert not remote and not errors, (remote, errors)
