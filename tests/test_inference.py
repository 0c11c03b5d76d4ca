"""bnbook.inference against independent references, and the chapter's figure against torch.

References: statistics computed by hand in float64, torch.optim.swa_utils.update_bn,
torch.nn.utils.fusion.fuse_conv_bn_eval / fuse_linear_bn_eval, and the unfolded network itself.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from bnbook import modules
from bnbook.figures import train_inference as ti_fig
from bnbook.inference import eval_mode, fold_bn, fold_model, is_batch_norm, recalibrate


def _flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _randomise_bn(bn: nn.Module, seed: int) -> nn.Module:
    """Give a batch-norm layer non-trivial parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    dtype = bn.running_mean.dtype
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=dtype) * 2)
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=dtype) * 3 + 0.1)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(c, generator=g, dtype=dtype))
            bn.bias.copy_(torch.randn(c, generator=g, dtype=dtype))
    return bn


# -- is_batch_norm ----------------------------------------------------------------------------

def test_is_batch_norm_recognises_torch_and_bnbook_layers_only() -> None:
    yes = [nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3), nn.SyncBatchNorm(3),
           nn.LazyBatchNorm2d(), modules.BatchNorm1d(3), modules.BatchNorm2d(3),
           modules.BatchNorm3d(3)]
    no = [nn.InstanceNorm2d(3), nn.LayerNorm(3), nn.GroupNorm(1, 3), nn.Linear(3, 3),
          nn.Sequential(nn.BatchNorm1d(3))]
    assert all(is_batch_norm(m) for m in yes)
    assert not any(is_batch_norm(m) for m in no)


# -- eval_mode --------------------------------------------------------------------------------

def _mixed_model() -> nn.Sequential:
    """A model in training mode except for one frozen batch-norm layer, kept in eval."""
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5),
                          nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)))
    model.train()
    model[1].eval()
    return model


def test_eval_mode_restores_each_submodules_own_flag() -> None:
    model = _mixed_model()
    before = _flags(model)
    assert before["1"] is False and before["0"] is True  # really mixed
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(_flags(model).values())
    assert _flags(model) == before
    # The naive recipe, model.train() on exit, would unfreeze the frozen layer:
    model.eval()
    model.train()
    assert _flags(model) != before


def test_eval_mode_keeps_a_model_in_eval_and_restores_after_an_exception() -> None:
    model = _mixed_model().eval()
    with eval_mode(model):
        pass
    assert not any(_flags(model).values())

    model = _mixed_model()
    before = _flags(model)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert _flags(model) == before


def test_eval_mode_nests() -> None:
    model = _mixed_model()
    before = _flags(model)
    with eval_mode(model):
        model[4].train()  # someone switches a part back on inside the block
        with eval_mode(model):
            assert not any(_flags(model).values())
        assert model[4].training and model[4][1].training and not model[0].training
    assert _flags(model) == before


def test_eval_mode_uses_running_statistics_inside() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    bn(torch.randn(16, 3) * 2 + 1)
    x = torch.randn(5, 3)
    with eval_mode(bn):
        y = bn(x)
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(y, expected * bn.weight + bn.bias)
    assert bn.training


def test_eval_mode_rejects_a_non_module() -> None:
    not_a_module: Any = "model"
    with pytest.raises(TypeError, match="torch.nn.Module"), eval_mode(not_a_module):
        pass


# -- recalibrate ------------------------------------------------------------------------------

def _two_bn_model(bn_cls: type = nn.BatchNorm1d) -> nn.Sequential:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), bn_cls(4, momentum=0.3), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(4, 3), bn_cls(3))
    model.double()
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
            bn.running_mean.fill_(7.0)  # stale values that recalibration must replace
            bn.running_var.fill_(9.0)
    return model


def _expected_stats(model: nn.Sequential, batches: list[torch.Tensor]) -> list[tuple]:
    """Mean of batch means and mean of unbiased batch variances, computed by hand.

    The second layer sees the first normalised with its *batch* statistics (it is in training
    mode during the pass) and dropout switched off.
    """
    lin1, bn1, lin2 = model[0], model[1], model[4]
    first, second = [], []
    with torch.no_grad():
        for x in batches:
            h = x @ lin1.weight.T + lin1.bias  # (N, 4)
            first.append((h.mean(0), h.var(0, unbiased=True)))
            h_hat = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn1.eps)
            z = torch.relu(h_hat * bn1.weight + bn1.bias) @ lin2.weight.T + lin2.bias  # (N, 3)
            second.append((z.mean(0), z.var(0, unbiased=True)))
    out = []
    for stats in (first, second):
        out.append((torch.stack([m for m, _ in stats]).mean(0),
                    torch.stack([v for _, v in stats]).mean(0)))
    return out


@pytest.mark.parametrize("bn_cls", [nn.BatchNorm1d, modules.BatchNorm1d])
def test_recalibrate_gives_the_exact_cumulative_averages(bn_cls: type) -> None:
    model = _two_bn_model(bn_cls)
    model.train()
    model[5].eval()  # a frozen layer: it must be recalibrated too, and stay in eval after
    before = _flags(model)
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(n, 5, generator=g, dtype=torch.float64) * 3 + 1 for n in (8, 8, 8, 8)]

    assert recalibrate(model, batches) is model

    (m1, v1), (m2, v2) = _expected_stats(model, batches)
    torch.testing.assert_close(model[1].running_mean, m1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[1].running_var, v1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[5].running_mean, m2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[5].running_var, v2, rtol=1e-12, atol=1e-12)
    # Equal sizes: the mean is the mean of all the data; the variance is NOT its variance.
    everything = torch.cat(batches) @ model[0].weight.T + model[0].bias
    torch.testing.assert_close(model[1].running_mean, everything.mean(0))
    assert (model[1].running_var - everything.var(0)).abs().max() > 1e-3
    assert model[1].momentum == 0.3 and model[5].momentum == 0.1
    assert model[1].num_batches_tracked.item() == 4
    assert _flags(model) == before


def test_recalibrate_weights_batches_equally_whatever_their_size() -> None:
    model = _two_bn_model()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, 5, generator=g, dtype=torch.float64) + s
               for n, s in ((2, 0.0), (30, 4.0), (5, -2.0))]
    recalibrate(model, batches)
    (m1, v1), _ = _expected_stats(model, batches)
    torch.testing.assert_close(model[1].running_mean, m1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[1].running_var, v1, rtol=1e-12, atol=1e-12)
    pooled = (torch.cat(batches) @ model[0].weight.T + model[0].bias).mean(0)
    assert (model[1].running_mean - pooled).abs().max() > 0.1  # not the size-weighted mean


def test_recalibrate_matches_torch_update_bn_where_dropout_plays_no_part() -> None:
    torch.manual_seed(4)
    ours = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    theirs = copy.deepcopy(ours)
    loader = [(torch.randn(4, 2, 7, 7, dtype=torch.float64), torch.zeros(4)) for _ in range(3)]
    recalibrate(ours, loader)  # (input, target) pairs: the first element is the input
    torch.optim.swa_utils.update_bn(loader, theirs)
    for a, b in zip(ours.modules(), theirs.modules(), strict=True):
        if is_batch_norm(a):
            torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-12, atol=1e-12)


def test_recalibrate_is_deterministic_because_dropout_is_off() -> None:
    model = _two_bn_model()
    x = [torch.randn(16, 5, dtype=torch.float64)]
    ours, theirs = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ours.append(recalibrate(copy.deepcopy(model), x)[5].running_var.clone())
        torch.manual_seed(seed)
        other = copy.deepcopy(model)
        torch.optim.swa_utils.update_bn(x, other)  # the whole model in training mode
        theirs.append(other[5].running_var.clone())
    assert torch.equal(ours[0], ours[1])
    assert not torch.allclose(theirs[0], theirs[1])  # dropout drew different masks


def test_recalibrate_with_a_custom_forward() -> None:
    model = _two_bn_model()
    batches = [{"pixels": torch.randn(6, 5, dtype=torch.float64)} for _ in range(2)]
    recalibrate(model, batches, forward=lambda m, b: m(b["pixels"]))
    (m1, _), _ = _expected_stats(model, [b["pixels"] for b in batches])
    torch.testing.assert_close(model[1].running_mean, m1, rtol=1e-12, atol=1e-12)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_recalibrate_leaves_the_model_as_it_was_when_it_fails() -> None:
    model = _two_bn_model()
    model.train()
    model[1].eval()
    flags, state = _flags(model), _state(model)

    def failing():
        yield torch.randn(4, 5, dtype=torch.float64)
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        recalibrate(model, failing())
    with pytest.raises(ValueError, match="batches is empty"):
        recalibrate(model, [])
    # A batch of one example is rejected by torch in training mode, half-way through the pass.
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        recalibrate(model, [torch.randn(4, 5, dtype=torch.float64),
                            torch.randn(1, 5, dtype=torch.float64)])
    assert _flags(model) == flags
    for key, value in _state(model).items():
        assert torch.equal(value, state[key]), key
    assert model[1].momentum == 0.3 and model[5].momentum == 0.1


def test_recalibrate_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no batch-norm layer"):
        recalibrate(nn.Sequential(nn.Linear(2, 2)), [torch.randn(3, 2)])
    untracked = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False))
    with pytest.raises(ValueError, match=r"track_running_stats=False: \['1'\]"):
        recalibrate(untracked, [torch.randn(3, 2)])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        recalibrate(lambda x: x, [torch.randn(3, 2)])  # type: ignore[arg-type]


# -- fold_bn ----------------------------------------------------------------------------------

LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), nn.BatchNorm1d, (7, 6)),
    "linear-no-bias": (lambda: nn.Linear(6, 5, bias=False), nn.BatchNorm1d, (7, 6)),
    "conv1d-strided": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), nn.BatchNorm1d,
                       (3, 4, 11)),
    "conv2d-grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1), nn.BatchNorm2d,
                       (3, 4, 6, 5)),
    "conv2d-depthwise-dilated": (lambda: nn.Conv2d(4, 4, 3, groups=4, dilation=2, bias=False),
                                 nn.BatchNorm2d, (2, 4, 9, 9)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), nn.BatchNorm3d, (2, 2, 4, 5, 4)),
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("affine", [True, False])
def test_fold_bn_equals_layer_then_bn_in_float64(name: str, affine: bool) -> None:
    make_layer, bn_cls, shape = LAYERS[name]
    torch.manual_seed(5)
    layer = make_layer().double()
    out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    bn = _randomise_bn(bn_cls(out_channels, affine=affine).double(), seed=6).eval()
    x = torch.randn(*shape, dtype=torch.float64)
    folded = fold_bn(layer, bn)
    assert type(folded) is type(layer) and folded is not layer
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(layer(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(LAYERS))
def test_fold_bn_matches_torch_fusion(name: str) -> None:
    make_layer, bn_cls, shape = LAYERS[name]
    torch.manual_seed(7)
    layer = make_layer().eval()
    out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    bn = _randomise_bn(bn_cls(out_channels), seed=8).eval()
    fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
    ours, theirs = fold_bn(layer, bn), fuse(layer, bn)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-5, atol=1e-5)
    x = torch.randn(*shape)
    with torch.no_grad():
        reference = bn(layer(x))  # float32 is the loose case
        torch.testing.assert_close(ours(x), reference, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(theirs(x), reference, rtol=1e-4, atol=1e-4)
    assert ours.weight.dtype == torch.float32 and ours.bias.dtype == torch.float32


def test_fold_bn_accepts_bnbook_layers_and_does_not_touch_its_inputs() -> None:
    torch.manual_seed(9)
    conv = nn.Conv2d(3, 4, 3, bias=False).double()
    bn = _randomise_bn(modules.BatchNorm2d(4).double(), seed=10).eval()
    conv_state, bn_state = _state(conv), _state(bn)
    folded = fold_bn(conv, bn)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-12, atol=1e-12)
        torch_bn = nn.BatchNorm2d(4).double().eval()
        torch_bn.load_state_dict(bn.state_dict())
        torch.testing.assert_close(folded(x), torch_bn(conv(x)), rtol=1e-12, atol=1e-12)
    assert conv.bias is None and folded.bias is not None
    for before, module in ((conv_state, conv), (bn_state, bn)):
        after = module.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert folded.weight.data_ptr() != conv.weight.data_ptr()


def test_fold_bn_errors() -> None:
    bn = nn.BatchNorm1d(5).eval()
    with pytest.raises(TypeError, match="ConvTranspose2d"):
        fold_bn(nn.ConvTranspose2d(3, 5, 3), nn.BatchNorm2d(5).eval())
    with pytest.raises(TypeError, match="got LayerNorm"):
        fold_bn(nn.Linear(3, 5), nn.LayerNorm(5))
    with pytest.raises(ValueError, match="training mode"):
        fold_bn(nn.Linear(3, 5), nn.BatchNorm1d(5))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fold_bn(nn.Linear(3, 5), nn.BatchNorm1d(5, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="6 output channels but bn has num_features=5"):
        fold_bn(nn.Linear(3, 6), bn)
    with pytest.raises(ValueError, match="channel mismatch"):
        fold_bn(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5).eval())


# -- fold_model -------------------------------------------------------------------------------

def _net() -> nn.Sequential:
    torch.manual_seed(11)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, groups=2, bias=False), modules.BatchNorm2d(4),
                      nn.ReLU()),
        nn.BatchNorm2d(4),  # after a ReLU: not adjacent to a conv, must stay
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5),
    ).double()
    for m in net.modules():
        if is_batch_norm(m):
            _randomise_bn(m, seed=m.num_features)
    return net.eval()


def test_fold_model_folds_adjacent_pairs_only_and_keeps_the_function() -> None:
    net = _net()
    state = _state(net)
    folded = fold_model(net)
    kinds = [type(m).__name__ for m in folded.modules()]
    assert kinds.count("Identity") == 3
    assert isinstance(folded[4], nn.BatchNorm2d)  # not after a conv: left alone
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[3][1], nn.Identity)
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-12, atol=1e-12)
    after = net.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # the original is untouched
    assert sum(is_batch_norm(m) for m in net.modules()) == 4


def test_fold_model_names_the_layer_it_cannot_fold() -> None:
    net = _net()
    net[3][1].train()
    with pytest.raises(ValueError, match=r"'3\.1'.*training mode"):
        fold_model(net)
    assert isinstance(net[1], nn.BatchNorm2d)  # nothing changed in the original


# -- the chapter's figure ---------------------------------------------------------------------

def _torch_outputs(shift: float, batch_size: int) -> tuple[float, float]:
    """The figure's two numbers, from torch's own layer."""
    batch = np.concatenate([[ti_fig.FIXED_EXAMPLE],
                            ti_fig.other_examples(batch_size, shift)])
    x = torch.from_numpy(batch).reshape(-1, 1)  # (m, C) = (m, 1)
    bn = nn.BatchNorm1d(1).double()
    with torch.no_grad():
        bn.running_mean.fill_(ti_fig.RUNNING_MEAN)
        bn.running_var.fill_(ti_fig.RUNNING_VAR)
        evaluated = bn.eval()(x)[0, 0].item()
        trained = bn.train()(x)[0, 0].item()
    return trained, evaluated


def test_figure_numbers_match_torch_and_only_train_mode_moves() -> None:
    for m in ti_fig.BATCH_SIZES:
        rows = [(ti_fig.example_outputs(s, m), _torch_outputs(s, m)) for s in ti_fig.SHIFTS]
        for ours, theirs in rows:
            np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
        train = [ours[0] for ours, _ in rows]
        evaluated = [ours[1] for ours, _ in rows]
        assert len(set(evaluated)) == 1
        assert np.ptp(train) > 1.5  # the example's output follows its neighbours
    # With two examples, training mode keeps only the sign of the difference d = x - other:
    # x - mean = d / 2 and var = d**2 / 4, so the output is sign(d) / sqrt(1 + 4 eps / d**2).
    for s in ti_fig.SHIFTS:
        d = ti_fig.FIXED_EXAMPLE - ti_fig.other_examples(2, s)[0]
        expected = np.sign(d) / np.sqrt(1 + 4 * ti_fig.EPS / d**2)
        np.testing.assert_allclose(ti_fig.example_outputs(s, 2)[0], expected, rtol=1e-12)


def test_figure_renders_every_state_and_the_slider_changes_the_picture() -> None:
    fig = ti_fig.train_vs_eval_explorer()
    assert len(fig.states()) == len(ti_fig.SHIFTS) * len(ti_fig.BATCH_SIZES) <= 60
    pictures, index = fig.frames()
    assert len(index) == len(fig.states())
    assert len(pictures) == len(index)  # every state draws its own picture
