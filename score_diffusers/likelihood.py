"""Exact log-likelihoods and data ↔ latent encoding through the probability-flow ODE.

The probability-flow ODE of an SDE dx = f(x, t)dt + g(t)dw,

    dx/dt = F(x, t) = f(x, t) − ½ g(t)² ∇ₓ log p_t(x),

carries p_ε to p_1 deterministically (Song et al., ICLR 2021, https://arxiv.org/abs/2011.13456, §4.3 and
App. D.2). Along a trajectory d/dt log p_t(x_t) = −∇·F(x_t, t) (the instantaneous change of variables of
Chen et al., 2018), so with x_ε = x the data point and x_1 its latent,

    log p_ε(x) = log p_1(x_1) + ∫_ε^1 ∇·F(x_t, t) dt,

where p_1 is replaced by the SDE's prior. Both are integrated jointly from t = ε to 1 by an adaptive solver of
torchdiffeq (``"dopri5"`` …) or SciPy's `solve_ivp` (``"RK45"`` …), or, with ``"ab4"``, by a fixed-grid
Adams–Bashforth method in ρ = log σ̄ on the state scaled by 1/(α_t·√(s² + σ̄²)), in which the flow is nearly still
away from the data's own scales (one model evaluation per step; the cheap mode). The divergence is exact (the sum of the
D diagonal entries of ∂F/∂x, one backward pass each) or the Skilling–Hutchinson estimate vᵀ(∂F/∂x)v with a fixed set of
probes v per sample for the whole solve, as in score_sde; each probe keeps its own integral, so the spread of
the probes gives a standard error.

The score comes from any callable `model(x, timestep)` returning a tensor or an object with `.sample` (a
Diffusers `UNet2DModel`), turned into ∇ log p_t by the model's `ModelConvention` (a score scheduler's
`convention`): it decides the SDE, the timestep the model receives (`convention.timestep(t)`, passed as a float
tensor of shape `(batch,)`), whether the model predicts the score or ε, and ε, the lower end of the integral. The
model must treat the samples of a batch independently (e.g. `eval()` mode).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict

import torch
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm
from typing_extensions import Unpack

from .checks import SamplingError, all_finite, check_choice, check_generator, check_positive_int
from .conventions import ModelConvention
from .sde import append_dims

# What names a model's conventions here: a `ModelConvention`, or a score scheduler, which carries one.
ConventionLike = Any

Divergence = Literal["exact", "hutchinson"]
Probe = Literal["rademacher", "gaussian"]
TransportMethod = Literal[
    "dopri5", "dopri8", "bosh3", "adaptive_heun", "euler", "midpoint", "rk4", "RK45", "RK23", "DOP853"
]
Method = TransportMethod | Literal["ab4"]
GeneratorLike = torch.Generator | list[torch.Generator] | None

DIVERGENCES: tuple[str, ...] = ("exact", "hutchinson")
DEQUANTIZATIONS: tuple[str, ...] = ("uniform", "truncated_normal")
PROBES: tuple[str, ...] = ("rademacher", "gaussian")
# torchdiffeq's adaptive solvers take `rtol`/`atol`; its fixed-grid ones take `num_steps` instead.
TORCHDIFFEQ_ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
TORCHDIFFEQ_FIXED_METHODS: tuple[str, ...] = ("euler", "midpoint", "rk4")
SCIPY_METHODS: tuple[str, ...] = ("RK45", "RK23", "DOP853")
# Fixed-grid methods of this module, which step uniformly in ρ = log σ̄ on the scaled state of `_LogSigmaFlow`.
LOG_SIGMA_METHODS: tuple[str, ...] = ("ab4",)
FIXED_GRID_METHODS: tuple[str, ...] = TORCHDIFFEQ_FIXED_METHODS + LOG_SIGMA_METHODS
METHODS: tuple[str, ...] = TORCHDIFFEQ_ADAPTIVE_METHODS + FIXED_GRID_METHODS + SCIPY_METHODS
# What `encode` and `decode` take: every method but the likelihood's own log-σ̄ ones.
TRANSPORT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in LOG_SIGMA_METHODS)
# Steps of `"ab4"` per unit of log σ̄ when `num_steps` is not given, so the grid's density, not its count, is fixed
# and the cost follows the SDE's range of σ̄ (`default_ab4_steps`). Chosen by `benchmarks/bench_likelihood.py` (the
# README's likelihood tables): the density at which the exact-score mixtures stay within 1e-3 bits/dim per sample.
AB4_STEPS_PER_LOG_SIGMA = 6
# Adams–Bashforth weights on a uniform grid, newest derivative first: y_{n+1} = y_n + h Σ_j b_j f_{n−j}. The solver
# steps with order 4; orders 3 and 5 on the same derivatives estimate its local error.
_AB3 = (23 / 12, -16 / 12, 5 / 12)
_AB4 = (55 / 24, -59 / 24, 37 / 24, -9 / 24)
_AB5 = (1901 / 720, -2774 / 720, 2616 / 720, -1274 / 720, 251 / 720)
# Simpson's 3/8 rule over three steps, from the four grid derivatives: checks the Runge–Kutta start.
_THREE_EIGHTHS = (1 / 8, 3 / 8, 3 / 8, 1 / 8)

# 8-bit image data has 256 intensity levels; an integer level k is dequantised to (k + u)/256, u ~ U[0, 1).
EIGHT_BIT_LEVELS = 256
# Largest 8-bit level: data in [lo, hi] holds k as lo + (hi − lo)·k/255 (how images are scaled to a range).
_MAX_LEVEL = EIGHT_BIT_LEVELS - 1
# Slack, relative to the width of `data_range`, for float round-off at the range's ends.
_RANGE_SLACK = 1e-6
# Floating dtypes the ODE is never integrated in: with 8 (bfloat16) or 11 (float16) significant bits the state and the
# divergence integral are off by tenths of a bit per dimension, and float16 times stop torchdiffeq (NaN) and SciPy.
HALF_PRECISION: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
# The exact divergence takes D backward passes per evaluation (Hutchinson: `num_probes`); above this D a warning
# says so: at a few hundred evaluations per solve that is hours for an image model where Hutchinson takes seconds.
EXACT_DIVERGENCE_WARN_DIM = 1024
# Evaluations of the right-hand side after which a solve is stopped as not converging (`max_nfe`): score_sde's dopri5
# at its tolerances takes a few hundred on images; a solve that needs fifty times that is stuck (a stiff or noisy
# model), and without a bound it would run for hours.
DEFAULT_MAX_NFE = 20_000
# Largest relative RMS difference between two calls of the model on the same input before it counts as random (dropout
# left on, a noisy model): an adaptive solver cannot meet its tolerances on a random right-hand side.
_DETERMINISM_TOLERANCE = 1e-3


def eight_bit_offset(data_range: tuple[float, float]) -> float:
    """Bits/dim to add to −log₂ p(x)/D so that a density of data scaled to `data_range` is read on the 8-bit scale.

    The 8-bit scale is y = 256·(x − lo)/(hi − lo) ∈ [0, 256), where level k occupies [k, k + 1). Per dimension
    p_y(y) = p_x(x)·(hi − lo)/256, hence −log₂ p_y(y)/D = −log₂ p_x(x)/D + log₂(256/(hi − lo)): 7 bits/dim for
    [−1, 1] and 8 for [0, 1], the offsets score_sde adds.
    """
    low, high = data_range
    return math.log2(EIGHT_BIT_LEVELS / (high - low))


# ---- outputs ----------------------------------------------------------------------------------------------------


@dataclass
class LikelihoodOutput(BaseOutput):
    """Output of `log_likelihood`.

    Args:
        log_likelihood (`torch.Tensor` of shape `(batch,)`):
            log p_ε(x) in nats per sample, a density over the (dequantised) samples in their own scale.
        bits_per_dim (`torch.Tensor` of shape `(batch,)`):
            −log p/(D ln 2), plus `eight_bit_offset(data_range)` when `data_range` is given (the 8-bit scale).
        nfe (`int`):
            Evaluations of the ODE's right-hand side (one batched model call each), summed over the chunks.
        latent (`torch.Tensor` of shape `(batch, *dims)`):
            x_1, the end of each trajectory at t = 1.
        log_likelihood_stderr (`torch.Tensor` of shape `(batch,)`):
            Standard error of `log_likelihood` over the Hutchinson probes (std/√num_probes); 0 for the exact
            divergence, NaN for a single probe. Divide by D ln 2 for bits/dim.
        prior_log_prob (`torch.Tensor` of shape `(batch,)`):
            log p_1(x_1) under the SDE's prior; `log_likelihood − prior_log_prob` is ∫ ∇·F dt.
        dequantization (`str`): the dequantisation convention of `bits_per_dim`: `"none"`, `"uniform"` or
            `"truncated_normal(std=… bins)"`.
        error_estimate (`torch.Tensor` of shape `(batch,)`): for `method="ab4"` with 4 steps or more, the local
            error estimates of the log-density integral summed over the steps (nats; divide by D ln 2 for bits/dim;
            the mean over the probes): an order of magnitude, not a bound (the README compares it with the actual
            error). NaN for the other methods: the adaptive ones hold each step's local error to `rtol`/`atol`
            instead, torchdiffeq's fixed-grid ones estimate nothing.
    """

    log_likelihood: torch.Tensor
    bits_per_dim: torch.Tensor
    nfe: int
    latent: torch.Tensor
    log_likelihood_stderr: torch.Tensor
    prior_log_prob: torch.Tensor
    dequantization: str = "none"
    error_estimate: torch.Tensor | None = None


@dataclass
class DequantizedLikelihoodOutput(BaseOutput):
    """Output of `dequantized_log_likelihood`.

    Args:
        bits_per_dim (`torch.Tensor` of shape `(batch,)`): the importance-weighted bound on −log₂ P(k)/D, 8-bit scale.
        bits_per_dim_per_draw (`torch.Tensor` of shape `(batch, K)`): each draw's own bound (`log_likelihood`'s).
        nfe (`int`): evaluations of the ODE's right-hand side for all K × batch solves.
        dequantization (`str`): the convention, e.g. `"importance_weighted(K=10, truncated_normal(std=1.3 bins))"`.
        error_estimate (`torch.Tensor` of shape `(batch, K)`): each draw's `LikelihoodOutput.error_estimate`
            (nats; NaN but for `method="ab4"`).
    """

    bits_per_dim: torch.Tensor
    bits_per_dim_per_draw: torch.Tensor
    nfe: int
    dequantization: str
    error_estimate: torch.Tensor | None = None


@dataclass
class FlowOutput(BaseOutput):
    """Output of `encode` and `decode`.

    Args:
        sample (`torch.Tensor` of shape `(batch, *dims)`): latents at t = 1 (`encode`) or samples at t = ε (`decode`).
        nfe (`int`): evaluations of the ODE's right-hand side, summed over the chunks.
    """

    sample: torch.Tensor
    nfe: int


@dataclass
class RoundTripOutput(BaseOutput):
    """Output of `round_trip`.

    Args:
        latent (`torch.Tensor` of shape `(batch, *dims)`): `encode(samples)`.
        reconstruction (`torch.Tensor` of shape `(batch, *dims)`): `decode(latent)`.
        error (`torch.Tensor` of shape `(batch,)`): per-sample RMS of `reconstruction − samples`.
        nfe (`int`): evaluations of both solves together.
    """

    latent: torch.Tensor
    reconstruction: torch.Tensor
    error: torch.Tensor
    nfe: int


# ---- the probability-flow drift and its divergence ----------------------------------------------------------------


def _model_dtype(model: Any) -> torch.dtype | None:
    """The floating dtype `model` computes in (a Diffusers model's `.dtype`, else its first floating parameter)."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(model, torch.nn.Module):
        return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return None


def _finite_drift(drift: torch.Tensor, t: float) -> torch.Tensor:
    """`drift`, or a `SamplingError` if it overflowed though the model output it came from was finite."""
    if not all_finite(drift.detach()):
        raise SamplingError(
            f"the probability-flow drift overflowed to NaN or infinity at t = {t:.6g} (the model output was "
            f"finite; the state has grown too large for {drift.dtype}); the solve stopped."
        )
    return drift


class _ProbabilityFlow:
    """F(x, t) = f(x, t) − ½g(t)²·s_θ(x, t) for the convention's SDE, with the score of `model`.

    The model is called in its own dtype (inputs cast, output cast back), so a float32 network serves a float64
    integration.
    """

    def __init__(self, model: Callable[..., Any], convention: ModelConvention,
                 class_labels: torch.Tensor | None = None):
        self.model = model
        self.convention = convention
        self.model_dtype = _model_dtype(model)
        self.class_labels = class_labels

    def for_rows(self, rows: slice) -> _ProbabilityFlow:
        """The flow of the samples `rows` of the batch (their class labels)."""
        labels = None if self.class_labels is None else self.class_labels[rows]
        return _ProbabilityFlow(self.model, self.convention, labels)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The drift at `x` of shape `(batch, *dims)` and time `t`, shape and dtype of `x`."""
        return self.drift(x, t, self.score(x, t))

    @staticmethod
    def time(t: float) -> float:
        """The time of the time variable: t itself (`_LogSigmaFlow` integrates in ρ = log σ̄ instead)."""
        return t

    def score_and_drift(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The score at `x` and the drift it gives, both of the shape and dtype of `x`."""
        score = self.score(x, t)
        return score, self.drift(x, t, score)

    def drift(self, x: torch.Tensor, t: float, score: torch.Tensor) -> torch.Tensor:
        """f(x, t) − ½g(t)²·`score`, shape and dtype of `x`."""
        return _finite_drift(self.convention.sde.reverse_drift(x, t, score, probability_flow=True).to(x.dtype), t)

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """∇ₓ log p_t(x) from the model, shape and dtype of `x`."""
        if not math.isfinite(t):
            raise SamplingError(f"the solver stepped to t = {t}; the solve stopped (its error estimate was not finite)")
        dtype = self.model_dtype or x.dtype
        timestep = self.convention.timestep(t).to(device=x.device, dtype=dtype).expand(x.shape[0])
        kwargs = {} if self.class_labels is None else {"class_labels": self.class_labels.to(x.device)}
        output = self.model(x.to(dtype), timestep, **kwargs)
        output = getattr(output, "sample", output)
        if not isinstance(output, torch.Tensor) or output.shape != x.shape:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"`model` must return a tensor of the samples' shape {tuple(x.shape)}; got {shape}.")
        if not output.is_floating_point():
            raise ValueError(f"`model` must return a floating tensor; got {output.dtype}.")
        if not all_finite(output):
            raise SamplingError(f"`model` returned NaN or infinite values at t = {t:.6g}; the solve stopped.")
        sigma = float(self.convention.sde.marginal_std(torch.tensor(t, dtype=torch.float64)))
        return self.convention.score_from_output(output.to(x.dtype), sigma)


class _LogSigmaFlow:
    """The probability-flow ODE in ρ = log σ̄ (σ̄ = σ_t/α_t, EDM's σ) for the scaled state w = x/(α_t·c), with
    c = √(s² + σ̄²) and s each sample's RMS (EDM's input scaling c_in, the data scale read off the sample):

        dw/dρ = −(σ̄²/c²)·(w + c·α_t·∇ₓ log p_t(x)),   x = α_t·c·w,

    from dx/dt = (d log σ_t/dt)·x + (d log α_t/dt − d log σ_t/dt)·α_t·x̂₀ and Tweedie's x̂₀ = (x + σ_t²∇ log p_t)/α_t.
    For data N(0, s²I) the state stands still; on other data it moves mostly where σ̄ is within the data's own
    scales, so a uniform ρ-grid serves all three SDEs. Densities follow the change of variables
    log p(x_ε) = log p(x_1) + D·log(α_1c_1/(α_εc_ε)) + ∫ ∇_w·(dw/dρ) dρ over [ρ_ε, ρ_1].
    """

    def __init__(self, flow: _ProbabilityFlow, data_scale: torch.Tensor):
        self.flow = flow
        self.data_scale = data_scale  # (batch, 1)
        self.t_span = _time_span(flow.convention)
        self.span = tuple(math.log(float(ratio)) for ratio in flow.convention.noise_to_signal_range())

    def for_rows(self, rows: slice) -> _LogSigmaFlow:
        """The flow of the samples `rows` of the batch."""
        return _LogSigmaFlow(self.flow.for_rows(rows), self.data_scale[rows])

    def time(self, rho: float) -> float:
        """The time t with log σ̄_t = `rho`, pinned to [ε, T] (the inverse is a few ulps off at the ends)."""
        ratio = torch.tensor(math.exp(rho), dtype=torch.float64)
        t = float(self.flow.convention.sde.time_from_noise_to_signal(ratio))
        return min(max(t, self.t_span[0]), self.t_span[1])

    def _coefficients(self, rho: float, t: float) -> tuple[float, torch.Tensor]:
        """α_t and c = √(s² + σ̄²) of shape `(batch, 1)` at ρ = `rho`, t = `time(rho)`."""
        alpha = float(self.flow.convention.sde.mean_coeff(torch.tensor(t, dtype=torch.float64)))
        return alpha, (self.data_scale.pow(2) + math.exp(2 * rho)).sqrt()

    def state_scale(self, rho: float) -> torch.Tensor:
        """α_t·c of shape `(batch, 1)`: x = α_t·c·w."""
        alpha, c = self._coefficients(rho, self.time(rho))
        return alpha * c

    def score_and_drift(self, w: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The score at x = α_t·c·w and dw/dρ, both of shape `(batch, *dims)`."""
        t = self.time(rho)
        alpha, c = self._coefficients(rho, t)
        c = append_dims(c.reshape(-1), w.ndim)
        score = self.flow.score(alpha * c * w, t)
        return score, _finite_drift(-(math.exp(2 * rho) / c.pow(2)) * (w + c * alpha * score), t)


def _drift_and_divergence(
    flow: _ProbabilityFlow | _LogSigmaFlow, x: torch.Tensor, tau: float, probes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A flow's drift F(x) at its time variable `tau` (t, or ρ = log σ̄) and its divergence, without keeping the
    autograd graph.

    Args:
        x (`torch.Tensor` of shape `(batch, *dims)`): where to evaluate (x, or the scaled state w).
        probes (`torch.Tensor` of shape `(batch, P, D)`, *optional*): Hutchinson probes v; `None` for the exact
            divergence Σ_i ∂F_i/∂x_i.

    Returns:
        The drift (shape of `x`) and the divergence of shape `(batch, P)` (one estimate vᵀ(∂F/∂x)v per probe),
        or `(batch, 1)` when exact.
    """
    batch = x.shape[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        score, drift = flow.score_and_drift(x, tau)
        if not score.requires_grad:
            raise ValueError(
                "The divergence needs a model output that is differentiable with respect to its input; the model "
                "returned a tensor without an autograd graph (is it running under torch.no_grad() or via NumPy?)."
            )
        flat = drift.reshape(batch, -1)
        # Samples are independent, so one backward pass of a batch sum gives every sample's own derivatives.
        if probes is None:
            # Σ_i ∂F_i/∂x_i: each gradient's diagonal entry is copied out and the gradient dropped (keeping the D
            # gradients, each `(batch, D)`, until the sum held batch·D² values); one sum at the end, not a running
            # one, whose float32 round-off grows with D.
            dim = flat.shape[1]
            diagonal = flat.new_empty(batch, dim)
            for i in range(dim):
                diagonal[:, i] = _input_grad(flat[:, i].sum(), x, retain=i < dim - 1).reshape(batch, -1)[:, i]
            divergence = diagonal.sum(dim=1, keepdim=True)
        else:
            num_probes = probes.shape[1]
            estimates = [
                (_input_grad((flat * probes[:, p]).sum(), x, retain=p < num_probes - 1).reshape(batch, -1)
                 * probes[:, p]).sum(dim=1)
                for p in range(num_probes)
            ]
            divergence = torch.stack(estimates, dim=1)
    if not all_finite(divergence):
        raise SamplingError(
            f"the divergence of the drift is NaN or infinite at t = {flow.time(tau):.6g}: the model's derivative "
            "with respect to its input is not finite, though its output was; the solve stopped."
        )
    return drift.detach(), divergence.detach()


def _input_grad(output: torch.Tensor, x: torch.Tensor, retain: bool) -> torch.Tensor:
    """∂output/∂x, zeros where `output` does not depend on `x`."""
    (grad,) = torch.autograd.grad(output, x, retain_graph=retain, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


# ---- solver -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SolverSettings:
    method: str
    rtol: float
    atol: float
    num_steps: int | None
    batch_size: int | None
    show_progress: bool
    max_nfe: int


def _check_solver_settings(
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
    batch_size: int | None = None,
    show_progress: bool = True,
    max_nfe: int = DEFAULT_MAX_NFE,
) -> _SolverSettings:
    """Validate the solver arguments (defaults as in `log_likelihood`)."""
    check_choice("method", method, METHODS)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"`{name}` must be a finite number > 0; got {value!r}.")
    if method in TORCHDIFFEQ_FIXED_METHODS:
        if num_steps is None:
            raise ValueError(f"The fixed-grid `method` {method!r} needs `num_steps` (an integer >= 1).")
        check_positive_int("num_steps", num_steps)
    elif method in LOG_SIGMA_METHODS:
        if num_steps is not None:
            check_positive_int("num_steps", num_steps)
    elif num_steps is not None:
        raise ValueError(
            f"`num_steps` is only used by the fixed-grid methods {', '.join(map(repr, FIXED_GRID_METHODS))}; "
            f"the adaptive {method!r} takes `rtol`/`atol`."
        )
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    check_positive_int("max_nfe", max_nfe)
    return _SolverSettings(method, float(rtol), float(atol), num_steps, batch_size, bool(show_progress), max_nfe)


def _per_sample_max_rms(tensor: torch.Tensor) -> torch.Tensor:
    """Error norm for torchdiffeq: the largest per-sample RMS, so each sample meets the tolerances on its own."""
    return tensor.reshape(tensor.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


def _adams_bashforth(
    rhs: Callable[[float, torch.Tensor], torch.Tensor], y0: torch.Tensor, t_span: tuple[float, float], num_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fourth-order Adams–Bashforth on `num_steps` uniform steps over `t_span`, started by classical Runge–Kutta.

    y_{n+1} = y_n + h·Σ_j b_j·f_{n−j} with the order-4 weights, one evaluation per step once four derivatives are
    known; the first three steps are RK4 (four evaluations each), so the start keeps fourth order (an Euler start
    would leave a second-order error where the flow of image data moves fast, at σ̄_ε). NFE: 4·`num_steps` up to 3
    steps, `num_steps` + 9 from 4.

    Returns y at the end and, per component, an error estimate of the shape of `y0`: the start's |y_3 − y_0 −
    3h·Σ (1, 3, 3, 1)/8·f| against Simpson's 3/8 rule on the four grid derivatives, plus each Adams step's
    |h·Σ_j (b_j − b̂_j)·f_{n−j}| against the order-5 weights b̂ on the same derivatives (order 3 on the first);
    NaN below four steps, where the end's derivative is never evaluated.
    """
    t_start, t_end = t_span
    step = (t_end - t_start) / num_steps
    history: list[torch.Tensor] = []  # derivatives at the grid points so far, newest first
    y = y0
    error = torch.full_like(y0, math.nan) if num_steps < 4 else torch.zeros_like(y0)
    for n in range(num_steps):
        t = t_start + n * step
        history.insert(0, rhs(t, y))
        del history[len(_AB5):]
        if len(history) < len(_AB4):
            k1 = history[0]
            k2 = rhs(t + step / 2, y + step / 2 * k1)
            k3 = rhs(t + step / 2, y + step / 2 * k2)
            k4 = rhs(t + step, y + step * k3)
            y = y + step / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            continue
        if len(history) == len(_AB4):
            quadrature = 3 * step * sum(b * f for b, f in zip(_THREE_EIGHTHS, reversed(history)))
            error = error + (y - y0 - quadrature).abs()
        increment = sum(b * f for b, f in zip(_AB4, history))
        reference = sum(b * f for b, f in zip(_AB5 if len(history) == len(_AB5) else _AB3, history))
        error = error + (step * (increment - reference)).abs()
        y = y + step * increment
    return y, error


def _integrate(
    rhs: Callable[[float, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    t_span: tuple[float, float],
    settings: _SolverSettings,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Solve dy/dt = rhs(t, y) for the state `y0` of shape `(batch, K)` over `t_span`.

    Returns y at its end and, for `"ab4"`, its summed local error estimates (shape of `y0`; `None` otherwise).
    """
    t_start, t_end = t_span
    if settings.method in LOG_SIGMA_METHODS:
        return _adams_bashforth(rhs, y0, t_span, settings.num_steps)
    if settings.method in SCIPY_METHODS:
        from scipy.integrate import solve_ivp

        def scipy_rhs(t: float, y):
            state = torch.from_numpy(y).to(device=y0.device, dtype=y0.dtype).reshape(y0.shape)
            return rhs(t, state).reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

        initial = y0.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
        solution = solve_ivp(
            scipy_rhs, t_span, initial, method=settings.method, rtol=settings.rtol, atol=settings.atol
        )
        if not solution.success:
            raise SamplingError(f"solve_ivp({settings.method!r}) did not converge: {solution.message}")
        return torch.from_numpy(solution.y[:, -1]).to(device=y0.device, dtype=y0.dtype).reshape(y0.shape), None

    from torchdiffeq import odeint

    times = torch.tensor([t_start, t_end], dtype=torch.float64, device=y0.device)
    if settings.method in TORCHDIFFEQ_FIXED_METHODS:
        # torchdiffeq flips a decreasing time span itself, so the step size is positive in both directions.
        options = {"step_size": abs(t_end - t_start) / settings.num_steps}
    else:
        # `step_t` makes the last step land on t_end: past it the SDE's coefficients may be undefined (VP at t < 0).
        # (A tensor, which torchdiffeq negates for a decreasing time span.)
        options = {"norm": _per_sample_max_rms, "step_t": times[1:]}
    try:
        return odeint(
            lambda t, y: rhs(float(t), y), y0, times, rtol=settings.rtol, atol=settings.atol,
            method=settings.method, options=options,
        )[-1], None
    except AssertionError as error:  # torchdiffeq's "underflow in dt": the step size collapsed
        raise SamplingError(f"the {settings.method} solve did not converge: {error}") from error


def _solve_in_chunks(
    states: torch.Tensor,
    t_span: tuple[float, float],
    settings: _SolverSettings,
    make_rhs: Callable[[slice], Callable[[float, torch.Tensor], torch.Tensor]],
    description: str,
) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """Integrate the rows of `states` (shape `(N, K)`) in chunks of `settings.batch_size`, under `torch.no_grad`.

    `make_rhs(rows)` gives the right-hand side for the chunk `states[rows]`. Returns the final states, the NFE
    summed over the chunks and the error estimates of `_integrate` (or `None`); a progress bar counts samples and
    shows the running NFE.
    """
    num_samples = states.shape[0]
    chunk = settings.batch_size or num_samples
    nfe = 0
    finals, errors = [], []
    with torch.no_grad(), tqdm(
        total=num_samples, desc=description, unit="sample", disable=not settings.show_progress
    ) as bar:
        for start in range(0, num_samples, chunk):
            rows = slice(start, start + chunk)
            rhs = make_rhs(rows)
            chunk_start_nfe = nfe

            def counted_rhs(t: float, y: torch.Tensor) -> torch.Tensor:
                nonlocal nfe
                nfe += 1
                if nfe - chunk_start_nfe > settings.max_nfe and settings.method not in FIXED_GRID_METHODS:
                    raise SamplingError(
                        f"the {settings.method} {description} solve did not converge within max_nfe = "
                        f"{settings.max_nfe} evaluations (at t = {t:.6g}); the model may be stiff or noisy there, or "
                        "the tolerances too tight for its dtype."
                    )
                bar.set_postfix(nfe=nfe, refresh=False)
                bar.update(0)  # redraws at most every `mininterval`
                return rhs(t, y)

            final, error = _integrate(counted_rhs, states[rows], t_span, settings)
            finals.append(final)
            errors.append(error)
            bar.update(final.shape[0])
    return torch.cat(finals), nfe, None if errors[0] is None else torch.cat(errors)


# ---- input checks and random draws ------------------------------------------------------------------------------


def _convention_of(scheduler: ConventionLike) -> ModelConvention:
    """The `ModelConvention` that `scheduler` is or carries."""
    convention = scheduler if isinstance(scheduler, ModelConvention) else getattr(scheduler, "convention", None)
    if not isinstance(convention, ModelConvention):
        raise ValueError(
            f"`scheduler` must be a score scheduler of this package or a `ModelConvention`; got "
            f"{type(scheduler).__name__}. Convert a Diffusers DDPM or score-SDE scheduler with "
            "`ProbabilityFlowScheduler.from_config(scheduler.config)` or `ModelConvention.from_config(scheduler.config)`."
        )
    return convention


def _model_sample_shape(model: Any) -> tuple[int, ...] | None:
    """`(in_channels, height, width)` of the samples a model's config declares (a Diffusers `UNet2DModel`'s
    `in_channels` and `sample_size`, an int or a pair); None for a model without them."""
    config = getattr(model, "config", None)
    channels, size = getattr(config, "in_channels", None), getattr(config, "sample_size", None)
    if not isinstance(channels, int) or size is None:
        return None
    return (channels, *((size, size) if isinstance(size, int) else tuple(size)))


def _model_device(model: Any) -> torch.device | None:
    """The device of a `torch.nn.Module`'s first parameter or buffer (None for other callables or none at all)."""
    if not isinstance(model, torch.nn.Module):
        return None
    tensor = next(model.parameters(), None)
    tensor = tensor if tensor is not None else next(model.buffers(), None)
    return None if tensor is None else tensor.device


def _takes_class_labels(model: Callable[..., Any]) -> bool | None:
    """Whether a callable must (True) or cannot (False) be given `class_labels=`, from its signature; None where
    either works (an optional parameter, `**kwargs`) or the signature is unknown."""
    function = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return None
    if "class_labels" in parameters:
        return True if parameters["class_labels"].default is inspect.Parameter.empty else None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return False


def _check_model(
    model: Any, samples: torch.Tensor, class_labels: torch.Tensor | None, name: str, caller: str = "log_likelihood"
) -> None:
    """Refuse, before the solve, a model that cannot serve it: not callable, on another device than `samples`, or
    whose class conditioning (a Diffusers unet's `num_class_embeds`, or a callable's `class_labels` parameter) does
    not match `class_labels`; warn of a module left in training mode."""
    if not callable(model):
        raise ValueError(f"`model` must be callable as model(x, timestep); got {type(model).__name__}.")
    device = _model_device(model)
    if device is not None and device != samples.device:
        raise ValueError(
            f"`{name}` are on {samples.device} but `model` is on {device}; move them with `{name}.to({str(device)!r})`."
        )
    if isinstance(model, torch.nn.Module) and model.training:
        warnings.warn(
            "`model` is in training mode: dropout or batch statistics make the drift random or couple the samples, "
            "so the likelihood is wrong. Call `model.eval()` first.",
            stacklevel=4,
        )
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_class_embeds"):
        num_classes = getattr(config, "num_class_embeds", None)
        conditional = num_classes is not None or getattr(config, "class_embed_type", None) is not None
    else:
        conditional, num_classes = _takes_class_labels(model), None
    if class_labels is not None and conditional is False:
        raise ValueError(
            "`class_labels` were given but `model` is not class-conditional (its config has no `num_class_embeds` "
            "or its call takes no `class_labels`); leave them out."
        )
    if class_labels is None and conditional:
        if caller != "log_likelihood":
            raise ValueError(
                f"`model` is class-conditional; `{caller}` takes no `class_labels` (`log_likelihood` does)."
            )
        raise ValueError("`model` is class-conditional; pass `class_labels`, one label or one per sample.")
    if class_labels is not None and isinstance(num_classes, int) and getattr(config, "class_embed_type", None) is None:
        if int(class_labels.min()) < 0 or int(class_labels.max()) >= num_classes:
            raise ValueError(
                f"`class_labels` must lie in [0, {num_classes - 1}] (the model's num_class_embeds = {num_classes}); "
                f"got values in [{int(class_labels.min())}, {int(class_labels.max())}]."
            )


def _check_deterministic(flow: _ProbabilityFlow, samples: torch.Tensor, t: float) -> None:
    """Refuse a model whose two calls on the same input differ (dropout left on, a noisy model): an adaptive solver
    shrinks its steps forever on a random right-hand side. Two calls on at most two samples, not counted as NFE."""
    rows = slice(0, min(2, samples.shape[0]))
    probe_flow, x = flow.for_rows(rows), samples[rows]
    with torch.no_grad():
        first, second = probe_flow.score(x, t), probe_flow.score(x, t)
    scale = first.double().pow(2).mean().sqrt()
    difference = (first.double() - second.double()).pow(2).mean().sqrt()
    if difference > _DETERMINISM_TOLERANCE * scale:
        raise ValueError(
            f"`model` is not deterministic: two calls on the same input at t = {t:.6g} differ by "
            f"{float(difference):.3g} (RMS, against {float(scale):.3g}). The ODE needs a deterministic model: call "
            "`model.eval()` (dropout) and remove any noise it adds."
        )


def _check_model_shape(model: Any, samples: torch.Tensor, name: str) -> None:
    """Refuse `samples` of another shape than `(batch, in_channels, *sample_size)` where the model's config declares
    it: a convolutional network runs on other sizes too, but its density there is not the one it was trained for."""
    expected = _model_sample_shape(model)
    if expected is None or tuple(samples.shape[1:]) == expected:
        return
    hint = ""
    if tuple(samples.shape[1:]) == expected[1:]:
        hint = f"; they have no channel dimension: add it with `{name}[:, None]`"
    raise ValueError(
        f"`{name}` of shape {tuple(samples.shape)} do not fit the model, which takes "
        f"(batch, {', '.join(map(str, expected))}) (its config's in_channels and sample_size){hint}."
    )


def _checked_samples(samples: Any, name: str, dtype: torch.dtype | None, model: Any = None) -> torch.Tensor:
    """`samples` as a batch-first floating tensor in `dtype` (default: its own floating dtype, float32 for half
    precision), of the shape `model`'s config declares, if it declares one."""
    if not isinstance(samples, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor of shape (batch, *dims); got {type(samples).__name__}.")
    if samples.ndim >= 1 and samples.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch (shape {tuple(samples.shape)}); give at least one sample.")
    if samples.ndim < 2 or samples[0].numel() == 0:
        raise ValueError(
            f"`{name}` must be batch-first with shape (batch, *dims), batch >= 1 and at least one value per sample; "
            f"got shape {tuple(samples.shape)} (add a batch dimension with `{name}[None]`)."
        )
    _check_model_shape(model, samples, name)
    if not samples.is_floating_point():
        raise ValueError(
            f"`{name}` must be a floating tensor; got {samples.dtype}. Scale 8-bit images to the model's range first "
            "(e.g. x / 127.5 - 1 for [-1, 1]) and pass `data_range` to report bits/dim on the 8-bit scale."
        )
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"`dtype` must be a floating dtype such as torch.float64; got {dtype!r}.")
    if dtype in HALF_PRECISION:
        raise ValueError(
            f"`dtype` {dtype} is too coarse to integrate the ODE (its state and the divergence integral lose whole "
            "tenths of a bit per dimension, or the solve stops); use torch.float32 or torch.float64. The model "
            "still runs in its own dtype."
        )
    if dtype is None and samples.dtype in HALF_PRECISION:
        warnings.warn(
            f"`{name}` are {samples.dtype}, too coarse to integrate the ODE in; integrating in torch.float32 instead "
            "(results are float32; the model still runs in its own dtype). Pass dtype=torch.float32 to say so.",
            stacklevel=3,
        )
        dtype = torch.float32
    samples = samples.detach().to(dtype or samples.dtype)
    if not bool(torch.isfinite(samples).all()):
        raise ValueError(f"`{name}` holds NaN or infinite values.")
    return samples


def _check_data_range(samples: torch.Tensor, data_range: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"`data_range` must be a pair (low, high) of numbers; got {data_range!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"`data_range` must be finite with low < high; got {data_range!r}.")
    slack = _RANGE_SLACK * (high - low)
    smallest, largest = float(samples.min()), float(samples.max())
    if smallest < low - slack or largest > high + slack:
        raise ValueError(
            f"`samples` must lie in `data_range` [{low}, {high}]; they span [{smallest:.6g}, {largest:.6g}]. "
            "Scale them to the range first (e.g. x * 2 - 1 maps [0, 1] images to [-1, 1])."
        )
    return low, high


def _draw_per_sample(
    draw: Callable[[tuple[int, ...], torch.Generator | None, torch.device], torch.Tensor],
    shape: tuple[int, ...],
    generator: GeneratorLike,
    device: torch.device,
) -> torch.Tensor:
    """`draw(shape, generator, device)` with one generator, or row by row with a list of one generator per row.

    Draws happen on the generator's device (CPU without one) and move to `device`.
    """
    if isinstance(generator, list):
        rows = [draw((1, *shape[1:]), g, g.device) for g in generator]
        return torch.cat(rows).to(device)
    return draw(shape, generator, generator.device if generator is not None else torch.device("cpu")).to(device)


def _check_finite_result(values: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise `SamplingError` if a solve's result overflowed (every evaluation was finite, the end is not)."""
    if not bool(torch.isfinite(values).all()):
        raise SamplingError(
            f"the result of the solve is not finite in {dtype} (its state or the prior's log-density overflowed); "
            "integrate with dtype=torch.float64, or check the samples' scale."
        )


def _dequantization_kind(dequantize: bool | str) -> str | None:
    """`None` (no dequantisation), `"uniform"` or `"truncated_normal"` from `log_likelihood`'s `dequantize`."""
    if dequantize is False or dequantize is None:
        return None
    if dequantize is True:
        return "uniform"
    check_choice("dequantize", dequantize, DEQUANTIZATIONS)
    return dequantize


def truncated_normal_std(convention: ModelConvention, data_range: tuple[float, float]) -> float:
    """The truncated-normal dequantisation's std in 8-bit bin units: σ̄_ε = σ_ε/α_ε, the model's least noise,
    measured in bins of width (high − low)/256, so that the dequantisation noise looks like the forward process at ε
    (the training-free choice of i-DODE, Zheng et al., 2023, https://arxiv.org/abs/2305.03935)."""
    alpha, sigma = convention.coefficients(torch.tensor(convention.sampling_eps, dtype=torch.float64))
    low, high = data_range
    return float(sigma / alpha) * EIGHT_BIT_LEVELS / (high - low)


def _dequantize(
    samples: torch.Tensor, data_range: tuple[float, float], generator: GeneratorLike, kind: str, std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantisation on the 8-bit grid: level k = round((x − lo)/(hi − lo)·255) becomes lo + (hi − lo)·(k + v)/256
    with v in [0, 1) drawn from `generator`: uniform, or (`"truncated_normal"`) ½ + N(0, std²) truncated to
    [−½, ½] (std in bins). Returns the points and Σ_d log q(v_d) per sample (0 for uniform), the log-density of the
    noise in bin units, which a bound on −log P(k) adds to −log p(x)."""
    low, high = data_range
    width = high - low
    levels = torch.round((samples - low) / width * _MAX_LEVEL).clamp(0, _MAX_LEVEL)
    uniform = _draw_per_sample(
        lambda shape, g, device: torch.rand(shape, generator=g, device=device, dtype=samples.dtype),
        tuple(samples.shape), generator, samples.device,
    )
    if kind == "uniform":
        return low + width * (levels + uniform) / EIGHT_BIT_LEVELS, samples.new_zeros(samples.shape[0])
    # Inverse CDF of N(0, std²) on [−½, ½]: v = std·Φ⁻¹(Φ(a) + U·(Φ(b) − Φ(a))), a = −b = −½/std.
    edge = torch.tensor(0.5 / std, dtype=torch.float64)
    lower, mass = torch.special.ndtr(-edge), torch.special.ndtr(edge) - torch.special.ndtr(-edge)
    offset = std * torch.special.ndtri(lower + uniform.double() * mass)
    offset = offset.clamp(-0.5, 0.5 - 1e-12)
    log_q = -0.5 * (offset / std) ** 2 - math.log(std * math.sqrt(2 * math.pi)) - torch.log(mass)
    points = low + width * (levels + 0.5 + offset.to(samples.dtype)) / EIGHT_BIT_LEVELS
    return points, log_q.flatten(1).sum(1).to(samples.dtype)


def _draw_probes(
    probe: str, shape: tuple[int, int, int], generator: GeneratorLike, like: torch.Tensor
) -> torch.Tensor:
    """Hutchinson probes of shape `(batch, P, D)` with E[vvᵀ] = I: Rademacher ±1 or standard normal."""

    def draw(shape: tuple[int, ...], g: torch.Generator | None, device: torch.device) -> torch.Tensor:
        if probe == "gaussian":
            return torch.randn(shape, generator=g, device=device, dtype=like.dtype)
        return torch.randint(0, 2, shape, generator=g, device=device).to(like.dtype) * 2 - 1

    return _draw_per_sample(draw, shape, generator, like.device)


def default_ab4_steps(convention: ModelConvention) -> int:
    """Steps of `method="ab4"` without `num_steps`: `AB4_STEPS_PER_LOG_SIGMA` per unit of log σ̄ from ε to T."""
    ratio_min, ratio_max = convention.noise_to_signal_range()
    return math.ceil(AB4_STEPS_PER_LOG_SIGMA * math.log(float(ratio_max / ratio_min)))


def _time_span(convention: ModelConvention) -> tuple[float, float]:
    """(ε, T): the convention's last sampling time and the SDE's end."""
    return convention.sampling_eps, float(convention.sde.T)


# ---- public API ---------------------------------------------------------------------------------------------------


def log_likelihood(
    model: Callable[..., Any],
    scheduler: ConventionLike,
    samples: torch.Tensor,
    *,
    data_range: tuple[float, float] | None = None,
    dequantize: bool | str = False,
    class_labels: torch.Tensor | None = None,
    divergence: Divergence = "hutchinson",
    probe: Probe = "rademacher",
    num_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: Method = "dopri5",
    num_steps: int | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int | None = None,
    generator: GeneratorLike = None,
    show_progress: bool = True,
    max_nfe: int = DEFAULT_MAX_NFE,
) -> LikelihoodOutput:
    """Log-likelihood of `samples` under the probability-flow ODE of `model` and `scheduler`.

    Integrates dx/dt = F(x, t) = f − ½g²·s_θ together with d/dt ℓ = ∇·F from t = ε to 1 and returns
    log p_ε(x) = log p_prior(x_1) + ∫_ε^1 ∇·F(x_t, t) dt. The result is the density of the data perturbed to t = ε
    (σ_ε = σ_min for VE at ε ≈ 0), with the SDE's prior standing in for p_1.

    Args:
        model (`Callable`): `model(x, timestep)` → score or ε (per the convention's `prediction_type`) as a tensor
            or an object with `.sample`; differentiable in `x`. Fed `convention.timestep(t)` as a float tensor of
            shape `(batch,)` in the model's dtype.
        scheduler (`ModelConvention` or a score scheduler): the model's convention (a scheduler's `convention`):
            the SDE, ε and the time and prediction conventions. A DDPM checkpoint's converts with
            `ModelConvention.from_config(ddpm_scheduler.config)`.
        samples (`torch.Tensor` of shape `(batch, *dims)`): the points x, batch >= 1; D = prod(dims). A model
            whose config has `in_channels` and `sample_size` (a `UNet2DModel`) takes only dims =
            `(in_channels, *sample_size)`.
        data_range (`tuple[float, float]`, *optional*): declares `samples` to be 8-bit image data scaled to
            [low, high] (level k ↦ low + (high − low)·k/255). Samples outside raise; `bits_per_dim` is then reported
            on the 8-bit scale (`eight_bit_offset`: +7 for [−1, 1], +8 for [0, 1]).
        dequantize (`bool` or `str`, defaults to `False`): replace level k by (k + v)/256 scaled to `data_range`,
            v from `generator`; needs `data_range`. `True` or `"uniform"`: v ~ U[0, 1), as score_sde does;
            `"truncated_normal"`: v = ½ + N(0, s²) truncated to [−½, ½] with s = `truncated_normal_std` (the
            model's σ̄_ε in bins), and `bits_per_dim` adds Σ log q(v)/(D ln 2), so it stays a bound on the 8-bit
            data's −log₂ P(k)/D (tighter where the model is smooth at ε). `dequantized_log_likelihood` averages
            K draws in the importance-weighted bound.
        class_labels (`torch.Tensor` of shape `(batch,)`, *optional*): passed to the model as `class_labels=`
            (a class-conditional unet's `num_class_embeds`), chunk by chunk.
        divergence (`str`, defaults to `"hutchinson"`): `"exact"` (D backward passes per evaluation, one gradient
            held at a time, so the memory of one backward pass; a warning above `EXACT_DIVERGENCE_WARN_DIM`) or
            `"hutchinson"` (`num_probes` backward passes).
        probe (`str`, defaults to `"rademacher"`): Hutchinson probe law, `"rademacher"` or `"gaussian"`.
        num_probes (`int`, defaults to 1): probes per sample, fixed for the whole solve and averaged; ignored by
            the exact divergence.
        rtol (`float`, defaults to 1e-5), atol (`float`, defaults to 1e-5): tolerances of an adaptive solver.
            torchdiffeq's solvers here meet them per sample (error norm = largest per-sample RMS); SciPy's use the
            RMS over the whole chunk.
        method (`str`, defaults to `"dopri5"`): torchdiffeq's adaptive `"dopri5"`, `"dopri8"`, `"bosh3"`,
            `"adaptive_heun"`, its fixed-grid `"euler"`, `"midpoint"`, `"rk4"` (uniform in t), SciPy's `"RK45"`,
            `"RK23"`, `"DOP853"` (solved in float64 NumPy, converted at every evaluation), or `"ab4"`: fourth-order
            Adams–Bashforth (RK4 for its first three steps), one evaluation per step on a grid uniform in log σ̄,
            with the state scaled to stand still on Gaussian data (`_LogSigmaFlow`), and a per-sample
            `error_estimate`; it ignores `rtol`/`atol`, as torchdiffeq's fixed-grid methods do. Its Hutchinson
            estimate is vᵀ(∂G/∂w)v for the scaled flow G: with Rademacher probes (vᵀv = D) it is the x-space
            estimate of the same probes, with Gaussian ones another unbiased estimate with a smaller spread.
        num_steps (`int`, *optional*): steps of a fixed-grid method (required by torchdiffeq's, refused by the
            adaptive ones); for `"ab4"` it defaults to `default_ab4_steps(convention)`, 6 per unit of log σ̄
            (`num_steps` + 9 evaluations from 4 steps, 4·`num_steps` below).
        dtype (`torch.dtype`, *optional*): dtype of the integration (e.g. `torch.float64`); defaults to the
            samples', float32 (with a warning) for float16 or bfloat16 samples; half precision itself is refused
            (`HALF_PRECISION`). The model still runs in its own dtype.
        batch_size (`int`, *optional*): solve in independent chunks of this many samples (all at once by default).
            Random draws do not depend on it; an adaptive solver's steps do, within its tolerances.
        generator (`torch.Generator` or `list[torch.Generator]`, *optional*): source of the dequantisation noise,
            then of the probes, drawn up front for the whole batch (a list: one generator per sample).
        show_progress (`bool`, defaults to `True`): show a tqdm bar over samples with the running NFE.
        max_nfe (`int`, defaults to `DEFAULT_MAX_NFE`): evaluations after which an adaptive solve of a chunk stops
            with `SamplingError` as not converging.

    Bad arguments raise `ValueError` before the solve (a model that is not callable, on another device, random
    between two calls, or whose class conditioning does not match `class_labels`); a failure during it (the model,
    its derivative or the drift turning NaN or infinite, a solver that does not converge) raises `SamplingError`.

    Returns:
        `LikelihoodOutput` with `log_likelihood` (nats), `bits_per_dim`, `nfe`, `latent`, `log_likelihood_stderr`,
        `prior_log_prob`, `dequantization` and `error_estimate`.
    """
    convention = _convention_of(scheduler)
    samples = _checked_samples(samples, "samples", dtype, model)
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("probe", probe, PROBES)
    check_positive_int("num_probes", num_probes)
    settings = _check_solver_settings(
        method=method, rtol=rtol, atol=atol, num_steps=num_steps, batch_size=batch_size, show_progress=show_progress,
        max_nfe=max_nfe,
    )
    check_generator(generator, samples.shape[0], "the number of samples")
    kind = _dequantization_kind(dequantize)
    if kind is not None and data_range is None:
        raise ValueError(f"`dequantize={dequantize!r}` needs `data_range`, the range the 8-bit data was scaled to.")
    labels = _checked_class_labels(class_labels, samples)
    _check_model(model, samples, labels, "samples")
    log_q = samples.new_zeros(samples.shape[0])
    if data_range is not None:
        data_range = _check_data_range(samples, data_range)
        if kind is not None:
            std = truncated_normal_std(convention, data_range)
            samples, log_q = _dequantize(samples, data_range, generator, kind, std)

    batch, dims = samples.shape[0], samples.shape[1:]
    dim = samples[0].numel()
    if divergence == "exact" and dim > EXACT_DIVERGENCE_WARN_DIM:
        warnings.warn(
            f"The exact divergence takes D = {dim} backward passes through the model per evaluation of the ODE "
            f"(Hutchinson: num_probes = {num_probes}); its memory is that of one backward pass, but a solve of a few "
            "hundred evaluations may take hours. divergence='hutchinson' with a few probes estimates it, with a "
            "standard error.",
            stacklevel=2,
        )
    probes = (
        _draw_probes(probe, (batch, num_probes, dim), generator, samples) if divergence == "hutchinson" else None
    )
    flow = _ProbabilityFlow(model, convention, labels)
    _check_deterministic(flow, samples, convention.sampling_eps)
    points = samples.reshape(batch, dim)
    # "ab4" integrates the scaled state in ρ = log σ̄ (`_LogSigmaFlow`); the other methods x itself in t.
    log_sigma_flow = (
        _LogSigmaFlow(flow, points.pow(2).mean(dim=1, keepdim=True).sqrt())
        if settings.method in LOG_SIGMA_METHODS else None
    )
    span = _time_span(convention) if log_sigma_flow is None else log_sigma_flow.span
    if log_sigma_flow is not None:
        start_scale = log_sigma_flow.state_scale(span[0])
        points = points / start_scale
        if settings.num_steps is None:
            settings = replace(settings, num_steps=default_ab4_steps(convention))
    # State rows: the sample's D coordinates, then one divergence integral per probe (one when exact).
    num_integrals = num_probes if probes is not None else 1
    states = torch.cat([points, samples.new_zeros(batch, num_integrals)], dim=1)

    def make_rhs(rows: slice) -> Callable[[float, torch.Tensor], torch.Tensor]:
        chunk_probes = None if probes is None else probes[rows]
        chunk_flow = (flow if log_sigma_flow is None else log_sigma_flow).for_rows(rows)

        def rhs(tau: float, y: torch.Tensor) -> torch.Tensor:
            """The derivative in τ: t itself, or ρ = log σ̄ for "ab4"."""
            x = y[:, :dim].reshape(y.shape[0], *dims)
            drift, div = _drift_and_divergence(chunk_flow, x, tau, chunk_probes)
            return torch.cat([drift.reshape(y.shape[0], dim), div], dim=1)

        return rhs

    finals, nfe, errors = _solve_in_chunks(states, span, settings, make_rhs, "log-likelihood")
    latent = finals[:, :dim]
    integrals = finals[:, dim:]
    if log_sigma_flow is not None:
        end_scale = log_sigma_flow.state_scale(span[1])
        latent = latent * end_scale
        # The change of variables from x to w at both ends: log p_x = log p_w − D·log(α·c).
        integrals = integrals + dim * (end_scale.log() - start_scale.log())
    latent = latent.reshape(samples.shape)
    prior_log_prob = convention.sde.prior_logp(latent)
    per_probe = prior_log_prob[:, None] + integrals
    log_p = per_probe.mean(dim=1)
    error_estimate = torch.full_like(log_p, math.nan) if errors is None else errors[:, dim:].mean(dim=1)
    if probes is None:
        stderr = torch.zeros_like(log_p)
    elif num_probes == 1:
        stderr = torch.full_like(log_p, math.nan)
    else:
        stderr = per_probe.std(dim=1) / math.sqrt(num_probes)
    offset = eight_bit_offset(data_range) if data_range is not None else 0.0
    bits_per_dim = (log_q - log_p) / (dim * math.log(2)) + offset
    _check_finite_result(log_p, finals.dtype)
    return LikelihoodOutput(
        log_likelihood=log_p,
        bits_per_dim=bits_per_dim,
        nfe=nfe,
        latent=latent,
        log_likelihood_stderr=stderr,
        prior_log_prob=prior_log_prob,
        dequantization=_dequantization_name(kind, convention, data_range),
        error_estimate=error_estimate,
    )


def _dequantization_name(kind: str | None, convention: ModelConvention, data_range) -> str:
    if kind is None:
        return "none"
    if kind == "uniform":
        return "uniform"
    return f"truncated_normal(std={truncated_normal_std(convention, data_range):.3g} bins)"


def _checked_class_labels(class_labels: Any, samples: torch.Tensor) -> torch.Tensor | None:
    if class_labels is None:
        return None
    labels = torch.as_tensor(class_labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"`class_labels` must be integers; got {labels.dtype}.")
    labels = labels.to(torch.long).flatten()
    if labels.numel() == 1:
        labels = labels.expand(samples.shape[0])
    if labels.numel() != samples.shape[0]:
        raise ValueError(f"`class_labels` must be one label or one per sample ({samples.shape[0]}); got "
                         f"{labels.numel()}.")
    return labels


# Arguments of `log_likelihood` that `dequantized_log_likelihood` sets itself.
_SET_BY_DEQUANTIZED = frozenset({"data_range", "dequantize", "generator", "class_labels"})


def dequantized_log_likelihood(
    model: Callable[..., Any],
    scheduler: ConventionLike,
    samples: torch.Tensor,
    *,
    data_range: tuple[float, float],
    dequantization: str = "truncated_normal",
    num_samples: int = 1,
    generator: GeneratorLike = None,
    class_labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> DequantizedLikelihoodOutput:
    """Bits/dim of 8-bit data with K dequantisation draws per image, in the importance-weighted bound
    −log P(k) ≤ −log (1/K) Σ_j p(x_j)/q(v_j) (Burda et al.'s bound; K = 1 is `log_likelihood`'s), as flow-model papers
    report it with K up to 50 (Lipman et al., 2023): it tightens as K grows.

    Args:
        model, scheduler, samples, data_range, class_labels: as for `log_likelihood` (`data_range` required).
        dequantization (`str`, defaults to `"truncated_normal"`): `"uniform"` or `"truncated_normal"` (see
            `log_likelihood`'s `dequantize`).
        num_samples (`int`, defaults to 1): K draws per image, solved as one batch of K × batch samples.
        generator (`torch.Generator` or a list of one per image, *optional*): with a list, image i's K draws (and
            probes) come from generator i.
        **kwargs: the solver and divergence arguments of `log_likelihood`.

    Returns:
        `DequantizedLikelihoodOutput`.
    """
    check_positive_int("num_samples", num_samples)
    check_choice("dequantization", dequantization, DEQUANTIZATIONS)
    passed_on = [name for name, p in inspect.signature(log_likelihood).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _SET_BY_DEQUANTIZED]
    unknown = sorted(set(kwargs) - set(passed_on))
    if unknown:
        hint = " (`dequantization` names the convention here)" if "dequantize" in unknown else ""
        raise ValueError(
            f"`dequantized_log_likelihood` got unknown arguments {', '.join(map(repr, unknown))}{hint}; besides its "
            f"own it takes {', '.join(map(repr, passed_on))}."
        )
    samples = _checked_samples(samples, "samples", kwargs.get("dtype"), model)
    batch = samples.shape[0]
    if isinstance(generator, list):
        if len(generator) != batch:
            raise ValueError(f"`generator` is a list of {len(generator)}; it must hold one per image ({batch}).")
        generator = [g for g in generator for _ in range(num_samples)]
    labels = _checked_class_labels(class_labels, samples)
    result = log_likelihood(
        model, scheduler, samples.repeat_interleave(num_samples, dim=0), data_range=data_range,
        dequantize=dequantization, generator=generator,
        class_labels=None if labels is None else labels.repeat_interleave(num_samples), **kwargs,
    )
    dim = samples[0].numel()
    per_draw = result.bits_per_dim.reshape(batch, num_samples)
    log_weights = -per_draw.double() * dim * math.log(2)
    bound = -(torch.logsumexp(log_weights, dim=1) - math.log(num_samples)) / (dim * math.log(2))
    return DequantizedLikelihoodOutput(
        bits_per_dim=bound.to(per_draw.dtype), bits_per_dim_per_draw=per_draw, nfe=result.nfe,
        dequantization=f"importance_weighted(K={num_samples}, {result.dequantization})" if num_samples > 1
        else result.dequantization,
        error_estimate=result.error_estimate.reshape(batch, num_samples),
    )


# Arguments of `log_likelihood` that `encode` and `decode` have no use for.
_LIKELIHOOD_ONLY_ARGUMENTS = frozenset({"data_range", "dequantize", "divergence", "probe", "num_probes", "generator",
                                        "class_labels"})


class SolverKwargs(TypedDict, total=False):
    """Solver arguments that `encode`, `decode` and `round_trip` accept, as for `log_likelihood`."""

    rtol: float
    atol: float
    method: TransportMethod
    num_steps: int | None
    dtype: torch.dtype | None
    batch_size: int | None
    show_progress: bool
    max_nfe: int


def _transport(
    model: Callable[..., Any],
    scheduler: ConventionLike,
    values: torch.Tensor,
    name: str,
    forward: bool,
    dtype: torch.dtype | None = None,
    **solver_kwargs: Any,
) -> FlowOutput:
    """Carry `values` along the probability-flow ODE from ε to 1 (`forward`) or from 1 back to ε."""
    caller = "encode" if forward else "decode"
    unknown = sorted(set(solver_kwargs) - set(SolverKwargs.__annotations__))
    if unknown:
        likelihood_only = [key for key in unknown if key in _LIKELIHOOD_ONLY_ARGUMENTS]
        reason = (
            f" ({', '.join(map(repr, likelihood_only))} only of `log_likelihood`: `{caller}` solves the ODE without a "
            "divergence or dequantisation)" if likelihood_only else ""
        )
        raise ValueError(
            f"`{caller}` got unknown arguments {', '.join(map(repr, unknown))}{reason}; it takes "
            f"{', '.join(map(repr, SolverKwargs.__annotations__))}."
        )
    convention = _convention_of(scheduler)
    values = _checked_samples(values, name, dtype, model)
    settings = _check_solver_settings(**solver_kwargs)
    if settings.method in LOG_SIGMA_METHODS:
        raise ValueError(
            f"`method={settings.method!r}` is implemented for `log_likelihood` only; `{caller}` takes "
            f"{', '.join(map(repr, TRANSPORT_METHODS))}: the adaptive default 'dopri5', or 'rk4' with `num_steps`."
        )
    _check_model(model, values, None, name, caller)
    flow = _ProbabilityFlow(model, convention)
    _check_deterministic(flow, values, _time_span(convention)[0 if forward else 1])
    batch, dims = values.shape[0], values.shape[1:]

    def make_rhs(rows: slice) -> Callable[[float, torch.Tensor], torch.Tensor]:
        return lambda t, y: flow(y.reshape(y.shape[0], *dims), t).reshape(y.shape)

    t_span = _time_span(convention)
    finals, nfe, _ = _solve_in_chunks(
        values.reshape(batch, -1), t_span if forward else t_span[::-1], settings, make_rhs,
        "encode" if forward else "decode",
    )
    _check_finite_result(finals, finals.dtype)
    return FlowOutput(sample=finals.reshape(values.shape), nfe=nfe)


def encode(
    model: Callable[..., Any], scheduler: ConventionLike, samples: torch.Tensor, **kwargs: Unpack[SolverKwargs]
) -> FlowOutput:
    """Latents x_1 of `samples`: the probability-flow ODE dx/dt = f − ½g²·s_θ solved from t = ε to 1.

    Args:
        model, scheduler: as for `log_likelihood`.
        samples (`torch.Tensor` of shape `(batch, *dims)`): the points x_ε, checked as for `log_likelihood`.
        **kwargs: `rtol`, `atol`, `method`, `num_steps`, `dtype`, `batch_size`, `show_progress`, `max_nfe`, as
            for `log_likelihood` (same defaults); any other (a `log_likelihood`-only `divergence`, ...) is a ValueError.

    Returns:
        `FlowOutput(sample=latents, nfe)`, latents of shape `(batch, *dims)`.
    """
    return _transport(model, scheduler, samples, "samples", True, **kwargs)


def decode(
    model: Callable[..., Any], scheduler: ConventionLike, latents: torch.Tensor, **kwargs: Unpack[SolverKwargs]
) -> FlowOutput:
    """Samples x_ε of `latents`: the probability-flow ODE solved from t = 1 back to ε, the inverse of `encode` up to
    the solver's error. Arguments as for `encode`; returns `FlowOutput(sample=samples, nfe)`."""
    return _transport(model, scheduler, latents, "latents", False, **kwargs)


def round_trip(
    model: Callable[..., Any], scheduler: ConventionLike, samples: torch.Tensor, **kwargs: Unpack[SolverKwargs]
) -> RoundTripOutput:
    """`decode(encode(samples))` and its per-sample RMS error against `samples` (shape `(batch,)`).

    Arguments as for `encode`; the solver arguments serve both directions.
    """
    encoded = encode(model, scheduler, samples, **kwargs)
    decoded = decode(model, scheduler, encoded.sample, **kwargs)
    difference = (decoded.sample - samples.to(decoded.sample)).reshape(samples.shape[0], -1)
    return RoundTripOutput(
        latent=encoded.sample,
        reconstruction=decoded.sample,
        error=difference.pow(2).mean(dim=1).sqrt(),
        nfe=encoded.nfe + decoded.nfe,
    )
