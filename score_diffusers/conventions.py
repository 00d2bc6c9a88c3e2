"""What a model receives and returns: one object for a model's time and prediction conventions (pure PyTorch).

A score model is trained on x_t = α_t x₀ + σ_t z from one SDE (`sde.py`) and is told the noise level in one of
three ways (`timestep_type`), with N = `num_train_timesteps`:

- ``"continuous"``: t ∈ [ε, 1] itself.
- ``"sigma"``: the noise level σ_t/α_t (σ(t) for VE, as NCSN / NCSN++ models take it; EDM's σ for VP and sub-VP).
- ``"discrete"``: an index on the training grid, fractional between grid points. VP and sub-VP follow DDPM,
  index = t·(N − 1) (0 is the least noise); VE follows NCSN, index = (1 − t)·(N − 1) (0 is σ_max).

It returns the score ∇ₓ log p_t (`prediction_type="score"`) or DDPM's noise ε (`"epsilon"`), related by
ε = −σ_t·score; Tweedie's denoised estimate is x̂₀ = (x_t + σ_t²·score)/α_t.

`ModelConvention` holds these choices and maps between them in closed form (no bisection anywhere: each SDE inverts
σ_t/α_t exactly). It is built from any score scheduler's config, or from a Diffusers `DDPMScheduler`-family or
`ScoreSdeVeScheduler` config, so likelihoods, training losses, wrappers and test oracles never need a scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .checks import check_choice, check_number, check_positive_int
from .sde import SDE, SubVPSDE, VESDE, VPSDE, TimeLike, append_dims

PredictionType = Literal["score", "epsilon"]
TimestepType = Literal["sigma", "discrete", "continuous"]
SDEType = Literal["ve", "vp", "subvp"]
BetaSchedule = Literal["continuous_linear", "linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
TimeSpacing = Literal["uniform", "log_sigma", "karras"]

PREDICTION_TYPES: tuple[str, ...] = ("score", "epsilon")
TIMESTEP_TYPES: tuple[str, ...] = ("sigma", "discrete", "continuous")
SDE_TYPES: tuple[str, ...] = ("ve", "vp", "subvp")
BETA_SCHEDULES: tuple[str, ...] = ("continuous_linear", "linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
TIME_SPACINGS: tuple[str, ...] = ("uniform", "log_sigma", "karras")
# ρ of Karras et al.'s noise-level spacing σ_i = (σ_max^{1/ρ} + i/(n−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
KARRAS_RHO = 7.0
_SDE_CLASSES: dict[str, type[SDE]] = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}

# Where sampling (and the likelihood's integral) stops when `sampling_eps` is unset: score_sde's choices.
DEFAULT_SAMPLING_EPS: dict[str, float] = {"ve": 1e-5, "vp": 1e-3, "subvp": 1e-3}

# The convention keys of a score scheduler config and their values when a config leaves them out (the defaults of
# `PredictorCorrectorScheduler` and `ProbabilityFlowScheduler`; a test holds them equal).
CONVENTION_DEFAULTS: dict[str, Any] = {
    "sde_type": "ve",
    "num_train_timesteps": 1000,
    "sigma_min": 0.01,
    "sigma_max": 50.0,
    "beta_min": 0.1,
    "beta_max": 20.0,
    "beta_schedule": "continuous_linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "trained_betas": None,
    "sampling_eps": None,
    "prediction_type": "score",
    "timestep_type": "continuous",
}

# Where annealed Langevin's defaults differ (its configs hold `steps_per_level`): NCSNv2's L = 232 levels fed σ,
# sampled down to σ_min itself at t = 0.
ANNEALED_LANGEVIN_DEFAULTS: dict[str, Any] = {"num_train_timesteps": 232, "timestep_type": "sigma", "sampling_eps": 0.0}

# Diffusers' `ScoreSdeVeScheduler` defaults (a test holds them equal to its signature).
SCORE_SDE_VE_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 2000,
    "snr": 0.15,
    "sigma_min": 0.01,
    "sigma_max": 1348.0,
    "sampling_eps": 1e-5,
    "correct_steps": 1,
}

# Diffusers' `DDPMScheduler` defaults for the keys that fix its ᾱ table (a test holds them equal to its signature).
DDPM_TABLE_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
}
# The cap Diffusers puts on each β of the cosine schedule.
_COSINE_MAX_BETA = 0.999


def ddpm_alphas_cumprod(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: list[float] | None = None,
) -> torch.Tensor:
    """The ᾱ table, float32 of shape `(num_train_timesteps,)`, that Diffusers' `DDPMScheduler` builds from these
    arguments (the same float32 arithmetic, so the values agree exactly)."""
    check_positive_int("num_train_timesteps", num_train_timesteps)
    n = num_train_timesteps
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32).flatten()
        if betas.numel() != n:
            raise ValueError(
                f"`trained_betas` must hold `num_train_timesteps`={n} values; got {betas.numel()}."
            )
    elif beta_schedule in ("linear", "continuous_linear"):
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        # Nichol & Dhariwal's cosine ᾱ(t) = cos²((t + 0.008)/1.008 · π/2), β_i = 1 − ᾱ(t_{i+1})/ᾱ(t_i), capped.
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), _COSINE_MAX_BETA) for i in range(n)],
            dtype=torch.float32,
        )
    elif beta_schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start
    else:
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    return torch.cumprod(1.0 - betas, dim=0)


def sde_from_config(config: Mapping[str, Any]) -> SDE:
    """The SDE a score scheduler config describes (missing keys take `CONVENTION_DEFAULTS`).

    VE uses `sigma_min`/`sigma_max`. VP and sub-VP use the continuous linear β(t) from `beta_min`/`beta_max` when
    `beta_schedule="continuous_linear"` and no `trained_betas` are given; otherwise the ᾱ table that Diffusers'
    `DDPMScheduler` builds from (`num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`, `trained_betas`),
    so a checkpoint is sampled on exactly the schedule it was trained with.
    """
    values = {**CONVENTION_DEFAULTS, **{k: v for k, v in config.items() if k in CONVENTION_DEFAULTS}}
    check_choice("sde_type", values["sde_type"], SDE_TYPES)
    check_choice("beta_schedule", values["beta_schedule"], BETA_SCHEDULES)
    if values["sde_type"] == "ve":
        return VESDE(sigma_min=values["sigma_min"], sigma_max=values["sigma_max"])
    sde_class = _SDE_CLASSES[values["sde_type"]]
    if values["beta_schedule"] == "continuous_linear" and values["trained_betas"] is None:
        return sde_class(beta_min=values["beta_min"], beta_max=values["beta_max"])
    table = ddpm_alphas_cumprod(
        values["num_train_timesteps"], values["beta_start"], values["beta_end"], values["beta_schedule"],
        values["trained_betas"],
    )
    return sde_class(beta_min=values["beta_min"], beta_max=values["beta_max"], alphas_cumprod=table)


# ---- configs of Diffusers' own schedulers ------------------------------------------------------------------------

# The init keys of Diffusers' `ScoreSdeVeScheduler`, which identify its configs when they carry no `_class_name`.
_SCORE_SDE_VE_KEYS = frozenset(SCORE_SDE_VE_DEFAULTS)
# Keys that mark a config of this package's score schedulers.
_SCORE_SCHEDULER_MARKERS = frozenset({"sde_type", "steps_per_level", "timestep_type"})


def config_source(config: Mapping[str, Any]) -> Literal["score", "ddpm", "score_sde_ve"]:
    """Which family a config belongs to: this package's score schedulers (their configs always hold `sde_type`, or
    `steps_per_level` for annealed Langevin), `ScoreSdeVeScheduler`, or Diffusers' ᾱ-table schedulers (DDPM, DDIM,
    Euler, DPM-Solver, …, whose configs hold `beta_schedule`); read from `_class_name` where the config carries it,
    else from its keys."""
    keys = {k for k in config if not k.startswith("_")}
    if config.get("_class_name") == "ScoreSdeVeScheduler" or keys == _SCORE_SDE_VE_KEYS:
        return "score_sde_ve"
    if "sde_type" not in keys and "steps_per_level" not in keys and "beta_schedule" in keys:
        return "ddpm"
    return "score"


def convention_config_from_ddpm(config: Mapping[str, Any]) -> dict[str, Any]:
    """Score-scheduler convention keys for a checkpoint with a Diffusers ᾱ-table scheduler config: VP on the
    checkpoint's own table, ε prediction, DDPM index timesteps, ending on DDPM's last index 0."""
    values = {**DDPM_TABLE_DEFAULTS, **{k: v for k, v in config.items() if k in DDPM_TABLE_DEFAULTS}}
    if values["prediction_type"] != "epsilon":
        raise ValueError(
            f"Score schedulers take DDPM checkpoints with `prediction_type` 'epsilon'; this one has "
            f"{values['prediction_type']!r}."
        )
    if values["rescale_betas_zero_snr"]:
        raise ValueError(
            "`rescale_betas_zero_snr=True` gives ᾱ = 0 at the last step, where σ/α and the score are infinite; a score "
            "scheduler cannot sample that table. Convert a config with `rescale_betas_zero_snr=False`."
        )
    # Validates the table (schedule name, β count) before anything is built from it.
    ddpm_alphas_cumprod(
        values["num_train_timesteps"], values["beta_start"], values["beta_end"], values["beta_schedule"],
        values["trained_betas"],
    )
    return {
        "sde_type": "vp",
        "num_train_timesteps": values["num_train_timesteps"],
        "beta_schedule": values["beta_schedule"],
        "beta_start": values["beta_start"],
        "beta_end": values["beta_end"],
        "trained_betas": values["trained_betas"],
        "prediction_type": "epsilon",
        "timestep_type": "discrete",
        # With n = N steps the grid is exactly the training grid.
        "sampling_eps": 0.0,
    }


def convention_config_from_score_sde_ve(config: Mapping[str, Any]) -> dict[str, Any]:
    """Score-scheduler convention keys for a `ScoreSdeVeScheduler` config: VE with its σ range and ε, a score model
    fed σ."""
    values = {**SCORE_SDE_VE_DEFAULTS, **{k: v for k, v in config.items() if k in SCORE_SDE_VE_DEFAULTS}}
    return {
        "sde_type": "ve",
        "num_train_timesteps": values["num_train_timesteps"],
        "sigma_min": values["sigma_min"],
        "sigma_max": values["sigma_max"],
        "sampling_eps": values["sampling_eps"],
        "prediction_type": "score",
        "timestep_type": "sigma",
    }


# ---- the convention ------------------------------------------------------------------------------------------------


def karras_noise_levels(fractions: TimeLike, ratio_max: TimeLike, ratio_min: TimeLike) -> TimeLike:
    """σ̄ at `fractions` (0 at `ratio_max`, 1 at `ratio_min`) of Karras et al.'s spacing with ρ = `KARRAS_RHO`:
    (σ̄_max^{1/ρ} + u·(σ̄_min^{1/ρ} − σ̄_max^{1/ρ}))^ρ, for floats or tensors alike."""
    high, low = ratio_max ** (1 / KARRAS_RHO), ratio_min ** (1 / KARRAS_RHO)
    return (high + fractions * (low - high)) ** KARRAS_RHO


@dataclass
class PerturbedSample:
    """x_t = α_t·x₀ + σ_t·noise, with α_t and σ_t broadcastable against `sample` and the model's timestep.

    Args:
        sample (`torch.Tensor` of shape `(batch, *dims)`): x_t.
        noise (`torch.Tensor` of shape `(batch, *dims)`): the standard normal noise z.
        alpha (`torch.Tensor`): α_t, shape `(batch, 1, …)` or `()`.
        sigma (`torch.Tensor`): σ_t, shape `(batch, 1, …)` or `()`.
        timestep (`torch.Tensor` of shape `(batch,)`, float32): what the model receives.
    """

    sample: torch.Tensor
    noise: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    timestep: torch.Tensor


def _like(value: TimeLike, like: torch.Tensor) -> torch.Tensor | float:
    """A per-sample coefficient (`float`, or a tensor of shape `()` or `(batch,)`) ready to broadcast against `like`."""
    if not torch.is_tensor(value):
        return float(value)
    return append_dims(value.to(device=like.device, dtype=like.dtype), like.ndim)


class ModelConvention:
    """A model's conventions: its SDE, what it receives as its timestep and what it returns (module docstring).

    Args:
        sde (`SDE`): the forward process the model was trained on.
        timestep_type (`str`, defaults to `"continuous"`): `"sigma"`, `"discrete"` or `"continuous"`.
        prediction_type (`str`, defaults to `"score"`): `"score"` or `"epsilon"`.
        num_train_timesteps (`int`, defaults to 1000): N, the `"discrete"` index scale.
        sampling_eps (`float`, *optional*): the last time ε of sampling and of the likelihood's integral; score_sde's
            default for the SDE (1e-5 for VE, 1e-3 for VP and sub-VP) when unset. σ_ε must be > 0.
    """

    def __init__(
        self,
        sde: SDE,
        timestep_type: TimestepType = "continuous",
        prediction_type: PredictionType = "score",
        num_train_timesteps: int = 1000,
        sampling_eps: float | None = None,
    ):
        check_choice("timestep_type", timestep_type, TIMESTEP_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_positive_int("num_train_timesteps", num_train_timesteps)
        check_number("sampling_eps", sampling_eps, 0.0, sde.T, high_open=True, allow_none=True, none_means="for the default")
        self.sde = sde
        self.timestep_type = timestep_type
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps
        eps = DEFAULT_SAMPLING_EPS[sde.sde_type] if sampling_eps is None else float(sampling_eps)
        if float(sde.marginal_std(torch.tensor(eps, dtype=torch.float64))) <= 0:
            raise ValueError(f"`sampling_eps` must lie where the marginal std is positive; got {sampling_eps}.")
        self.sampling_eps = eps

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelConvention:
        """The convention of a score scheduler config, or of a Diffusers `DDPMScheduler`-family or
        `ScoreSdeVeScheduler` config (translated as the score schedulers' `from_config` does)."""
        source = config_source(config)
        defaults = CONVENTION_DEFAULTS
        if source == "ddpm":
            config = convention_config_from_ddpm(config)
        elif source == "score_sde_ve":
            config = convention_config_from_score_sde_ve(config)
        elif "_class_name" in config and not _SCORE_SCHEDULER_MARKERS & set(config):
            raise ValueError(
                f"A {config['_class_name']} config describes no score model: expected a score scheduler's, a Diffusers "
                "ᾱ-table scheduler's (DDPM, DDIM, Euler, DPM-Solver, …) or a ScoreSdeVeScheduler's."
            )
        elif "steps_per_level" in config:
            defaults = {**CONVENTION_DEFAULTS, **ANNEALED_LANGEVIN_DEFAULTS}
        values = {**defaults, **{k: v for k, v in config.items() if k in CONVENTION_DEFAULTS}}
        return cls(
            sde_from_config(values),
            timestep_type=values["timestep_type"],
            prediction_type=values["prediction_type"],
            num_train_timesteps=values["num_train_timesteps"],
            sampling_eps=values["sampling_eps"],
        )

    @property
    def sde_type(self) -> str:
        """`"ve"`, `"vp"` or `"subvp"`."""
        return self.sde.sde_type

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sde_type={self.sde_type!r}, timestep_type={self.timestep_type!r}, "
            f"prediction_type={self.prediction_type!r}, num_train_timesteps={self.num_train_timesteps}, "
            f"sampling_eps={self.sampling_eps:g})"
        )

    # ---- time ----------------------------------------------------------------------------------------------------

    def _discrete_scale(self) -> float:
        return float(self.num_train_timesteps - 1)

    def timestep(self, t: TimeLike) -> torch.Tensor:
        """What the model receives at continuous time `t` (float64, shape of `t`)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.timestep_type == "continuous":
            return t
        if self.timestep_type == "sigma":
            return self.sde.noise_to_signal(t)
        # NCSN labels count down from σ_max; DDPM indices count up from the least noise.
        return (1 - t) * self._discrete_scale() if self.sde_type == "ve" else t * self._discrete_scale()

    def time(self, timestep: TimeLike) -> torch.Tensor:
        """Continuous time t (float64, shape of `timestep`) of a model timestep: the inverse of `timestep`, in closed
        form."""
        timestep = torch.as_tensor(timestep).to(torch.float64)
        if self.timestep_type == "continuous":
            return timestep
        if self.timestep_type == "sigma":
            return self.sde.time_from_noise_to_signal(timestep)
        return 1 - timestep / self._discrete_scale() if self.sde_type == "ve" else timestep / self._discrete_scale()

    def noise_to_signal_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ̄_ε, σ̄_T), σ̄ = σ_t/α_t at the last sampling time and at the SDE's end (float64 scalars)."""
        sde = self.sde
        return tuple(sde.noise_to_signal(torch.tensor(t, dtype=torch.float64)) for t in (self.sampling_eps, sde.T))

    def time_grid(self, num_points: int, spacing: TimeSpacing = "log_sigma") -> torch.Tensor:
        """`num_points` times from T down to ε (float64, decreasing): `"uniform"` in t, `"log_sigma"` uniform in
        log σ̄, or `"karras"` (σ̄ spaced with ρ = 7, Karras et al., 2022), σ̄ = σ_t/α_t. The ends are exact."""
        check_positive_int("num_points", num_points)
        check_choice("spacing", spacing, TIME_SPACINGS)
        sde, eps = self.sde, self.sampling_eps
        if spacing == "uniform" or num_points == 1:
            return torch.linspace(sde.T, eps, num_points, dtype=torch.float64)
        ratio_min, ratio_max = self.noise_to_signal_range()
        fractions = torch.linspace(0, 1, num_points, dtype=torch.float64)
        if spacing == "log_sigma":
            ratios = torch.exp(ratio_max.log() + fractions * (ratio_min.log() - ratio_max.log()))
        else:
            ratios = karras_noise_levels(fractions, ratio_max, ratio_min)
        times = sde.time_from_noise_to_signal(ratios)
        # Pin the ends exactly: the inverse leaves them a few ulps off.
        times[0], times[-1] = sde.T, eps
        return times

    def coefficients(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, σ_t) of the forward process at time `t`, float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.sde.mean_coeff(t), self.sde.marginal_std(t)

    def check_timesteps(self, argument: str, timesteps: torch.Tensor) -> None:
        """Raise a `ValueError` naming `argument` unless every model timestep lies in the range the model was trained
        on: [0, N − 1] for `"discrete"`, [0, 1] for `"continuous"`, [σ̄(0), σ̄(1)] for `"sigma"`."""
        values = torch.as_tensor(timesteps).detach().to("cpu", torch.float64)
        low, high = sorted(float(v) for v in self.timestep(torch.tensor([0.0, self.sde.T], dtype=torch.float64)))
        tolerance = 1e-6 * max(1.0, abs(high))
        if values.numel() and not (bool(torch.isfinite(values).all()) and values.min() >= low - tolerance
                                   and values.max() <= high + tolerance):
            raise ValueError(
                f"`{argument}` must lie in [{low:g}, {high:g}] (the model's {self.timestep_type!r} timesteps); got "
                f"values in [{float(values.min()):g}, {float(values.max()):g}]."
            )

    # ---- outputs ---------------------------------------------------------------------------------------------------

    def score_from_output(self, model_output: torch.Tensor, sigma: TimeLike) -> torch.Tensor:
        """∇ₓ log p_t from a model output at marginal std `sigma` (float, or per sample): the output itself for
        `"score"`, −ε/σ_t for `"epsilon"`."""
        if self.prediction_type == "score":
            return model_output
        return model_output / -_like(sigma, model_output)

    def output_from_score(self, score: torch.Tensor, sigma: TimeLike) -> torch.Tensor:
        """The model output that encodes `score` at marginal std `sigma`: the score, or ε = −σ_t·score."""
        if self.prediction_type == "score":
            return score
        return score * -_like(sigma, score)

    @staticmethod
    def denoised(sample: torch.Tensor, score: torch.Tensor, alpha: TimeLike, sigma: TimeLike) -> torch.Tensor:
        """Tweedie's estimate x̂₀ = (x_t + σ_t²·score)/α_t (α, σ floats or per sample)."""
        if not torch.is_tensor(alpha) and not torch.is_tensor(sigma):
            denoised = torch.add(sample, score, alpha=float(sigma) ** 2)
            return denoised if alpha == 1 else denoised.div_(float(alpha))
        return (sample + _like(sigma, sample) ** 2 * score) / _like(alpha, sample)

    # ---- training --------------------------------------------------------------------------------------------------

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> PerturbedSample:
        """x_t = α_t·x₀ + σ_t·noise at continuous times `t` (shape `(batch,)` or `()`), with the model timestep."""
        if noise.shape != x0.shape:
            raise ValueError(f"`noise` must have the shape of `x0` {tuple(x0.shape)}; got {tuple(noise.shape)}.")
        t64 = torch.as_tensor(t).detach().to("cpu", torch.float64)
        alpha, sigma = self.coefficients(t64)
        alpha, sigma = _like(alpha, x0), _like(sigma, x0)
        timestep = self.timestep(t64).to(device=x0.device, dtype=torch.float32)
        timestep = timestep.expand(x0.shape[0]) if timestep.ndim == 0 else timestep
        return PerturbedSample(sample=alpha * x0 + sigma * noise, noise=noise, alpha=alpha, sigma=sigma, timestep=timestep)
