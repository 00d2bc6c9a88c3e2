"""What every score scheduler shares: configuration choices, the SDE behind a config, the mapping between
continuous time t and what the model receives as its timestep, model output ↔ score, and step bookkeeping.

Time conventions (`timestep_type`), one per SDE family, with N = `num_train_timesteps`:

- ``"continuous"``: the model receives t ∈ [ε, 1].
- ``"sigma"``: the model receives the noise level σ_t/α_t (σ(t) itself for VE, as NCSN / NCSN++ models do;
  EDM's σ for VP and sub-VP).
- ``"discrete"``: the model receives an index on the training grid, fractional between grid points.
  VP and sub-VP follow DDPM, index = t·(N − 1) (0 is the least noise); VE follows NCSN,
  index = (1 − t)·(N − 1) (0 is σ_max).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, ScoreSdeVeScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..sde import SDE, SubVPSDE, VESDE, VPSDE

PredictionType = Literal["score", "epsilon"]
TimestepType = Literal["sigma", "discrete", "continuous"]
SDEType = Literal["ve", "vp", "subvp"]
BetaSchedule = Literal["continuous_linear", "linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]

PREDICTION_TYPES: tuple[str, ...] = ("score", "epsilon")
TIMESTEP_TYPES: tuple[str, ...] = ("sigma", "discrete", "continuous")
SDE_TYPES: tuple[str, ...] = ("ve", "vp", "subvp")
BETA_SCHEDULES: tuple[str, ...] = ("continuous_linear", "linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")

# Where sampling stops when `sampling_eps` is left unset (score_sde's choices).
DEFAULT_SAMPLING_EPS = {"ve": 1e-5, "vp": 1e-3, "subvp": 1e-3}

_DDPM_FAMILY = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}


def check_choice(argument: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise a `ValueError` naming `argument` and the accepted values unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{argument}` must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")


def check_positive_int(argument: str, value: Any) -> None:
    """Raise a `ValueError` naming `argument` unless `value` is an integer ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{argument}` must be an integer >= 1; got {value!r}.")


def build_sde(
    sde_type: str,
    sigma_min: float,
    sigma_max: float,
    beta_min: float,
    beta_max: float,
    beta_schedule: str,
    beta_start: float,
    beta_end: float,
    num_train_timesteps: int,
    trained_betas: list[float] | None = None,
) -> SDE:
    """The SDE a scheduler config describes.

    VE uses `sigma_min`/`sigma_max`. VP and sub-VP use the continuous linear β(t) from `beta_min`/`beta_max`
    when `beta_schedule="continuous_linear"` and no `trained_betas` are given; otherwise the ᾱ table that Diffusers'
    own `DDPMScheduler` builds from (`num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`,
    `trained_betas`), so a checkpoint is sampled on exactly the schedule it was trained with.
    """
    check_choice("sde_type", sde_type, SDE_TYPES)
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if sde_type == "ve":
        return VESDE(sigma_min=sigma_min, sigma_max=sigma_max)
    sde_class = VPSDE if sde_type == "vp" else SubVPSDE
    if beta_schedule == "continuous_linear" and trained_betas is None:
        return sde_class(beta_min=beta_min, beta_max=beta_max)
    table = DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="linear" if beta_schedule == "continuous_linear" else beta_schedule,
        trained_betas=trained_betas,
    ).alphas_cumprod
    return sde_class(beta_min=beta_min, beta_max=beta_max, alphas_cumprod=table)


@dataclass
class ScoreSchedulerOutput(BaseOutput):
    """Output of a score scheduler's `step`.

    Args:
        prev_sample (`torch.Tensor` of shape `(batch, *dims)`):
            The sample to feed the next model call.
        prev_sample_mean (`torch.Tensor` of shape `(batch, *dims)`):
            `prev_sample` before the step's noise was added (equal to it on noise-free steps).
        pred_original_sample (`torch.Tensor` of shape `(batch, *dims)`):
            The Tweedie denoised estimate x̂₀ = (x_t + σ_t²·score)/α_t at the current sample.
    """

    prev_sample: torch.Tensor
    prev_sample_mean: torch.Tensor
    pred_original_sample: torch.Tensor


class ScoreSchedulerMixin(SchedulerMixin):
    """Base of the package's score schedulers.

    Subclasses call `_set_sde` in `__init__`, build `self.timesteps` in `set_timesteps` through
    `_reset_timesteps`, and open every `step` with `_begin_step`, which enforces the call order.
    """

    order = 1
    # sde_type values a subclass can sample; annealed Langevin is VE only.
    _supported_sde_types: ClassVar[tuple[str, ...]] = SDE_TYPES
    _score_scheduler_classes: ClassVar[list[type]] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        ScoreSchedulerMixin._score_scheduler_classes.append(cls)

    # ---- SDE and time conventions ---------------------------------------------------------------------------

    def _set_sde(self, sde: SDE) -> None:
        self.sde = sde
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self._step_index: int | None = None

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the prior the loop starts from: σ_max for VE, 1 for VP and sub-VP."""
        return self.sde.prior_std

    @property
    def step_index(self) -> int | None:
        """Index into `timesteps` of the next `step` call; `None` before `set_timesteps`."""
        return self._step_index

    def _discrete_scale(self) -> float:
        return float(self.config.num_train_timesteps - 1)

    def timestep_for_time(self, t: torch.Tensor | float) -> torch.Tensor:
        """What the model receives as its timestep at continuous time `t` (see the module docstring)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        timestep_type = self.config.timestep_type
        if timestep_type == "continuous":
            return t
        if timestep_type == "sigma":
            return self.sde.noise_to_signal(t)
        # NCSN labels count down from σ_max; DDPM indices count up from the least noise.
        if isinstance(self.sde, VESDE):
            return (1 - t) * self._discrete_scale()
        return t * self._discrete_scale()

    def time_for_timestep(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """Continuous time t of a model timestep; the inverse of `timestep_for_time`."""
        timestep = torch.as_tensor(timestep).to(torch.float64)
        timestep_type = self.config.timestep_type
        if timestep_type == "continuous":
            return timestep
        if timestep_type == "sigma":
            return self.sde.time_from_noise_to_signal(timestep)
        if isinstance(self.sde, VESDE):
            return 1 - timestep / self._discrete_scale()
        return timestep / self._discrete_scale()

    def _marginal_std_at(self, timestep: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
        t = self.time_for_timestep(timestep)
        std = self.sde.marginal_std(t).to(device=like.device, dtype=like.dtype)
        return std.reshape(std.shape + (1,) * (like.ndim - std.ndim)) if std.ndim else std

    def score_from_model_output(self, model_output: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        """∇ₓ log p_t: the output itself for `prediction_type="score"`, −ε/σ_t for `"epsilon"`."""
        if self.config.prediction_type == "score":
            return model_output
        return -model_output / self._marginal_std_at(timestep, model_output)

    def model_output_from_score(self, score: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        """The model output that encodes `score` under this scheduler's `prediction_type` (ε = −σ_t·score)."""
        if self.config.prediction_type == "score":
            return score
        return -score * self._marginal_std_at(timestep, score)

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | float | None = None) -> torch.Tensor:
        """Score models take x_t unscaled; kept for interchangeability with Diffusers' loop."""
        return sample

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Forward process x_t = α_t·x₀ + σ_t·noise at model timesteps `timesteps` (shape `(batch,)` or `()`).

        `timesteps` use the same convention as the model input, so training code can draw them, feed the
        model the same values and recover t through `time_for_timestep`.
        """
        if noise.shape != original_samples.shape:
            raise ValueError(
                f"`noise` must have the shape of `original_samples` {tuple(original_samples.shape)}; "
                f"got {tuple(noise.shape)}."
            )
        t = self.time_for_timestep(timesteps.to("cpu") if torch.is_tensor(timesteps) else timesteps)
        return self.sde.perturb(original_samples, t.to(original_samples), noise)

    # ---- step bookkeeping ------------------------------------------------------------------------------------

    def _reset_timesteps(self, model_timesteps: torch.Tensor, num_inference_steps: int, device) -> None:
        """Install a new run: `timesteps` as float32 model inputs and a step counter back at 0."""
        self.num_inference_steps = num_inference_steps
        self.timesteps = model_timesteps.to(device=device, dtype=torch.float32)
        self._timestep_values = self.timesteps.tolist()
        self._step_index = 0

    def _begin_step(
        self, model_output: torch.Tensor, timestep: torch.Tensor | float, sample: torch.Tensor, check_finite: bool = True
    ) -> int:
        """Validate one `step` call and return its index into `timesteps`, advancing the counter.

        With `check_finite=False` the caller checks the model output itself, with `_check_finite` on a reduction of
        it that the step computes anyway.
        """
        if self.timesteps is None:
            raise ValueError(f"Call `{type(self).__name__}.set_timesteps(num_inference_steps)` before `step`.")
        index = self._step_index
        if index >= len(self._timestep_values):
            raise ValueError(
                f"All {len(self._timestep_values)} entries of `timesteps` have been stepped; call `set_timesteps` "
                "again to start a new run."
            )
        if model_output.shape != sample.shape:
            raise ValueError(
                f"`model_output` must have the shape of `sample` {tuple(sample.shape)}; got {tuple(model_output.shape)}."
            )
        given = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        expected = self._timestep_values[index]
        if abs(given - expected) > 1e-4 * max(1.0, abs(expected)):
            raise ValueError(
                f"`timestep`={given} is not the next entry of `scheduler.timesteps` (index {index}: {expected}); "
                "step through `timesteps` in order, one call per entry."
            )
        if check_finite:
            self._check_finite(model_output, index)
        self._step_index = index + 1
        return index

    def _check_finite(self, values: torch.Tensor, index: int) -> None:
        """Stop sampling at entry `index` of `timesteps` if `values` (the model output, or norms of it) hold NaN or
        inf, found through one sum (they propagate into it) at a tenth of `isfinite().all()`'s cost."""
        if not bool(torch.isfinite(values.sum(dtype=torch.float32))):
            raise ValueError(
                f"`model_output` holds NaN or infinite values at step {index} "
                f"(timestep {self._timestep_values[index]}); sampling stopped."
            )

    @staticmethod
    def _noise_like(sample: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
        """Standard normal noise shaped like `sample`, drawn from `generator` (one, or a list with one per sample)."""
        return randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)

    def _score(self, model_output: torch.Tensor, sigma: float) -> torch.Tensor:
        """The score at marginal std `sigma` from a model output of this scheduler's `prediction_type`."""
        return model_output if self.config.prediction_type == "score" else model_output / -sigma

    @staticmethod
    def _denoised(sample: torch.Tensor, score: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """Tweedie's estimate x̂₀ = (x_t + σ_t²·score)/α_t."""
        denoised = torch.add(sample, score, alpha=sigma**2)
        return denoised if alpha == 1 else denoised.div_(alpha)

    @staticmethod
    def _langevin_update(
        sample: torch.Tensor,
        score: torch.Tensor,
        step_size: float | torch.Tensor,
        noise: torch.Tensor,
        noise_std: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One Langevin MCMC step x ← x + η·score + √(2η)·z, or `noise_std`·z where given; returns the new sample and
        its noise-free mean."""
        if torch.is_tensor(step_size):
            mean = torch.addcmul(sample, step_size, score)
            if noise_std is None:
                return torch.addcmul(mean, (2 * step_size).sqrt(), noise), mean
        else:
            mean = torch.add(sample, score, alpha=step_size)
            if noise_std is None:
                noise_std = (2 * step_size) ** 0.5
        return torch.add(mean, noise, alpha=noise_std), mean

    def _configure_sde(self, own_choices: dict[str, tuple[str, ...]]) -> None:
        """Validate the config (the SDE keys plus a subclass's `own_choices`) and build the SDE it describes."""
        config = self.config
        self._check_config(
            {
                "sde_type": SDE_TYPES,
                "beta_schedule": BETA_SCHEDULES,
                "prediction_type": PREDICTION_TYPES,
                "timestep_type": TIMESTEP_TYPES,
                **own_choices,
            }
        )
        check_positive_int("num_train_timesteps", config.num_train_timesteps)
        self._set_sde(
            build_sde(
                config.sde_type, config.sigma_min, config.sigma_max, config.beta_min, config.beta_max,
                config.beta_schedule, config.beta_start, config.beta_end, config.num_train_timesteps,
                config.trained_betas,
            )
        )
        self._sampling_eps = self._checked_sampling_eps(config.sampling_eps)

    def _checked_sampling_eps(self, sampling_eps: float | None) -> float:
        """The last time point ε: the configured one, else score_sde's default for the SDE; σ_ε must be > 0."""
        eps = DEFAULT_SAMPLING_EPS[self.config.sde_type] if sampling_eps is None else float(sampling_eps)
        if not 0 <= eps < self.sde.T or float(self.sde.marginal_std(torch.tensor(eps, dtype=torch.float64))) <= 0:
            raise ValueError(
                f"`sampling_eps` must lie in [0, 1) where the marginal std is positive; got {sampling_eps}."
            )
        return eps

    def _check_config(self, choices: dict[str, tuple[str, ...]]) -> None:
        for argument, accepted in choices.items():
            check_choice(argument, getattr(self.config, argument), accepted)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ---- configs from other schedulers -----------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Instantiate from a config of any score scheduler of this package, of `DDPMScheduler` / `DDIMScheduler`
        (→ VP on the checkpoint's own ᾱ table, ε prediction, DDPM index timesteps) or of `ScoreSdeVeScheduler`
        (→ VE with its σ_min, σ_max, snr, correct_steps and sampling_eps, σ timesteps, batch-averaged corrector at a
        constant snr).

        Keys that only a sibling score scheduler uses are dropped, as in any Diffusers scheduler swap; keys no
        score scheduler knows raise a `ValueError`.
        """
        config = dict(config if config is not None else {})
        own_names = {klass.__name__ for klass in cls._score_scheduler_classes}
        source = config.get("_class_name") or _foreign_source(config) or cls.__name__
        if source in _DDPM_FAMILY:
            config = _translate_ddpm_config(_DDPM_FAMILY[source].from_config(config).config)
        elif source == "ScoreSdeVeScheduler":
            config = _translate_score_sde_ve_config(ScoreSdeVeScheduler.from_config(config).config)
        elif source not in own_names:
            raise ValueError(
                f"{cls.__name__}.from_config takes a config of {', '.join(sorted(own_names))}, DDPMScheduler, "
                f"DDIMScheduler or ScoreSdeVeScheduler; got one of {source}."
            )

        known_keys = set().union(*(klass._get_init_keys(klass) for klass in cls._score_scheduler_classes))
        own_keys = cls._get_init_keys(cls) - {"self", "kwargs"}
        unknown = sorted(k for k in {**config, **kwargs} if not k.startswith("_") and k not in known_keys)
        unknown += sorted(k for k in kwargs if k in known_keys and k not in own_keys)
        if unknown:
            raise ValueError(f"Unknown config keys for {cls.__name__}: {unknown}. Accepted keys: {sorted(own_keys)}.")
        sde_type = kwargs.get("sde_type", config.get("sde_type", "ve"))
        if sde_type not in cls._supported_sde_types:
            raise ValueError(
                f"{cls.__name__} samples sde_type {', '.join(cls._supported_sde_types)} only; the config has "
                f"sde_type={sde_type!r}."
            )
        config = {k: v for k, v in config.items() if k.startswith("_") or k in own_keys}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)


def _foreign_source(config: dict[str, Any]) -> str | None:
    """Name the Diffusers scheduler an in-memory config (which carries no `_class_name`) came from, if any.

    A registered config holds exactly its class's init keys, so an exact key-set match identifies it; configs of
    this package's schedulers always hold `sde_type` or `steps_per_level` and are never matched.
    """
    keys = {k for k in config if not k.startswith("_")}
    if "sde_type" in keys or "steps_per_level" in keys:
        return None
    for foreign in (ScoreSdeVeScheduler, *_DDPM_FAMILY.values()):
        if keys == foreign._get_init_keys(foreign) - {"self", "kwargs"}:
            return foreign.__name__
    return None


def _translate_ddpm_config(ddpm_config: dict[str, Any]) -> dict[str, Any]:
    prediction_type = ddpm_config["prediction_type"]
    if prediction_type != "epsilon":
        raise ValueError(
            f"Score schedulers take DDPM checkpoints with `prediction_type` 'epsilon'; this one has {prediction_type!r}."
        )
    return {
        "sde_type": "vp",
        "num_train_timesteps": ddpm_config["num_train_timesteps"],
        "beta_schedule": ddpm_config["beta_schedule"],
        "beta_start": ddpm_config["beta_start"],
        "beta_end": ddpm_config["beta_end"],
        "trained_betas": ddpm_config["trained_betas"],
        "prediction_type": "epsilon",
        "timestep_type": "discrete",
        # End on DDPM's own last index, 0: with n = N steps the grid is exactly the training grid.
        "sampling_eps": 0.0,
    }


def _translate_score_sde_ve_config(ve_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "sde_type": "ve",
        "num_train_timesteps": ve_config["num_train_timesteps"],
        "sigma_min": ve_config["sigma_min"],
        "sigma_max": ve_config["sigma_max"],
        "sampling_eps": ve_config["sampling_eps"],
        "snr": ve_config["snr"],
        "prior_snr": None,
        "correct_steps": ve_config["correct_steps"],
        "predictor": "reverse_diffusion",
        "corrector": "langevin",
        "corrector_norm": "batch",
        "prediction_type": "score",
        "timestep_type": "sigma",
    }
