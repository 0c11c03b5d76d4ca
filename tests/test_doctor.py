"""bnbook.doctor: each gotcha is found on a model that has it, clean models give nothing, and
the check leaves the model exactly as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnbook import doctor, modules
from bnbook.distributed import SyncBatchNorm

BN1D = [nn.BatchNorm1d, modules.BatchNorm1d]
BN2D = [nn.BatchNorm2d, modules.BatchNorm2d]


def _mlp(bn, *, bias=False, dropout=0.0, width=8):
    layers = [nn.Linear(6, width, bias=bias)]
    if dropout:
        layers = [nn.Dropout(dropout), *layers]
    return nn.Sequential(*layers, bn(width), nn.ReLU(), nn.Linear(width, 3))


def _trained(model, x, steps=2):
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    return model


@pytest.fixture
def x():
    return torch.randn(32, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bn", BN1D)
def test_clean_models_have_no_findings(bn, x):
    torch.manual_seed(0)
    model = _trained(_mlp(bn), x)
    assert doctor.check(model, x, training=True) == []
    model.eval()
    assert doctor.check(model, x, training=False) == []
    assert str(doctor.check(model, x, training=False)) == "bnbook.doctor: no findings"


@pytest.mark.parametrize("bn", BN2D)
def test_clean_conv_net(bn):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), bn(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    images = torch.randn(4, 1, 8, 8)  # 4 * 8 * 8 = 256 values per channel
    assert doctor.check(model, images, training=True) == []


@pytest.mark.parametrize("bn", BN1D)
def test_train_mode_at_inference_and_never_updated(bn, x):
    model = _mlp(bn)  # fresh: training mode, num_batches_tracked == 0
    found = doctor.check(model, x, training=False)
    assert found.codes() == ["train-mode-at-inference", "stats-never-updated"]
    assert all(f.module == "1" for f in found)
    report = str(found)
    assert report.startswith("bnbook.doctor: 2 findings") and "[stats-never-updated] 1:" in report
    model.eval()
    assert doctor.check(model, x, training=False).codes() == ["stats-never-updated"]


def test_batch_stats_at_inference(x):
    model = _mlp(lambda n: nn.BatchNorm1d(n, track_running_stats=False)).eval()
    assert doctor.check(model, x, training=False).codes() == ["batch-stats-at-inference"]


@pytest.mark.parametrize("bn", BN1D)
def test_one_value_and_few_values_per_channel(bn, x):
    torch.manual_seed(0)
    model = _mlp(bn)
    found = doctor.check(model, x[:1], training=True)  # torch would raise here
    assert found.codes() == ["one-value-per-channel"]
    assert found[0].module == "1" and "(1, 8)" in found[0].message
    assert doctor.check(model, x[:4], training=True).codes() == ["few-values-per-channel"]
    assert doctor.check(model, x[:4], training=True, min_values_per_channel=4) == []
    with pytest.raises(ValueError, match="more than 1 value"):
        model(x[:1])  # the real behaviour the finding predicts


def test_few_values_counts_spatial_positions():
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2))
    assert doctor.check(model, torch.randn(1, 1, 4, 4), training=True) == []  # 16 values
    found = doctor.check(model, torch.randn(1, 1, 2, 2), training=True)
    assert found.codes() == ["few-values-per-channel"]


@pytest.mark.parametrize("bn", BN1D)
def test_frozen_but_training(bn, x):
    model = _trained(_mlp(bn), x)
    model[1].requires_grad_(False)
    assert doctor.check(model, x, training=True).codes() == ["frozen-but-training"]
    model[1].eval()  # frozen properly (until the next model.train())
    assert doctor.check(model, x, training=True) == []
    model.train()
    assert doctor.check(model, x, training=True).codes() == ["frozen-but-training"]


@pytest.mark.parametrize("bn", BN1D)
def test_dropout_feeding_bn(bn, x):
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Dropout(0.5), bn(8))
    found = doctor.check(_trained(model, x), x, training=True)
    assert found.codes() == ["dropout-before-bn"]
    assert found[0].module == "3" and "'2'" in found[0].message
    # through a parameter-free module too, and in eval mode for inference
    model = nn.Sequential(nn.Dropout(0.2), nn.Identity(), bn(6))
    model = _trained(model, x).eval()
    assert doctor.check(model, x, training=False).codes() == ["dropout-before-bn"]
    # through a Linear (a linear map carries the variance shift on), with its bias reported too
    model = _trained(nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 8), bn(8)), x)
    assert doctor.check(model, x, training=True).codes() == ["dropout-before-bn",
                                                             "bias-before-bn"]
    # dropout after the last BN is fine
    model = nn.Sequential(nn.Linear(6, 8, bias=False), bn(8), nn.ReLU(), nn.Dropout(0.5))
    assert doctor.check(_trained(model, x), x, training=True) == []


@pytest.mark.parametrize("bn", BN1D)
def test_bias_feeding_bn(bn, x):
    model = _trained(_mlp(bn, bias=True), x)
    found = doctor.check(model, x, training=True)
    assert found.codes() == ["bias-before-bn"]
    assert found[0].module == "1" and "Linear '0'" in found[0].message
    conv = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    found = doctor.check(conv, torch.randn(8, 1, 5, 5), training=True)
    assert found.codes() == ["bias-before-bn"]


def test_data_parallel_without_sync(x):
    model = nn.DataParallel(_mlp(nn.BatchNorm1d))
    found = doctor.check(model, x, training=True)
    assert found.codes() == ["unsynchronised-data-parallel"]
    assert found[0].module == "module.1" and "DataParallel" in found[0].message
    synced = nn.DataParallel(SyncBatchNorm.convert_sync_batchnorm(_mlp(nn.BatchNorm1d)))
    assert doctor.check(synced, x, training=True) == []


def test_changes_nothing(x):
    """Weights, buffers, modes and the RNG state are exactly as before a check."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.3), nn.Linear(6, 8), nn.BatchNorm1d(8, momentum=None),
                          nn.ReLU(), nn.Linear(8, 4), modules.BatchNorm1d(4))
    model = _trained(model, x)
    model[5].eval()
    model[2].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    for training in (True, False):
        assert doctor.check(model, x, training=training)  # it has findings, and ran the pass
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    # and without the restore the pass would have changed the statistics:
    model(x)
    assert not torch.equal(model[2].running_mean, before["2.running_mean"])


def test_bad_arguments(x):
    model = _mlp(nn.BatchNorm1d)
    with pytest.raises(TypeError, match="model"):
        doctor.check("net", x, training=True)
    with pytest.raises(TypeError, match="training"):
        doctor.check(model, x, training="yes")
    with pytest.raises(ValueError, match="example_inputs"):
        doctor.check(model, training=True)
    with pytest.raises(ValueError, match="min_values_per_channel"):
        doctor.check(model, x, training=True, min_values_per_channel=1)
    with pytest.raises(RuntimeError, match="example forward pass failed"):
        doctor.check(model, torch.randn(4, 5), training=True)


def test_distributed_data_parallel_in_a_one_rank_group(tmp_path, x):
    """A DDP-wrapped model, in a real gloo group of one process (file store, no network)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        torch.manual_seed(0)
        ddp = DDP(_trained(_mlp(nn.BatchNorm1d), x))
        before = copy.deepcopy(ddp.state_dict())
        found = doctor.check(ddp, x, training=True)
        assert found.codes() == ["unsynchronised-data-parallel"]
        assert found[0].module == "module.1" and "DistributedDataParallel" in found[0].message
        for key, value in ddp.state_dict().items():
            assert torch.equal(value, before[key]), key
        synced = DDP(SyncBatchNorm.convert_sync_batchnorm(_trained(_mlp(nn.BatchNorm1d), x)))
        assert doctor.check(synced, x, training=True) == []
    finally:
        dist.destroy_process_group()


def test_batch_of_one_in_training_mode_is_reported_when_checking_for_inference(x):
    model = _trained(_mlp(nn.BatchNorm1d), x)  # left in training mode
    found = doctor.check(model, x[:1], training=False)  # torch would raise on this batch
    assert found.codes() == ["train-mode-at-inference", "one-value-per-channel"]
    with pytest.raises(ValueError, match="more than 1 value"):
        model(x[:1])


def test_the_restored_rng_state_would_have_moved(x):
    """The RNG check of test_changes_nothing is not vacuous: the pass draws dropout masks."""
    model = nn.Sequential(nn.Dropout(0.3), nn.Linear(6, 8, bias=False), nn.BatchNorm1d(8))
    rng = torch.get_rng_state()
    doctor.check(model, x, training=True)
    assert torch.equal(torch.get_rng_state(), rng)
    model(x)
    assert not torch.equal(torch.get_rng_state(), rng)
