"""The GPU chapter's drawings: how the Triton kernels cut a tensor into tiles and programs.

Everything drawn here comes from the launch plan that :mod:`bnbook.kernels.triton_bn` itself
computes (:func:`~bnbook.kernels.triton_bn.geometry` and
:func:`~bnbook.kernels.triton_bn.make_plan`), not from a second description of it: the tile a
picture shows is the tile a kernel loads. :func:`tile_assignment` maps every element of a small
tensor to its tile and to the program that reads it; :func:`program_elements` lists what one
program of the split path reads, and :func:`partial_stats_reference` computes, in float64, the
``(n, mean, M2)`` that program writes, so the chapter can hold it against the kernel's own
buffer (:func:`partial_stats_kernel`).

triton is imported lazily (inside the functions), so ``import bnbook.figures`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bnbook.figures.core import InteractiveFigure, Slider, Toggle

#: The small (N, C, H, W) tensor the figure draws: 4 images, 6 channels, 3 x 4 pixels.
FIGURE_SHAPE = (4, 6, 3, 4)
#: The figure's choices of ``max_tile`` (elements per tile, a power of two).
TILE_SIZES = (8, 16, 32, 64)
_PATHS = ("fused", "split")


@dataclass(frozen=True)
class TileMap:
    """Where every element of a (B, C, S)-viewed tensor goes under one launch plan.

    Arrays are indexed ``[c, b * S + s]``: one row per channel, the channel's B*S values along
    the row in (b, s) order.

    Attributes:
        geometry: the kernels' (B, C, S) view of the tensor (sizes and strides in elements).
        plan: the launch plan ``make_plan`` chose.
        tile: (C, B*S) index of the tile (within its channel block) holding each element.
        program: (C, B*S) flat index of the program that reads it: ``cblock * n_splits + split``.
        address: (C, B*S) offset of the element in memory, in elements.
    """

    geometry: Any
    plan: Any
    tile: np.ndarray
    program: np.ndarray
    address: np.ndarray

    @property
    def lanes_used(self) -> float:
        """Fraction of the tiles' lanes that hold an element (the rest are masked off)."""
        p = self.plan
        lanes = p.n_cblocks * p.block_c * p.n_tiles * p.block_b * p.block_s
        return self.tile.size / lanes

    @property
    def n_programs(self) -> int:
        """Programs in the statistics launch: channel blocks times splits."""
        return self.plan.n_cblocks * self.plan.n_splits


def _layout_tensor(shape: tuple[int, ...], channels_last: bool) -> torch.Tensor:
    if len(shape) < 2 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be (N, C, ...) with every size >= 1, got {shape}")
    x = torch.empty(shape)
    if channels_last:
        if len(shape) != 4:
            raise ValueError(f"channels_last needs a 4-d (N, C, H, W) shape, got {shape}")
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def tile_assignment(
    shape: tuple[int, ...], channels_last: bool = False, path: str = "split",
    max_tile: int = 16, itemsize: int = 4,
) -> TileMap:
    """The tile and the program of every element, under the plan the kernels would use.

    Args:
        shape: (N, C, *spatial) of the tensor.
        channels_last: lay a 4-d tensor out channels-last (C contiguous) instead of NCHW.
        path: "fused" (one program per channel block) or "split" (a channel's tiles spread
            over several programs, merged by a second kernel).
        max_tile: elements per tile, a power of two (the kernels' ``max_tile`` option).
        itemsize: bytes per element (only the "auto" path choice depends on it).

    Returns:
        A :class:`TileMap`.
    """
    from bnbook.kernels import triton_bn

    if path not in _PATHS:
        raise ValueError(f"path must be 'fused' or 'split', got {path!r}")
    x = _layout_tensor(tuple(int(d) for d in shape), channels_last)
    g = triton_bn.geometry(x)
    p = triton_bn.make_plan(g, itemsize, path=path, max_tile=max_tile)
    b = np.arange(g.B)[:, None]  # (B, 1)
    s = np.arange(g.S)[None, :]  # (1, S)
    tile_bs = ((b // p.block_b) * p.n_s_tiles + s // p.block_s).reshape(-1)  # (B*S,)
    c = np.arange(g.C)[:, None]  # (C, 1)
    tile = np.broadcast_to(tile_bs, (g.C, g.B * g.S)).copy()  # (C, B*S)
    split = tile // p.tiles_per_prog  # (C, B*S), 0 on the fused path
    program = (c // p.block_c) * p.n_splits + split  # (C, B*S)
    address = (b * g.sb + s * g.ss).reshape(1, -1) + c * g.sc  # (C, B*S)
    return TileMap(g, p, tile, program, address)


def program_elements(tm: TileMap, cblock: int, split: int) -> dict[str, np.ndarray]:
    """What one program of the statistics launch reads: its channels and its elements.

    Args:
        tm: the tile map (from :func:`tile_assignment`).
        cblock: the program's channel block, ``program_id(0)``.
        split: the program's slice of tiles, ``program_id(1)`` (0 on the fused path).

    Returns:
        ``channels`` (the channel indices it owns, masked ones removed), ``tiles`` (the tile
        indices it walks, t0..t1-1) and ``address`` ((len(channels), k) memory offsets of its k
        elements per channel, in the order it reads them).
    """
    p = tm.plan
    if not (0 <= cblock < p.n_cblocks and 0 <= split < p.n_splits):
        raise ValueError(f"program ({cblock}, {split}) is outside the grid "
                         f"({p.n_cblocks}, {p.n_splits})")
    channels = np.arange(cblock * p.block_c, min((cblock + 1) * p.block_c, tm.geometry.C))
    t0, t1 = split * p.tiles_per_prog, min((split + 1) * p.tiles_per_prog, p.n_tiles)
    order = np.argsort(tm.tile[0], kind="stable")  # (B*S,) tile by tile, in row order within
    mine = order[(tm.tile[0][order] >= t0) & (tm.tile[0][order] < t1)]
    return {"channels": channels, "tiles": np.arange(t0, t1),
            "address": tm.address[channels][:, mine]}


def partial_stats_reference(x: torch.Tensor, tm: TileMap, cblock: int,
                            split: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (n, mean, M2) one statistics program writes, in float64, from its own elements.

    Args:
        x: the tensor, laid out as ``tm`` was computed for.
        tm: its tile map.
        cblock, split: the program's grid position.

    Returns:
        Three arrays of shape (len(channels),): count, mean and sum of squared deviations.
    """
    flat = x.detach().double().flatten()
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        flat = x.detach().double().permute(0, 2, 3, 1).flatten()  # memory order
    values = flat.numpy()[program_elements(tm, cblock, split)["address"]]  # (channels, k)
    n = np.full(values.shape[0], float(values.shape[1]))
    mean = values.mean(axis=1)  # (channels,)
    m2 = ((values - mean[:, None]) ** 2).sum(axis=1)  # (channels,)
    return n, mean, m2


def partial_stats_kernel(x: torch.Tensor, tm: TileMap) -> torch.Tensor:
    """Run the split path's first kernel with the plan in ``tm``; return its (3, splits, C) buffer.

    This launches ``_bn_fwd_partial_stats_kernel`` exactly as the forward pass does (in triton's
    interpreter on a machine without a GPU), and returns the partial statistics that the
    finalize kernel would merge: ``[0]`` counts, ``[1]`` means, ``[2]`` M2.
    """
    import contextlib

    from bnbook import kernels
    from bnbook.kernels import triton_bn

    g, p = tm.geometry, tm.plan
    if p.fused:
        raise ValueError("the fused path writes no partial statistics; use path='split'")
    part = torch.empty((3, p.n_splits, g.C), dtype=torch.float32, device=x.device)
    # Launch as triton_bn's own forward does: inside its interpreter context where it has one.
    env = getattr(kernels, "interpreter_env", None)
    with env(triton_bn.INTERPRET) if env is not None else contextlib.nullcontext():
        triton_bn._bn_fwd_partial_stats_kernel[(p.n_cblocks, p.n_splits)](
            x, part[0], part[1], part[2], g.B, g.C, g.S, g.sb, g.sc, g.ss, p.n_s_tiles,
            p.n_tiles, p.tiles_per_prog, BLOCK_B=p.block_b, BLOCK_C=p.block_c,
            BLOCK_S=p.block_s, num_warps=p.num_warps)
    return part


def launches(tm: TileMap, training: bool = True) -> list[tuple[str, tuple[int, ...], str]]:
    """The kernels one forward pass launches under this plan, in order: (name, grid, reads).

    Args:
        tm: the tile map.
        training: statistics from the batch (True) or the running statistics (False).
    """
    p = tm.plan
    if p.fused:
        reads = "x twice (statistics, then normalise), from L2 the second time if it fits"
        return [("_bn_fwd_fused_kernel", (p.n_cblocks,), reads)]
    out = []
    if training:
        out.append(("_bn_fwd_partial_stats_kernel", (p.n_cblocks, p.n_splits), "x once"))
    out.append(("_bn_fwd_finalize_kernel", (1,), "C-sized vectors"))
    out.append(("_bn_fwd_normalize_kernel", (p.n_cblocks, p.n_splits), "x once, writes y"))
    return out


def draw_tiling(fig: Figure, layout: str, path: str, max_tile: float) -> None:
    """Left: each channel's values coloured by program, tiles outlined. Right: memory order.

    Args:
        fig: the Figure to draw on.
        layout: "NCHW" or "channels_last".
        path: "fused" or "split".
        max_tile: elements per tile.
    """
    tm = tile_assignment(FIGURE_SHAPE, layout == "channels_last", path, int(max_tile))
    g, p = tm.geometry, tm.plan
    cmap = _program_colours(tm.n_programs)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1.0]})
    fig.subplots_adjust(left=0.07, right=0.99, top=0.80, bottom=0.14, wspace=0.18)

    # Left: channels as rows, (b, s) along the row; colour = program, outline = tile.
    left.imshow(tm.program, cmap=cmap, vmin=-0.5, vmax=tm.n_programs - 0.5,
                aspect="auto", interpolation="nearest")
    for c0 in range(0, g.C, p.block_c):
        rows = min(p.block_c, g.C - c0)
        for t in range(p.n_tiles):
            cols = np.flatnonzero(tm.tile[0] == t)
            for run in _runs(cols):
                left.add_patch(Rectangle((run[0] - 0.5, c0 - 0.5), len(run), rows,
                                         fill=False, lw=1.2, ec="black"))
    for b in range(1, g.B):
        left.axvline(b * g.S - 0.5, color="white", lw=0.6, ls=":")
    left.set_yticks(range(g.C))
    left.set_ylabel("channel c")
    left.set_xlabel(f"the channel's {g.B * g.S} values, (b, s) order  (B={g.B}, S={g.S})")
    left.set_title("colour: program that reads it; box: one tile", fontsize=9)

    # Right: the same colours in memory order, 24 elements per row.
    width = 24
    by_address = np.empty(tm.address.size, dtype=int)
    by_address[tm.address.ravel()] = tm.program.ravel()
    right.imshow(by_address.reshape(-1, width), cmap=cmap, vmin=-0.5,
                 vmax=tm.n_programs - 0.5, aspect="auto", interpolation="nearest")
    right.set_xlabel(f"address mod {width} (elements)")
    right.set_ylabel(f"address // {width}")
    right.set_title("memory, in address order", fontsize=9)

    kernels = launches(tm)
    tile_text = f"tile {p.block_b}x{p.block_c}x{p.block_s} (B x C x S)"
    fig.suptitle(
        f"{layout} {tuple(FIGURE_SHAPE)}, {path} path, max_tile {int(max_tile)}: {tile_text}, "
        f"{p.n_tiles} tiles per channel block, {tm.lanes_used:.0%} of lanes used"
        f"\n{tm.n_programs} statistics program(s) = "
        f"{p.n_cblocks} channel block(s) x {p.n_splits} split(s); "
        f"{len(kernels)} launch(es): " + ", ".join(k[0].removeprefix("_bn_fwd_").removesuffix(
            "_kernel") for k in kernels),
        fontsize=9)


def _runs(cols: np.ndarray) -> list[np.ndarray]:
    """Split sorted column indices into runs of consecutive values."""
    if cols.size == 0:
        return []
    return np.split(cols, np.flatnonzero(np.diff(cols) != 1) + 1)


def _program_colours(n: int) -> Any:
    from matplotlib.colors import ListedColormap

    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
            "#c5b0d5", "#c49c94"]
    return ListedColormap([base[i % len(base)] for i in range(max(n, 1))])


def tiling_explorer() -> InteractiveFigure:
    """The tiling figure: layout and path toggles, a slider for the tile size (16 states)."""
    return InteractiveFigure(
        draw_tiling,
        controls=[
            Toggle("layout", "layout", (("NCHW", "NCHW"), ("channels_last", "channels_last")),
                   default="NCHW"),
            Toggle("path", "plan", (("fused", "fused"), ("split", "split")), default="split"),
            Slider("max_tile", "max elements per tile", TILE_SIZES, default=16, fmt="{:.0f}"),
        ],
        figsize=(9.0, 3.6),
        alt="Left: a 4x6x3x4 tensor drawn as one row per channel, each value coloured by the "
        "Triton program that reads it and each tile outlined. Right: the same colours in memory "
        "order. Toggles choose NCHW or channels_last and the fused or split plan; a slider "
        "chooses the tile size.",
    )
