"""The figure machinery: a pure drawing function, a live form and a static-HTML form.

An :class:`InteractiveFigure` wraps a *drawing function* ``draw(fig, **params)`` that paints one
state of the figure onto a fresh :class:`matplotlib.figure.Figure` and touches nothing else. From
it the class makes two forms:

* **live** (JupyterLab, with a kernel): ipywidgets controls; every change redraws the picture.
* **static** (the HTML book, no kernel, no network): every state on the controls' grid is drawn
  once at build time and embedded as a PNG; a few lines of inline JavaScript swap the picture when
  a slider moves or a button is pressed. ipywidgets' embedded state alone cannot do this: its
  slider moves, but nothing redraws without a kernel.

Displaying the object hands Jupyter both forms in one mime bundle. JupyterLab prefers the widget
view; the book's ``_config.yml`` tells myst-nb to drop the widget view for HTML, so the static
form is what a reader of the book gets.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DrawFn = Callable[..., None]

# PNG metadata and style are pinned so that one state yields the same bytes in any process:
# a notebook kernel (whose inline backend changes rcParams), the book build and the tests.
_PNG_METADATA = {"Software": None}
_RC = {"font.size": 10.0, "figure.facecolor": "white", "savefig.facecolor": "white"}


@dataclass(frozen=True)
class Slider:
    """A numeric control whose positions are the grid the static form precomputes.

    Args:
        name: the keyword the drawing function receives.
        label: what the reader sees beside the slider (plain text or a Unicode symbol).
        values: the positions, in increasing order.
        default: the starting position; must be one of ``values``.
        fmt: how a value is printed beside the slider.
    """

    name: str
    label: str
    values: tuple[float, ...]
    default: float
    fmt: str = "{:.2f}"

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.values)
        object.__setattr__(self, "values", values)
        if len(values) < 2:
            raise ValueError(f"Slider {self.name!r}: values needs at least 2 positions")
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"Slider {self.name!r}: values must be strictly increasing")
        object.__setattr__(self, "default", float(self.default))
        self.index_of(self.default)  # raises if the default is off the grid

    @classmethod
    def range(
        cls, name: str, label: str, start: float, stop: float, step: float, default: float,
        fmt: str = "{:.2f}",
    ) -> Slider:
        """A slider over ``start, start+step, ..., stop`` (both ends included)."""
        if step <= 0:
            raise ValueError(f"Slider {name!r}: step must be positive, got {step}")
        count = round((stop - start) / step) + 1
        values = tuple(round(start + i * step, 10) for i in range(count))
        return cls(name, label, values, default, fmt)

    @property
    def options(self) -> tuple[Any, ...]:
        return self.values

    def index_of(self, value: float) -> int:
        for i, v in enumerate(self.values):
            if math.isclose(v, float(value), rel_tol=1e-9, abs_tol=1e-12):
                return i
        raise ValueError(
            f"Slider {self.name!r}: {value!r} is not one of its positions {list(self.values)}"
        )

    def text(self, value: Any) -> str:
        return self.fmt.format(value)


@dataclass(frozen=True)
class Toggle:
    """A choice among a few named options (shown as a row of buttons).

    Args:
        name: the keyword the drawing function receives.
        label: what the reader sees before the buttons.
        choices: ``(button text, value)`` pairs.
        default: the starting value; must be one of the choices' values.
    """

    name: str
    label: str
    choices: tuple[tuple[str, Any], ...]
    default: Any

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise ValueError(f"Toggle {self.name!r}: choices needs at least 2 options")
        self.index_of(self.default)

    @property
    def options(self) -> tuple[Any, ...]:
        return tuple(value for _, value in self.choices)

    def index_of(self, value: Any) -> int:
        for i, option in enumerate(self.options):
            if option == value:
                return i
        raise ValueError(
            f"Toggle {self.name!r}: {value!r} is not one of its values {list(self.options)}"
        )

    def text(self, value: Any) -> str:
        return self.choices[self.index_of(value)][0]


Control = Slider | Toggle


@dataclass(frozen=True)
class Preset:
    """A button that moves some controls to given values (e.g. "set to identity")."""

    label: str
    values: Mapping[str, Any] = field(default_factory=dict)


class InteractiveFigure:
    """One figure of the book in its three forms: a picture, a live widget, a static page.

    Args:
        draw: ``draw(fig, **params)`` paints the state ``params`` onto ``fig``; it must be pure
            (same params, same picture) and must not use pyplot's global state.
        controls: the sliders and toggles, one per keyword of ``draw``.
        presets: buttons that set several controls at once.
        figsize: the picture's size in inches.
        dpi: resolution of the PNGs (both forms use the same pictures).
        alt: a text description of the figure for screen readers.
    """

    def __init__(
        self,
        draw: DrawFn,
        controls: Sequence[Control],
        presets: Sequence[Preset] = (),
        *,
        figsize: tuple[float, float] = (8.0, 3.2),
        dpi: int = 80,
        alt: str = "",
    ) -> None:
        if not callable(draw):
            raise TypeError(f"draw must be callable, got {type(draw).__name__}")
        if not controls:
            raise ValueError("controls must name at least one Slider or Toggle")
        names = [c.name for c in controls]
        if len(set(names)) != len(names):
            raise ValueError(f"controls must have distinct names, got {names}")
        self.draw = draw
        self.controls: tuple[Control, ...] = tuple(controls)
        self._by_name = {c.name: c for c in self.controls}
        for preset in presets:
            for name, value in preset.values.items():
                if name not in self._by_name:
                    raise ValueError(
                        f"Preset {preset.label!r} sets unknown control {name!r}; "
                        f"controls are {names}"
                    )
                self._by_name[name].index_of(value)
        self.presets = tuple(presets)
        self.figsize = figsize
        self.dpi = dpi
        self.alt = alt

    # -- one state ---------------------------------------------------------------------------
    @property
    def defaults(self) -> dict[str, Any]:
        return {c.name: c.default for c in self.controls}

    def _state(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(params) - set(self._by_name)
        if unknown:
            raise ValueError(f"unknown figure parameter(s) {sorted(unknown)}; "
                             f"controls are {list(self._by_name)}")
        return {**self.defaults, **params}

    def render(self, **params: Any) -> Figure:
        """Draw one state onto a new Figure (not registered with pyplot) and return it."""
        state = self._state(params)
        with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
            # A fixed layout: the constrained-layout solver would double the cost of every frame.
            fig = Figure(figsize=self.figsize, dpi=self.dpi)
            FigureCanvasAgg(fig)
            self.draw(fig, **state)
        return fig

    def png(self, **params: Any) -> bytes:
        """The PNG bytes of one state (the unit both forms are built from)."""
        buffer = io.BytesIO()
        fig = self.render(**params)
        with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
            fig.savefig(buffer, format="png", dpi=self.dpi, metadata=_PNG_METADATA)
        return buffer.getvalue()

    # -- the static form ---------------------------------------------------------------------
    def states(self) -> list[tuple[int, ...]]:
        """Every combination of control positions, as index tuples."""
        return list(itertools.product(*(range(len(c.options)) for c in self.controls)))

    def frames(self) -> tuple[list[str], dict[str, int]]:
        """Render every state once. Returns the distinct PNGs (base64) and state key -> frame."""
        pictures: list[str] = []
        seen: dict[bytes, int] = {}
        index: dict[str, int] = {}
        for state in self.states():
            params = {c.name: c.options[i] for c, i in zip(self.controls, state, strict=True)}
            data = self.png(**params)
            if data not in seen:  # states that draw the same picture share one frame
                seen[data] = len(pictures)
                pictures.append(base64.b64encode(data).decode("ascii"))
            index[",".join(map(str, state))] = seen[data]
        return pictures, index

    def static_html(self) -> str:
        """A self-contained HTML block: pictures, controls and the script that swaps them."""
        pictures, index = self.frames()
        start = [c.index_of(c.default) for c in self.controls]
        payload = {
            "frames": pictures,
            "index": index,
            "start": start,
            "labels": [[c.text(o) for o in c.options] for c in self.controls],
        }
        rows = []
        for k, control in enumerate(self.controls):
            label = html.escape(control.label)
            if isinstance(control, Slider):
                rows.append(
                    f'<label class="bnfig-row"><span class="bnfig-label">{label}</span>'
                    f'<input type="range" min="0" max="{len(control.values) - 1}" step="1" '
                    f'value="{start[k]}" data-control="{k}" aria-label="{label}">'
                    f'<output data-readout="{k}">{html.escape(control.text(control.default))}'
                    "</output></label>"
                )
            else:
                buttons = "".join(
                    f'<button type="button" data-control="{k}" data-option="{i}" '
                    f'aria-pressed="{"true" if i == start[k] else "false"}">'
                    f"{html.escape(text)}</button>"
                    for i, (text, _) in enumerate(control.choices)
                )
                rows.append(
                    f'<div class="bnfig-row" role="group" aria-label="{label}">'
                    f'<span class="bnfig-label">{label}</span>{buttons}</div>'
                )
        for preset in self.presets:
            target = {
                str(self.controls.index(self._by_name[name])): self._by_name[name].index_of(value)
                for name, value in preset.values.items()
            }
            rows.append(
                f'<div class="bnfig-row"><button type="button" class="bnfig-preset" '
                f"data-preset='{html.escape(json.dumps(target))}'>"
                f"{html.escape(preset.label)}</button></div>"
            )
        first = index[",".join(map(str, start))]
        data = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
        return (
            '<div class="bnfig">'
            f"<style>{_STATIC_CSS}</style>"
            f'<img class="bnfig-img" alt="{html.escape(self.alt)}" '
            f'src="data:image/png;base64,{pictures[first]}">'
            f'<div class="bnfig-controls">{"".join(rows)}</div>'
            f'<script type="application/json" class="bnfig-data">{data}</script>'
            f"<script>{_STATIC_JS}</script>"
            "</div>"
        )

    # -- the live form -----------------------------------------------------------------------
    def widget(self) -> Any:
        """The live ipywidgets form: controls plus an image redrawn on every change."""
        import ipywidgets as widgets

        image = widgets.Image(value=self.png(), format="png")
        inputs: dict[str, Any] = {}
        for control in self.controls:
            if isinstance(control, Slider):
                inputs[control.name] = widgets.SelectionSlider(
                    options=[(control.text(v), v) for v in control.values],
                    value=control.default,
                    description=control.label,
                    continuous_update=True,
                    style={"description_width": "initial"},
                    layout=widgets.Layout(width="420px"),
                )
            else:
                inputs[control.name] = widgets.ToggleButtons(
                    options=list(control.choices),
                    value=control.default,
                    description=control.label,
                    style={"description_width": "initial"},
                )

        def redraw(_change: Any = None) -> None:
            image.value = self.png(**{name: w.value for name, w in inputs.items()})

        for w in inputs.values():
            w.observe(redraw, names="value")

        buttons = []
        for preset in self.presets:
            button = widgets.Button(description=preset.label,
                                    layout=widgets.Layout(width="auto"))

            def apply(_button: Any, values: Mapping[str, Any] = preset.values) -> None:
                with _hold(inputs.values(), redraw):
                    for name, value in values.items():
                        inputs[name].value = value

            button.on_click(apply)
            buttons.append(button)
        return widgets.VBox([image, *inputs.values(), widgets.HBox(buttons)])

    # -- Jupyter display ---------------------------------------------------------------------
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        view = self.widget()
        bundle = dict(view._repr_mimebundle_())
        bundle["text/html"] = self.static_html()
        bundle["text/plain"] = f"<{type(self).__name__}: {self.alt or self.draw.__name__}>"
        return bundle

    def __repr__(self) -> str:
        names = ", ".join(c.name for c in self.controls)
        return f"{type(self).__name__}({self.draw.__name__}, controls=[{names}])"


class _hold:
    """Run one redraw after several widget changes instead of one per change."""

    def __init__(self, inputs: Any, redraw: Callable[..., None]) -> None:
        self.inputs = list(inputs)
        self.redraw = redraw

    def __enter__(self) -> None:
        for w in self.inputs:
            w.unobserve(self.redraw, names="value")

    def __exit__(self, *exc: object) -> None:
        for w in self.inputs:
            w.observe(self.redraw, names="value")
        self.redraw()


_STATIC_CSS = (
    ".bnfig{margin:1em 0;font-size:0.9em}"
    ".bnfig-img{max-width:100%;height:auto;display:block}"
    ".bnfig-row{display:flex;align-items:center;gap:0.6em;margin:0.3em 0}"
    ".bnfig-label{min-width:7em}"
    ".bnfig-row input[type=range]{width:18em}"
    ".bnfig button{padding:0.15em 0.7em;border:1px solid #888;border-radius:3px;"
    "background:#f4f4f4;cursor:pointer}"
    ".bnfig button[aria-pressed=true]{background:#2a6ebb;color:#fff;border-color:#2a6ebb}"
)

# The static form's behaviour: find the state the controls describe, show its picture.
_STATIC_JS = """
(function () {
  var root = document.currentScript.closest('.bnfig');
  var data = JSON.parse(root.querySelector('.bnfig-data').textContent);
  var state = data.start.slice();
  var img = root.querySelector('.bnfig-img');
  function show() {
    img.src = 'data:image/png;base64,' + data.frames[data.index[state.join(',')]];
    root.querySelectorAll('input[type=range]').forEach(function (el) {
      var k = +el.dataset.control;
      el.value = state[k];
      root.querySelector('[data-readout="' + k + '"]').textContent = data.labels[k][state[k]];
    });
    root.querySelectorAll('button[data-option]').forEach(function (el) {
      var on = state[+el.dataset.control] === +el.dataset.option;
      el.setAttribute('aria-pressed', on ? 'true' : 'false');
    });
  }
  root.querySelectorAll('input[type=range]').forEach(function (el) {
    el.addEventListener('input', function () { state[+el.dataset.control] = +el.value; show(); });
  });
  root.querySelectorAll('button[data-option]').forEach(function (el) {
    el.addEventListener('click', function () {
      state[+el.dataset.control] = +el.dataset.option; show();
    });
  });
  root.querySelectorAll('button[data-preset]').forEach(function (el) {
    el.addEventListener('click', function () {
      var target = JSON.parse(el.dataset.preset);
      Object.keys(target).forEach(function (k) { state[+k] = target[k]; });
      show();
    });
  });
})();
"""
