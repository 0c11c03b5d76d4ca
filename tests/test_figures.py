"""The figure machinery: the static form holds every state, the live form redraws, clear errors."""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import pkgutil
import re

import numpy as np
import pytest
from matplotlib.figure import Figure

import figure_html
from bnbook import figures
from bnbook.figures import InteractiveFigure, Preset, Slider, Toggle


def _draw_line(fig: Figure, slope: float, style: str) -> None:
    ax = fig.subplots()
    ax.plot([0, 1], [0, slope], style)
    ax.set_ylim(-2, 2)


@pytest.fixture
def small() -> InteractiveFigure:
    return InteractiveFigure(
        _draw_line,
        [Slider.range("slope", "slope", -1.0, 1.0, 1.0, default=0.0),
         Toggle("style", "style", (("solid", "-"), ("dashed", "--")), default="-")],
        presets=[Preset("steep dashed", {"slope": 1.0, "style": "--"})],
        figsize=(2, 2),
        dpi=40,
    )




def test_static_form_holds_every_state_as_its_own_picture(small: InteractiveFigure) -> None:
    payload = figure_html.payload(small.static_html())
    assert len(payload["index"]) == 3 * 2  # every combination of positions
    for state, frame in payload["index"].items():
        i, j = map(int, state.split(","))
        expected = small.png(slope=(-1.0, 0.0, 1.0)[i], style=("-", "--")[j])
        assert base64.b64decode(payload["frames"][frame]) == expected
    # Different states draw different pictures, so moving a control changes what is shown.
    assert len(set(payload["index"].values())) == 6


def test_static_form_starts_at_defaults_and_encodes_presets(small: InteractiveFigure) -> None:
    html = small.static_html()
    payload = figure_html.payload(html)
    assert payload["start"] == [1, 0]
    first = re.search(r'class="bnfig-img"[^>]*src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(first) == small.png()
    preset = re.search(r"data-preset='([^']+)'", html).group(1)
    assert json.loads(preset.replace("&quot;", '"')) == {"0": 2, "1": 1}
    assert "http://" not in html and "https://" not in html  # nothing to fetch


def test_identical_states_share_one_frame() -> None:
    fig = InteractiveFigure(lambda f, a: _draw_line(f, 0.5, "-"),
                            [Slider("a", "a", (0.0, 1.0, 2.0), 0.0)], figsize=(2, 2), dpi=40)
    payload = figure_html.payload(fig.static_html())
    assert len(payload["frames"]) == 1 and len(payload["index"]) == 3


def test_live_form_redraws_on_change_and_on_preset(small: InteractiveFigure) -> None:
    box = small.widget()
    image, slope, style, buttons = box.children
    assert image.value == small.png()
    slope.value = 1.0
    assert image.value == small.png(slope=1.0)
    style.value = "--"
    assert image.value == small.png(slope=1.0, style="--")
    slope.value, style.value = 0.0, "-"
    buttons.children[0].click()
    assert (slope.value, style.value) == (1.0, "--")
    assert image.value == small.png(slope=1.0, style="--")


def test_mime_bundle_offers_live_and_static_forms(small: InteractiveFigure) -> None:
    bundle = small._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"].startswith('<div class="bnfig">')


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Slider("g", "g", (0.0, 1.0), default=0.5), "0.5 is not one of its positions"),
        (lambda: Slider("g", "g", (1.0, 0.0), default=1.0), "strictly increasing"),
        (lambda: Slider.range("g", "g", 0, 1, 0, default=0), "step must be positive"),
        (lambda: Toggle("t", "t", (("a", 1),), default=1), "at least 2"),
        (lambda: InteractiveFigure(_draw_line, []), "controls must name"),
        (lambda: InteractiveFigure("draw", [Slider("g", "g", (0.0, 1.0), 0.0)]), "callable"),
        (lambda: InteractiveFigure(_draw_line, [Slider("slope", "s", (0.0, 1.0), 0.0)],
                                   presets=[Preset("p", {"gamma": 1.0})]), "unknown control"),
    ],
)
def test_bad_figure_definitions_are_named(make, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_render_rejects_unknown_parameters(small: InteractiveFigure) -> None:
    with pytest.raises(ValueError, match="unknown figure parameter"):
        small.png(gamma=1.0)


def test_transform_explorer_identity_preset_recovers_the_raw_batch() -> None:
    x = figures.transform_batch()
    # The batch is built so that γ = σ, β = μ (a grid point, hence a preset) is the identity.
    assert x.mean() == pytest.approx(figures.TRANSFORM_MEAN, abs=1e-12)
    assert x.std() == pytest.approx(figures.TRANSFORM_STD, abs=1e-12)
    explorer = figures.transform_explorer()
    identity = explorer.presets[0].values
    x_hat = (x - x.mean()) / np.sqrt(x.var() + 1e-5)
    y = identity["gamma"] * x_hat + identity["beta"]
    np.testing.assert_allclose(y, x, atol=2e-5)
    assert explorer.png(**identity) != explorer.png()


_BOOK_FIGURES = sorted(n for n in figures.__all__ if n.endswith(("_explorer", "_stepper")))


def _figure_factories() -> dict[str, object]:
    """Every public ``*_explorer``/``*_stepper`` of every bnbook.figures module, exported or not.

    A chapter's new figure module is covered by the live test below from the moment it exists,
    before it is re-exported from ``bnbook.figures``. Factories that need data (training curves
    computed by their chapter) take arguments and are left to their own module's tests.
    """
    found = {}
    for info in pkgutil.iter_modules(figures.__path__):
        module = importlib.import_module(f"bnbook.figures.{info.name}")
        for name, value in vars(module).items():
            if name.startswith("_") or not name.endswith(("_explorer", "_stepper")):
                continue
            if not callable(value) or getattr(value, "__module__", "") != module.__name__:
                continue
            required = [p for p in inspect.signature(value).parameters.values()
                        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                               p.POSITIONAL_OR_KEYWORD,
                                                               p.KEYWORD_ONLY)]
            if not required:
                found[f"{info.name}.{name}"] = value
    return found


_FACTORIES = _figure_factories()


def test_every_figure_factory_is_exported() -> None:
    assert len(_BOOK_FIGURES) >= 6, _BOOK_FIGURES
    exported_without_args = {n for n in _BOOK_FIGURES
                             if not any(p.default is p.empty for p in
                                        inspect.signature(getattr(figures, n)).parameters.values())}
    assert {k.split(".")[1] for k in _FACTORIES} >= exported_without_args


@pytest.mark.parametrize("name", sorted(_FACTORIES))
def test_every_book_figure_is_live_in_jupyter(name: str) -> None:
    """What JupyterLab runs: each control of each figure redraws the picture from the code."""
    interactive = _FACTORIES[name]()
    box = interactive.widget()
    image, *inputs = box.children[: 1 + len(interactive.controls)]
    assert image.value == interactive.png()
    state = dict(interactive.defaults)
    for control, widget in zip(interactive.controls, inputs, strict=True):
        state[control.name] = widget.value = control.options[-1]
        assert image.value == interactive.png(**state), (name, state)
    buttons = box.children[-1].children
    for preset, button in zip(interactive.presets, buttons, strict=True):
        button.click()
        state.update(preset.values)
        assert image.value == interactive.png(**state), (name, preset.label)
