"""The GPU chapter's tiling drawings describe the launch the Triton kernels really make.

The tile map is checked against torch's own strides (addresses) and the partition it must be
(every element read by exactly one program, once); the worked example's float64 recomputation of
one program's partial statistics is checked against the buffer the real kernel writes, in
triton's interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnbook.figures import gpu_kernels as gk

_CASES = [((8, 4, 5, 7), False, 64), ((4, 6, 3, 4), True, 16), ((5, 3, 2, 9), False, 8),
          ((3, 5, 2, 3), True, 8), ((37, 6), False, 16)]


def _tensor(shape: tuple[int, ...], channels_last: bool) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 10
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize(("shape", "channels_last", "max_tile"), _CASES)
@pytest.mark.parametrize("path", ["fused", "split"])
def test_every_element_is_read_by_one_program_at_its_torch_address(
    shape: tuple[int, ...], channels_last: bool, max_tile: int, path: str
) -> None:
    x = _tensor(shape, channels_last)
    tm = gk.tile_assignment(shape, channels_last, path, max_tile)
    n_c = shape[1]
    per_channel = x.numel() // n_c
    assert tm.address.shape == (n_c, per_channel)
    assert sorted(tm.address.ravel().tolist()) == list(range(x.numel()))  # a permutation
    # The address of (b, c, s) is what torch's strides say, in both layouts.
    idx = np.unravel_index(np.arange(x.numel()), x.shape)
    torch_addr = sum(i * st for i, st in zip(idx, x.stride(), strict=True))
    chan = idx[1]
    for c in range(n_c):
        assert sorted(tm.address[c].tolist()) == sorted(torch_addr[chan == c].tolist())
    # The programs' element lists partition the tensor.
    seen = []
    p = tm.plan
    for cb in range(p.n_cblocks):
        for sp in range(p.n_splits):
            seen.extend(gk.program_elements(tm, cb, sp)["address"].ravel().tolist())
    assert sorted(seen) == list(range(x.numel()))
    assert tm.program.max() + 1 == tm.n_programs
    assert 0 < tm.lanes_used <= 1


@pytest.mark.parametrize(("shape", "channels_last", "max_tile"), _CASES)
def test_worked_example_matches_the_kernels_partial_statistics(
    shape: tuple[int, ...], channels_last: bool, max_tile: int
) -> None:
    x = _tensor(shape, channels_last)
    tm = gk.tile_assignment(shape, channels_last, "split", max_tile)
    part = gk.partial_stats_kernel(x, tm).double().numpy()  # (3, splits, C)
    p = tm.plan
    for cb in range(p.n_cblocks):
        channels = gk.program_elements(tm, cb, 0)["channels"]
        for sp in range(p.n_splits):
            n, mean, m2 = gk.partial_stats_reference(x, tm, cb, sp)
            np.testing.assert_array_equal(part[0, sp, channels], n)
            np.testing.assert_allclose(part[1, sp, channels], mean, rtol=1e-6)
            np.testing.assert_allclose(part[2, sp, channels], m2, rtol=1e-4)
    # The splits together hold the whole channel: counts add up to B * S.
    np.testing.assert_array_equal(part[0].sum(axis=0), x.numel() // shape[1])


def test_launches_name_one_kernel_fused_and_three_split() -> None:
    fused = gk.tile_assignment((8, 4, 5, 7), False, "fused", 64)
    split = gk.tile_assignment((8, 4, 5, 7), False, "split", 64)
    assert [k[0] for k in gk.launches(fused)] == ["_bn_fwd_fused_kernel"]
    assert [k[0] for k in gk.launches(split)] == [
        "_bn_fwd_partial_stats_kernel", "_bn_fwd_finalize_kernel", "_bn_fwd_normalize_kernel"]
    assert len(gk.launches(split, training=False)) == 2
    assert fused.plan.n_splits == 1 and split.plan.n_splits > 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="path"):
        gk.tile_assignment((2, 3, 4), path="auto")
    with pytest.raises(ValueError, match="shape"):
        gk.tile_assignment((2, 0, 4))
    with pytest.raises(ValueError, match="channels_last"):
        gk.tile_assignment((2, 3, 4), channels_last=True)
    tm = gk.tile_assignment((8, 4, 5, 7), False, "split", 64)
    with pytest.raises(ValueError, match="outside the grid"):
        gk.program_elements(tm, tm.plan.n_cblocks, 0)
    fused = gk.tile_assignment((8, 4, 5, 7), False, "fused", 64)
    with pytest.raises(ValueError, match="fused"):
        gk.partial_stats_kernel(_tensor((8, 4, 5, 7), False), fused)


def test_figure_states_differ_and_stay_within_the_budget() -> None:
    explorer = gk.tiling_explorer()
    assert len(explorer.states()) == 2 * 2 * len(gk.TILE_SIZES)
    pictures = {explorer.png(layout=lay, path=path, max_tile=8)
                for lay in ("NCHW", "channels_last") for path in ("fused", "split")}
    assert len(pictures) == 4
