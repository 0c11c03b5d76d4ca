"""The measurements of "Why it works: the explanations tested" (Part II of the book).

Each explanation of Batch Normalization's benefit makes a measurable prediction; this module
holds the measurements, written once, so the chapter, its figures and the tests read the same
functions:

* internal covariate shift (Ioffe and Szegedy 2015) as Santurkar et al. (2018) define it,
  through gradients (:func:`ics`), and their "noisy BN" (:class:`NoisyShift`);
* the smoothness of the landscape along the gradient (:func:`probe_along_gradient`,
  :func:`landscape_probe`): the range of the loss, the change of the gradient and the
  effective beta-smoothness;
* scale invariance and the effective learning rate (van Laarhoven 2017; Arora, Li and Lyu
  2019): :func:`scale_invariance`, and the weight norms and angular steps that
  :func:`measured_run` records;
* gradient explosion at initialisation in deep BN nets (Yang et al. 2019):
  :func:`init_gradient_norms`, :func:`per_layer_factor`, :data:`RELU_BN_FACTOR`;
* length-direction decoupling (Kohler et al. 2019) on least squares:
  :func:`decoupled_least_squares`;
* the one-dimensional landscapes of the chapter's stability figure: :func:`descend_1d`.

Every training run goes through :func:`bnbook.experiments.digits.train`; the measurements are
taken in its ``on_step`` callback on a deep copy of the model, so measuring never changes the run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from bnbook.experiments import _check_count, digits

__all__ = [
    "KINDS",
    "RELU_BN_FACTOR",
    "GradientProbe",
    "MeasuredRun",
    "NoisyShift",
    "decoupled_least_squares",
    "descend_1d",
    "ics",
    "init_gradient_norms",
    "landscape_probe",
    "layer_groups",
    "measured_run",
    "net",
    "per_layer_factor",
    "probe_along_gradient",
    "scale_invariance",
]

#: The three nets of Santurkar et al.'s comparison.
KINDS = ("standard", "bn", "noisy_bn")

#: The large-batch growth of the mean squared gradient per layer of a deep ReLU net with BN
#: before each ReLU, at initialisation: π/(π − 1). Derived in the chapter; see
#: :func:`per_layer_factor`.
RELU_BN_FACTOR = math.pi / (math.pi - 1.0)


def _check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


# -- noisy BN ----------------------------------------------------------------------------------


class NoisyShift(nn.Module):
    """Re-injects a moving distribution after a BN layer: a fresh shift and scale every step.

    In training mode, every forward pass draws, for each feature j, a mean μ_j ~ U(−n, n) and a
    scale s_j ~ U(1, 1 + n), and returns ``s * x + μ``: each feature leaves with a mean and a
    standard deviation that change at every step and are neither 0 nor 1, which is what the
    internal-covariate-shift story says Batch Normalization exists to prevent. In eval mode it
    applies the expected transform, ``(1 + n/2) * x``, as dropout does.

    Santurkar et al. (2018, section 2.1) perturb each activation of each example with i.i.d.
    noise of non-zero mean and non-unit variance whose distribution changes at each step; this
    layer moves the whole batch of a feature together, a shift of the distribution itself.

    Args:
        num_features: the width of the layer it follows.
        magnitude: n, the noise magnitude, >= 0 (0 is the identity).

    Attributes:
        held: while not None, the ``(scale, shift)`` every training forward uses instead of a
            fresh draw (see :meth:`hold`), so two passes of one step see the same noise.
    """

    def __init__(self, num_features: int, magnitude: float) -> None:
        super().__init__()
        self.num_features = _check_count(num_features, "num_features", 1)
        if not (isinstance(magnitude, int | float) and math.isfinite(magnitude) and magnitude >= 0):
            raise ValueError(f"magnitude must be a finite number >= 0, got {magnitude!r}")
        self.magnitude = float(magnitude)
        self.held: tuple[Tensor, Tensor] | None = None

    def draw(self) -> tuple[Tensor, Tensor]:
        """A fresh ``(scale, shift)``, each of shape (num_features,), from torch's generator."""
        n = self.magnitude
        scale = 1.0 + n * torch.rand(self.num_features)  # (C,) in [1, 1 + n)
        shift = n * (2.0 * torch.rand(self.num_features) - 1.0)  # (C,) in [-n, n)
        return scale, shift

    def hold(self) -> None:
        """Draw once and reuse that draw until :meth:`release` (for a measurement)."""
        self.held = self.draw()

    def release(self) -> None:
        self.held = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return (1.0 + self.magnitude / 2.0) * x
        scale, shift = self.held if self.held is not None else self.draw()
        return scale * x + shift  # (N, C)

    def extra_repr(self) -> str:
        return f"{self.num_features}, magnitude={self.magnitude}"


def net(
    kind: str, widths: Sequence[int] = (64, 100, 100, 100, 100, 10), *, noise: float = 1.0
) -> nn.Sequential:
    """One of the three nets of the noise experiment, on :func:`digits.mlp`.

    Args:
        kind: ``"standard"`` (Linear, ReLU), ``"bn"`` (Linear, BatchNorm1d, ReLU) or
            ``"noisy_bn"`` (Linear, BatchNorm1d, :class:`NoisyShift`, ReLU).
        widths: input, hidden and output widths.
        noise: the noise magnitude of ``"noisy_bn"``.

    Returns:
        The net, with torch's default initialisation (draws from torch's global generator). The
        Linear layers before a BN layer have no bias: BN's mean subtraction would remove it.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "standard":
        return digits.mlp(widths)
    if kind == "bn":
        model = digits.mlp(widths, norm=nn.BatchNorm1d, bias=False)
    else:
        model = digits.mlp(
            widths, norm=lambda c: nn.Sequential(nn.BatchNorm1d(c), NoisyShift(c, noise)),
            bias=False,
        )
    last = model[-1]  # the output layer has no BN after it: give it back its bias
    model[-1] = nn.Linear(last.in_features, last.out_features)
    return model


def layer_groups(model: nn.Sequential) -> list[list[str]]:
    """The parameter names of each layer: a Linear and the normalisation that follows it.

    Santurkar et al.'s ICS is defined per layer i with parameters W_i; here W_i is everything
    from one Linear up to (not including) the next one, so BN's weight and bias belong to the
    layer they normalise.
    """
    groups: list[list[str]] = []
    for index, child in enumerate(model):
        names = [f"{index}.{name}" for name, _ in child.named_parameters()]
        if isinstance(child, nn.Linear):
            groups.append(names)  # its weight first: the W_i whose gradient ICS compares
        elif names:
            if not groups:
                raise ValueError(f"layer {index} has parameters but no Linear before it")
            groups[-1].extend(names)
    return groups


def _holding_noise(model: nn.Module, hold: bool) -> None:
    for module in model.modules():
        if isinstance(module, NoisyShift):
            module.hold() if hold else module.release()


# -- internal covariate shift (Santurkar et al. 2018, definition 2.1) --------------------------


def ics(model: nn.Sequential, x: Tensor, y: Tensor, lr: float) -> tuple[np.ndarray, np.ndarray]:
    """Internal covariate shift of every layer, as the change of its gradient.

    With all layers at step t the gradient of layer i is G_i; after one SGD step of rate ``lr``
    on the batch (x, y), the layers *below* i move to step t + 1 while layer i and those above
    stay, and the gradient of layer i becomes G'_i. The ICS of layer i is ‖G_i − G'_i‖: how much
    layer i's own update must change because the layers feeding it changed. Measured on a deep
    copy, in training mode, with any :class:`NoisyShift` noise held fixed for the step.

    Args:
        model: a net from :func:`net` (any ``nn.Sequential`` of Linear/normalisation layers).
        x, y: the batch, (N, features) and (N,).
        lr: the SGD rate of the simulated step, > 0.

    Returns:
        ``(distance, cosine)``, each of shape (layers,): ‖G_i − G'_i‖₂ and the cosine of the
        angle between G_i and G'_i, for the weight of the Linear that opens layer i.
    """
    lr = _check_positive(lr, "lr")
    work = copy.deepcopy(model).train()
    _holding_noise(work, True)
    params = {name: p.detach().clone() for name, p in work.named_parameters()}
    groups = layer_groups(work)

    def grads(at: dict[str, Tensor]) -> dict[str, Tensor]:
        leaves = {k: v.clone().requires_grad_(True) for k, v in at.items()}
        loss = F.cross_entropy(functional_call(work, leaves, (x,)), y)
        values = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return {k: torch.zeros_like(leaves[k]) if g is None else g
                for k, g in zip(leaves, values, strict=True)}

    before = grads(params)
    after_step = {k: params[k] - lr * before[k] for k in params}
    distance, cosine = [], []
    for i, group in enumerate(groups):
        below = {name for g in groups[:i] for name in g}
        mixed = {k: after_step[k] if k in below else params[k] for k in params}
        weight = group[0]
        g0, g1 = before[weight].flatten(), grads(mixed)[weight].flatten()
        distance.append((g0 - g1).norm().item())
        cosine.append(F.cosine_similarity(g0, g1, dim=0).item())
    return np.array(distance), np.array(cosine)


# -- the landscape along the gradient (Santurkar et al. 2018, section 3.1) ---------------------


@dataclass(frozen=True)
class GradientProbe:
    """What :func:`probe_along_gradient` found along θ − η·g.

    Attributes:
        etas: the step sizes η, shape (K,).
        loss: L(θ − η·g) at each η, shape (K,).
        grad_change: ‖∇L(θ − η·g) − g‖ at each η, shape (K,).
        grad_norm: ‖g‖.
    """

    etas: np.ndarray
    loss: np.ndarray
    grad_change: np.ndarray
    grad_norm: float

    @property
    def loss_range(self) -> float:
        """max − min of the loss over the probed steps: the "variation of the loss"."""
        return float(self.loss.max() - self.loss.min())

    @property
    def predictiveness(self) -> float:
        """The largest change of the gradient over the probed steps (smaller: more predictive)."""
        return float(self.grad_change.max())

    @property
    def beta(self) -> float:
        """Effective β-smoothness: max over η of ‖∇L(θ − ηg) − g‖ / ‖η·g‖."""
        return float((self.grad_change / (self.etas * self.grad_norm)).max())


def probe_along_gradient(
    loss_fn: Callable[[Tensor], Tensor], theta: Tensor, etas: Sequence[float]
) -> GradientProbe:
    """Walk from θ along the negative gradient and record the loss and the gradient.

    Args:
        loss_fn: maps a flat parameter vector (P,) to a scalar loss, differentiable by autograd.
        theta: the starting point, shape (P,).
        etas: the step sizes, each > 0.

    Returns:
        A :class:`GradientProbe`.
    """
    if theta.ndim != 1:
        raise ValueError(f"theta must be a flat vector (P,), got shape {tuple(theta.shape)}")
    etas = np.array([_check_positive(e, "each eta") for e in etas], dtype=np.float64)
    if etas.size == 0:
        raise ValueError("etas must hold at least one step size")

    def value_and_grad(point: Tensor) -> tuple[float, Tensor]:
        point = point.detach().clone().requires_grad_(True)
        value = loss_fn(point)
        (grad,) = torch.autograd.grad(value, point)
        return value.item(), grad

    _, g = value_and_grad(theta)
    losses, changes = [], []
    for eta in etas:
        value, grad = value_and_grad(theta.detach() - float(eta) * g)
        losses.append(value)
        changes.append((grad - g).norm().item())
    return GradientProbe(etas, np.array(losses), np.array(changes), g.norm().item())


def landscape_probe(
    model: nn.Module, x: Tensor, y: Tensor, etas: Sequence[float]
) -> GradientProbe:
    """:func:`probe_along_gradient` for a net's cross-entropy on one batch, in training mode.

    All parameters move together along the gradient; BN layers normalise with the batch's own
    statistics at every point (a deep copy is measured, so running statistics are untouched), and
    any :class:`NoisyShift` noise is held fixed along the walk.
    """
    work = copy.deepcopy(model).train()
    _holding_noise(work, True)
    names = [name for name, _ in work.named_parameters()]
    shapes = [p.shape for _, p in work.named_parameters()]
    sizes = [p.numel() for _, p in work.named_parameters()]
    theta = torch.cat([p.detach().flatten() for p in work.parameters()])

    def loss_fn(flat: Tensor) -> Tensor:
        pieces = flat.split(sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return F.cross_entropy(functional_call(work, params, (x,)), y)

    return probe_along_gradient(loss_fn, theta, etas)


# -- one training run, measured ----------------------------------------------------------------


@dataclass
class MeasuredRun:
    """A :func:`measured_run`: the curves, plus the measurements at ``measured_steps``.

    Attributes:
        curves: what :func:`digits.train` recorded.
        measured_steps: the steps at which the rest was measured.
        ics: ‖G_i − G'_i‖ per layer at each measured step, shape (S, layers).
        ics_cosine: cosine(G_i, G'_i), shape (S, layers).
        probes: a :class:`GradientProbe` per measured step.
        weight_norm: ‖W‖ of the first Linear at each step 1..steps, shape (steps,).
        angle: the angle in radians between W before and after each step, shape (steps,).
        grad_cosine: cosine between W and its loss gradient at each step, shape (steps,).
        norm_growth: ‖W_{t+1}‖² − ‖W_t‖², shape (steps,).
        predicted_growth: lr²·‖∇_W L‖² (the growth when the gradient is orthogonal to W and
            there is no weight decay), shape (steps,).
    """

    curves: digits.Curves
    measured_steps: list[int] = field(default_factory=list)
    ics: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    ics_cosine: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    probes: list[GradientProbe] = field(default_factory=list)
    weight_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    angle: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grad_cosine: np.ndarray = field(default_factory=lambda: np.zeros(0))
    norm_growth: np.ndarray = field(default_factory=lambda: np.zeros(0))
    predicted_growth: np.ndarray = field(default_factory=lambda: np.zeros(0))


def measured_run(
    kind: str,
    data: digits.Digits,
    *,
    steps: int,
    lr: float,
    noise: float = 1.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    measure_every: int = 0,
    probe_multiples: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    probe_batch: int = 256,
    record_every: int = 100,
    progress: str | None = None,
) -> MeasuredRun:
    """Train a net of ``kind`` on the digits and measure it as it trains.

    Every step records the first Linear layer's weight norm, the angle it turned and the cosine
    between it and its gradient. Every ``measure_every`` steps (0: never) the ICS of every layer
    and a landscape probe are taken on one fixed batch of ``probe_batch`` training examples,
    with the same rate ``lr`` for the ICS step and probe steps η = multiple·``lr``.

    Args:
        kind: see :func:`net`.
        data: the split, from :func:`digits.load`.
        steps, lr, weight_decay, seed, record_every, progress: as :func:`digits.train`.
        noise: the noise magnitude of ``"noisy_bn"``.
        measure_every: steps between two ICS/landscape measurements.
        probe_multiples: the probe's step sizes, as multiples of ``lr``.
        probe_batch: size of the fixed measurement batch.

    Returns:
        A :class:`MeasuredRun`.
    """
    steps = _check_count(steps, "steps", 1)
    measure_every = _check_count(measure_every, "measure_every", 0)
    lr = _check_positive(lr, "lr")
    torch.manual_seed(seed)
    model = net(kind, noise=noise)
    pick = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed + 1))
    x_probe, y_probe = data.x_train[pick[:probe_batch]], data.y_train[pick[:probe_batch]]
    etas = [lr * float(m) for m in probe_multiples]
    first = model[0].weight
    previous = [first.detach().clone()]
    run = MeasuredRun(curves=digits.Curves())
    per_step: dict[str, list[float]] = {k: [] for k in ("norm", "angle", "cos", "growth", "pred")}
    ics_rows, cos_rows = [], []

    def on_step(step: int, model: nn.Module, loss: Tensor) -> None:
        before, after, grad = previous[0], first.detach(), first.grad.detach()
        per_step["norm"].append(after.norm().item())
        cos = F.cosine_similarity(before.flatten(), after.flatten(), dim=0).clamp(-1, 1)
        per_step["angle"].append(math.acos(cos.item()))
        per_step["cos"].append(F.cosine_similarity(before.flatten(), grad.flatten(), dim=0).item())
        per_step["growth"].append(after.norm().item() ** 2 - before.norm().item() ** 2)
        per_step["pred"].append(lr**2 * grad.norm().item() ** 2)
        previous[0] = after.clone()
        if measure_every and (step % measure_every == 0 or step == 1):
            rng_state = torch.get_rng_state()  # measuring must not move the run's noise draws
            distance, cosine = ics(model, x_probe, y_probe, lr)
            run.probes.append(landscape_probe(model, x_probe, y_probe, etas))
            torch.set_rng_state(rng_state)
            ics_rows.append(distance)
            cos_rows.append(cosine)
            run.measured_steps.append(step)

    run.curves = digits.train(model, data, steps=steps, lr=lr, seed=seed,
                              weight_decay=weight_decay, record_every=record_every,
                              on_step=on_step, progress=progress)
    run.weight_norm = np.array(per_step["norm"])
    run.angle = np.array(per_step["angle"])
    run.grad_cosine = np.array(per_step["cos"])
    run.norm_growth = np.array(per_step["growth"])
    run.predicted_growth = np.array(per_step["pred"])
    if ics_rows:
        run.ics, run.ics_cosine = np.stack(ics_rows), np.stack(cos_rows)
    return run


# -- scale invariance (van Laarhoven 2017; Arora, Li and Lyu 2019) ------------------------------


def scale_invariance(
    scales: Sequence[float], *, batch: int = 32, features: int = 6, units: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """The loss and weight gradient of Linear → BN → a fixed loss, at weights a·W.

    In float64, with BN written out with eps = 0, so the invariance is exact up to rounding.

    Args:
        scales: the factors a, each > 0.
        batch, features, units: the shape of the toy layer (inputs (batch, features), weight
            (units, features)).
        seed: seed of the inputs, W and the loss's fixed readout.

    Returns:
        A dict of arrays over the scales: ``loss`` (K,), ``grad_norm`` (K,) = ‖∇_{aW} L‖,
        ``cosine`` (K,) = cos(aW, ∇_{aW} L), and ``w_norm`` (K,) = ‖aW‖.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, features, generator=gen, dtype=torch.float64)
    w = torch.randn(units, features, generator=gen, dtype=torch.float64)
    readout = torch.randn(batch, units, generator=gen, dtype=torch.float64)
    out: dict[str, list[float]] = {"loss": [], "grad_norm": [], "cosine": [], "w_norm": []}
    for a in scales:
        a = _check_positive(a, "each scale")
        weight = (a * w).requires_grad_(True)
        h = x @ weight.T  # (batch, units)
        mean = h.mean(dim=0)  # (units,)
        var = h.var(dim=0, correction=0)  # (units,): biased, as BN in training
        z = (h - mean) / var.sqrt()  # BN with eps = 0 (torch refuses eps = 0 in training)
        loss = (torch.tanh(z) * readout).sum()
        (grad,) = torch.autograd.grad(loss, weight)
        out["loss"].append(loss.item())
        out["grad_norm"].append(grad.norm().item())
        out["cosine"].append(F.cosine_similarity(weight.flatten(), grad.flatten(), dim=0).item())
        out["w_norm"].append(weight.norm().item())
    return {k: np.array(v) for k, v in out.items()}


# -- gradient explosion at initialisation (Yang et al. 2019) ------------------------------------


def init_gradient_norms(
    depth: int, batch_size: int, *, bn: bool, width: int = 256, seed: int = 0
) -> np.ndarray:
    """The squared norm of the loss gradient on each layer's weight, at initialisation.

    A net of ``depth`` layers h_l = W_l x_{l−1}, x_l = ReLU(BN(h_l)) (or ReLU(h_l) without BN),
    x_0 standard Gaussian of shape (batch_size, width), W_l with i.i.d. N(0, 2/width) entries
    (He init, which keeps the forward scale without BN), BN with γ = 1, β = 0 in training mode.
    The loss is a fixed random linear readout of x_depth, L = Σ r ⊙ x_depth with r ~ N(0, 1), so
    the gradient arriving at the top is a standard Gaussian direction, as the mean-field
    analysis assumes. Computed in float64.

    Args:
        depth: number of layers, >= 2.
        batch_size: examples per batch, >= 2 with BN.
        bn: whether BN sits before each ReLU.
        width: units per layer.
        seed: seed of the weights, the inputs and r.

    Returns:
        ‖∂L/∂W_l‖²_F for l = 1..depth, shape (depth,).
    """
    depth = _check_count(depth, "depth", 2)
    batch_size = _check_count(batch_size, "batch_size", 2 if bn else 1)
    width = _check_count(width, "width", 1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, width, generator=gen, dtype=torch.float64)
    weights = [
        (torch.randn(width, width, generator=gen, dtype=torch.float64) * math.sqrt(2.0 / width))
        .requires_grad_(True)
        for _ in range(depth)
    ]
    for w in weights:
        h = x @ w.T  # (B, width)
        if bn:
            h = F.batch_norm(h, None, None, training=True, eps=1e-5)
        x = torch.relu(h)
    r = torch.randn(batch_size, width, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((x * r).sum(), weights)
    return np.array([g.pow(2).sum().item() for g in grads])


def per_layer_factor(norms: np.ndarray, skip: int = 3) -> float:
    """The growth of a squared gradient norm per layer, going down: a least-squares fit.

    Fits log ‖∂L/∂W_l‖² = c − l·log λ over the layers, leaving out ``skip`` layers at each end
    (the first and last layers see the input and the readout, not the steady state).

    Args:
        norms: squared norms for l = 1..depth, shape (depth,), from :func:`init_gradient_norms`.
        skip: layers left out at each end.

    Returns:
        λ, the factor by which the squared norm grows from one layer to the one below it.
    """
    norms = np.asarray(norms, dtype=np.float64)
    if norms.ndim != 1 or norms.size < 2 * skip + 2:
        raise ValueError(f"norms must be 1-D with more than {2 * skip + 1} layers, got "
                         f"shape {norms.shape}")
    layers = np.arange(norms.size)[skip: norms.size - skip]
    slope = np.polyfit(layers, np.log(norms[skip: norms.size - skip]), 1)[0]
    return float(np.exp(-slope))


# -- length-direction decoupling (Kohler et al. 2019) ------------------------------------------


def decoupled_least_squares(
    condition: float, *, dim: int = 20, steps: int = 200, seed: int = 0
) -> dict[str, np.ndarray]:
    """Least squares by gradient descent on w, and on a length and a direction separately.

    The loss is f(w) = ½ wᵀ S w − bᵀ w with S = diag of eigenvalues spread geometrically from 1
    to ``condition`` (a Gaussian-input regression's population loss, up to a constant), and a
    random b. The decoupled
    scheme writes w = g·u/‖u‖_S, as BN does for a unit whose input covariance is S: each step
    sets the length g to its optimum for the current direction, g = bᵀu/‖u‖_S, and takes one
    gradient step on the direction u of what is left, the generalised Rayleigh quotient
    h(u) = −½(bᵀu)²/(uᵀSu), with step 1/(c²·λ_max), c = bᵀu/‖u‖²_S (the bound on h's
    curvature along the step, as 1/λ_max is f's). Plain GD on w takes the same rule, 1/λ_max.

    Args:
        condition: λ_max/λ_min of S, >= 1.
        dim: the dimension.
        steps: iterations of each method.
        seed: seed of b and of the common starting point.

    Returns:
        ``{"gd": ..., "decoupled": ...}``: f(w_k) − f(w*) for k = 0..steps, shape (steps + 1,).
    """
    condition = _check_positive(condition, "condition")
    if condition < 1:
        raise ValueError(f"condition must be >= 1, got {condition}")
    dim = _check_count(dim, "dim", 2)
    steps = _check_count(steps, "steps", 1)
    rng = np.random.default_rng(seed)
    eig = np.geomspace(1.0, condition, dim)  # (dim,): S is diagonal in its eigenbasis
    b = rng.normal(size=dim)
    start = rng.normal(size=dim)
    w_star = b / eig
    f_star = -0.5 * float(b @ w_star)

    def f(w: np.ndarray) -> float:
        return 0.5 * float(w @ (eig * w)) - float(b @ w)

    gd, w = [], start.copy()
    step = 1.0 / eig.max()
    for _ in range(steps + 1):
        gd.append(f(w) - f_star)
        w = w - step * (eig * w - b)

    decoupled, u = [], start.copy()
    for _ in range(steps + 1):
        norm_s = math.sqrt(float(u @ (eig * u)))
        g = float(b @ u) / norm_s  # the best length for this direction
        decoupled.append(f(g * u / norm_s) - f_star)
        # the gradient of f(g·u/‖u‖_S) in u at fixed g; at the optimal g it is
        # -(bᵀu/‖u‖_S²)·(b − (bᵀu/‖u‖_S²)·S u), orthogonal to u
        coef = float(b @ u) / norm_s**2  # c = bᵀu/‖u‖²_S
        grad_u = -coef * (b - coef * eig * u)  # ∇ of −½(bᵀu)²/(uᵀSu): orthogonal to u
        u = u - grad_u / (coef**2 * eig.max())  # the 1/L step: its curvature is at most c²λ_max
    return {"gd": np.array(gd), "decoupled": np.array(decoupled)}


# -- the one-dimensional landscapes of the stability figure -------------------------------------


def descend_1d(
    grad: Callable[[float], float], x0: float, lr: float, steps: int, bound: float = 1e3
) -> np.ndarray:
    """Gradient descent x ← x − lr·L'(x) on a one-dimensional loss.

    Args:
        grad: L'.
        x0: the start.
        lr: the learning rate, > 0.
        steps: the number of steps.
        bound: stop early once |x| exceeds this (the run has diverged).

    Returns:
        The iterates x_0, x_1, ..., shape (≤ steps + 1,).
    """
    lr = _check_positive(lr, "lr")
    xs = [float(x0)]
    for _ in range(_check_count(steps, "steps", 0)):
        xs.append(xs[-1] - lr * grad(xs[-1]))
        if abs(xs[-1]) > bound:
            break
    return np.array(xs)
