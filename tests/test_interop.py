"""bnbook.modules with torch's own tools: each test states what the tool does with our layers.

Works: compared with the same tool on torch's layer. Raises: which error, and why.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap
from torch.optim.swa_utils import update_bn

from bnbook import modules as bm
from bnbook.inference import is_batch_norm
from bnbook.validation import BatchNormArgumentError

PAIRS = [
    (bm.BatchNorm1d, nn.BatchNorm1d, (6, 3, 4)),
    (bm.BatchNorm2d, nn.BatchNorm2d, (6, 3, 4, 4)),
    (bm.BatchNorm3d, nn.BatchNorm3d, (6, 3, 2, 3, 2)),
]


def _models(ours_cls=bm.BatchNorm2d, theirs_cls=nn.BatchNorm2d, **kwargs):
    """The same small conv net twice, with our batch norm and with torch's, equal weights."""
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Conv2d(2, 3, 3).double(), ours_cls(3, dtype=torch.float64, **kwargs),
                         nn.ReLU())
    theirs = copy.deepcopy(ours)
    theirs[1] = theirs_cls(3, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        ours[1].weight.uniform_(0.5, 1.5)
        ours[1].bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _batches(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64) * 2 + 1 for _ in range(n)]


def _assert_same_state(a: nn.Module, b: nn.Module, subset: bool = False) -> None:
    """Equal state_dicts; with ``subset``, ``a``'s keys may be a subset of ``b``'s."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() <= sb.keys() if subset else sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize(("ours_cls", "theirs_cls", "shape"), PAIRS)
def test_layers_are_torch_batch_norm_layers(ours_cls, theirs_cls, shape) -> None:
    layer = ours_cls(3)
    assert isinstance(layer, nn.modules.batchnorm._BatchNorm)
    assert isinstance(layer, theirs_cls)
    assert is_batch_norm(layer)
    assert repr(layer) == repr(theirs_cls(3))
    # The forward is ours, not torch's: the arithmetic comes from bnbook.functional.
    assert type(layer).forward is bm._BatchNorm.forward


def test_convert_sync_batchnorm_converts_with_state() -> None:
    """Works: torch's SyncBatchNorm replaces our layer, state included (its arithmetic is
    then torch's). Eval outputs agree."""
    ours, _ = _models()
    for x in _batches():
        ours(x)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ours))
    assert type(converted[1]) is nn.SyncBatchNorm
    _assert_same_state(converted, ours)
    ours.eval()
    converted.eval()
    x = _batches(1, seed=2)[0]
    torch.testing.assert_close(converted(x), ours(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_swa_update_bn_recomputes_running_stats_as_for_torch(momentum) -> None:
    """Works: update_bn finds our layers (isinstance _BatchNorm), resets their statistics,
    averages over the loader with momentum=None and restores momentum."""
    ours, theirs = _models(momentum=momentum)
    loader = _batches(4)
    update_bn(loader, ours)
    update_bn(loader, theirs)
    _assert_same_state(ours, theirs)
    assert ours[1].momentum == momentum
    assert int(ours[1].num_batches_tracked) == 4


def test_fuse_modules_needs_to_torch() -> None:
    """Raises: fuse_modules looks its fuser up by exact type, (Conv2d, BatchNorm2d) from torch;
    ours is a subclass, so it asserts. Works after bm.to_torch (same state, torch's class)."""
    from torch.ao.quantization import fuse_modules

    ours, _ = _models()
    for x in _batches():
        ours(x)
    ours.eval()
    with pytest.raises(AssertionError, match="did not find fuser method"):
        fuse_modules(copy.deepcopy(ours), [["0", "1"]])
    fused = fuse_modules(bm.to_torch(copy.deepcopy(ours)), [["0", "1"]])
    assert isinstance(fused[1], nn.Identity)
    x = _batches(1, seed=3)[0]
    torch.testing.assert_close(fused(x), ours(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_fx_symbolic_trace(training, momentum) -> None:
    """Works: the traced graph calls our input check and one batch-norm step (buffers as graph
    inputs); run in the mode it was traced in, it updates the same state as the module."""
    ours, _ = _models(momentum=momentum)
    ours.train(training)
    traced_source = copy.deepcopy(ours)
    traced = torch.fx.symbolic_trace(traced_source)
    _assert_same_state(traced_source, ours)  # tracing itself changed nothing
    targets = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert bm._batch_norm_step in targets and bm._check_input in targets
    for x in _batches():
        torch.testing.assert_close(traced(x), ours(x), rtol=1e-12, atol=1e-12)
    # A graph traced in eval mode holds only the tensors it reads (no num_batches_tracked).
    _assert_same_state(traced, ours, subset=not training)
    # The traced graph still checks its input at run time.
    checked = torch.fx.symbolic_trace(nn.Sequential(bm.BatchNorm2d(3)))
    with pytest.raises(BatchNormArgumentError, match="num_features=3"):
        checked(torch.randn(2, 4, 3, 3))


def _per_sample_grads(model: nn.Module, xs: torch.Tensor) -> dict[str, torch.Tensor]:
    """torch.func's recipe: vmap over samples of grad of a functional_call, each sample a batch
    of one example's two halves (so training-mode statistics are defined)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, x):
        return functional_call(model, (p, buffers), (x,)).pow(2).sum()

    return vmap(grad(loss), in_dims=(None, 0))(params, xs)


def _samples() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.randn(5, 2, 2, 6, 6, generator=g, dtype=torch.float64)


def test_torch_func_per_sample_grads_in_training_with_running_stats_raises_as_torch() -> None:
    """Raises, as with torch's layer: a tracked layer in training updates captured buffers
    (num_batches_tracked first), which torch.func.grad forbids."""
    for model in _models():
        model.train()
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(RuntimeError, match="mutate a captured Tensor"):
            _per_sample_grads(model, _samples())
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("mode", ["eval", "replace_all_batch_norm_modules_",
                                  "track_running_stats=False"])
def test_torch_func_per_sample_grads_match_torch(mode) -> None:
    """Works where torch's works: in eval mode, after replace_all_batch_norm_modules_ (which
    finds our layers as _BatchNorm), or built without running statistics."""
    kwargs = {"track_running_stats": False} if mode == "track_running_stats=False" else {}
    ours, theirs = _models(**kwargs)
    for model in (ours, theirs):
        if mode == "eval":
            model.eval()
        elif mode == "replace_all_batch_norm_modules_":
            replace_all_batch_norm_modules_(model)
            assert model[1].running_mean is None and not model[1].track_running_stats
    got, expected = _per_sample_grads(ours, _samples()), _per_sample_grads(theirs, _samples())
    assert got.keys() == expected.keys()
    for k in got:
        assert got[k].shape[0] == 5
        torch.testing.assert_close(got[k], expected[k], rtol=1e-10, atol=1e-10, msg=k)


def test_to_torch_and_from_torch_share_state() -> None:
    """The converters swap classes and keep the very same Parameter and buffer objects (an
    optimizer built before the swap keeps working); outputs agree."""
    ours, _ = _models()
    for x in _batches():
        ours(x)
    weight = ours[1].weight
    as_torch = bm.to_torch(ours)
    assert type(as_torch[1]) is nn.BatchNorm2d and as_torch[1].weight is weight
    back = bm.from_torch(nn.Sequential(as_torch))
    assert type(back[0][1]) is bm.BatchNorm2d and back[0][1].weight is weight
    single = bm.from_torch(nn.BatchNorm1d(4, affine=False, momentum=None))
    assert type(single) is bm.BatchNorm1d and single.weight is None and single.momentum is None
    x = _batches(1, seed=5)[0]
    reference = copy.deepcopy(back)
    out = back(x)
    torch.testing.assert_close(bm.to_torch(reference)(x), out, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("ours_cls", "theirs_cls", "shape"), PAIRS)
def test_state_dict_loads_both_ways_and_pickles(ours_cls, theirs_cls, shape) -> None:
    ours, theirs = ours_cls(3), theirs_cls(3)
    ours.train()
    ours(torch.randn(shape) + 2)
    theirs.load_state_dict(ours.state_dict())
    _assert_same_state(theirs, ours)
    theirs(torch.randn(shape))
    ours.load_state_dict(theirs.state_dict())
    _assert_same_state(ours, theirs)
    clone = pickle.loads(pickle.dumps(ours))
    assert type(clone) is ours_cls
    _assert_same_state(clone, ours)


def test_torch_jit_script_refuses() -> None:
    """Raises: TorchScript (deprecated in torch 2.13) cannot compile a Python autograd.Function
    or the Python our forward calls; torch's layer scripts. Use torch.fx or to_torch."""
    torch.jit.script(nn.BatchNorm2d(3))
    with pytest.raises(RuntimeError):
        torch.jit.script(bm.BatchNorm2d(3))


@pytest.mark.parametrize("training", [True, False])
def test_torch_compile_runs_and_matches_torch(training) -> None:
    """Works: ``torch.compile`` runs a model holding our layer, three SGD steps equal torch's
    eager layer (outputs, every gradient, the state). Dynamo compiles the code around the layer
    and breaks its graph inside it (the autograd Function defines a custom jvp, which Dynamo
    cannot trace, and the far-mean check reads a value); those parts run eagerly."""
    ours, theirs = _models()
    ours.train(training)
    theirs.train(training)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(ours, backend="eager")  # Dynamo's tracing, no code generation
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for x in _batches():
        for model, opt in ((compiled, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model(x).square().mean().backward()
            # Dynamo once warned that it cannot trace the layer's checks for torch.func wrappers.
            assert not [w for w in caught if "Dynamo" in str(w.message)], caught
            opt.step()
        torch.testing.assert_close(compiled(x), theirs(x), rtol=1e-10, atol=1e-12)
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12)
        _assert_same_state(ours, theirs)
    breaks = " ".join(torch._dynamo.utils.counters["graph_break"])
    assert "jvp" in breaks, breaks
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported):  # no single graph: fullgraph refuses
        torch.compile(ours, backend="eager", fullgraph=True)(_batches(1)[0])


@pytest.mark.parametrize("training", [True, False])
def test_torch_export_exports_our_arithmetic(training) -> None:
    """Works: ``torch.export`` (non-strict, its default) traces our layer into plain aten ops
    (the plain-ops form of the Function; the everyday form writes into its outputs' buffers,
    which a tracer refuses), and the exported program computes what torch's layer computes,
    running statistics included. Strict export traces with Dynamo, and refuses, as
    ``torch.compile(fullgraph=True)`` does.
    It once failed with "addcmul(): functions with out=... arguments don't support automatic
    differentiation"."""
    ours, theirs = _models()
    ours.train(training)
    theirs.train(training)
    x = _batches(1)[0]
    program = torch.export.export(ours, (x,))
    ops = {str(node.target) for graph in program.graph_module.modules()  # with subgraphs
           for node in graph.graph.nodes if node.op == "call_function"}
    assert "aten.addcmul.default" in ops and not any("batch_norm" in op for op in ops), ops
    if training:
        assert "aten.mse_loss.default" in ops, ops
    exported = program.module()
    torch.testing.assert_close(exported(x), theirs(x), rtol=1e-10, atol=1e-12)
    _assert_same_state(exported, theirs)
    with pytest.raises(torch._dynamo.exc.Unsupported):  # strict export traces with Dynamo
        torch.export.export(ours, (x,), strict=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("training", [True, False])
def test_autocast_gives_torch_dtypes_and_values(dtype, training) -> None:
    """Works: under ``torch.autocast("cpu")`` a Linear feeds our layer a half-precision input;
    the output has torch's dtype and values, and the gradients and running statistics agree
    with torch's to float32 rounding (ours normalises in float32 and rounds once, as torch)."""
    torch.manual_seed(3)
    ours = nn.Sequential(nn.Linear(8, 6), bm.BatchNorm1d(6), nn.ReLU()).train(training)
    theirs = bm.to_torch(copy.deepcopy(ours)).train(training)
    x = torch.randn(16, 8)
    results = []
    for model in (ours, theirs):
        x_ = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            y = model(x_)
        y.float().square().sum().backward()
        results.append((y, x_.grad, model[1].weight.grad, model[1].bias.grad,
                        model[1].running_mean, model[1].running_var))
    (y, *rest), (y_t, *rest_t) = results
    assert y.dtype == y_t.dtype == dtype
    assert torch.equal(y, y_t)
    for a, t in zip(rest, rest_t, strict=True):
        torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_matches_torch() -> None:
    """Works: ``torch.utils.checkpoint`` recomputes our layer's forward during backward, with
    torch's layer's results, including its side effect: the running statistics are updated
    twice, once per forward, as torch's are."""
    ours, theirs = _models()
    x = _batches(1)[0]
    grads = []
    for model in (ours, theirs):
        x_ = x.clone().requires_grad_()
        y = torch.utils.checkpoint.checkpoint(model, x_, use_reentrant=False)
        y.square().sum().backward()
        grads.append(x_.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)
    _assert_same_state(ours, theirs)
    assert ours[1].num_batches_tracked.item() == 2


def test_fx_fuse_leaves_our_layer_unfused() -> None:
    """Works, without folding: ``torch.fx.experimental.optimization.fuse`` matches modules by
    exact type, so it folds torch's batch norm into the convolution before it but leaves ours
    in place (the model still computes the same); :func:`to_torch` first folds it.
    ``torch.nn.utils.fusion.fuse_conv_bn_eval`` folds ours directly."""
    from torch.fx.experimental.optimization import fuse

    ours, _ = _models()
    ours.eval()
    x = _batches(1)[0]
    kept = fuse(ours)
    assert "1.running_mean" in kept.state_dict()  # the layer's state, still there
    torch.testing.assert_close(kept(x), ours(x), rtol=1e-10, atol=1e-12)
    folded = fuse(bm.to_torch(copy.deepcopy(ours)))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert not any("running_mean" in key for key in folded.state_dict())
    torch.testing.assert_close(folded(x), ours(x), rtol=1e-10, atol=1e-12)
    # The one-pair utility reads the layer's attributes, and takes ours as it is.
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pair = fuse_conv_bn_eval(copy.deepcopy(ours[0]), ours[1])
    torch.testing.assert_close(ours[2](pair(x)), ours(x), rtol=1e-10, atol=1e-12)
