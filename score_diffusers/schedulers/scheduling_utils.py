"""What every score scheduler shares: the model convention behind a config (`conventions.ModelConvention`), the
public grid of each run, configs from other schedulers, and step bookkeeping. Time conventions (`timestep_type`) are
described in `score_diffusers.conventions`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import ScoreSdeVeScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .. import sampling
from ..checks import SamplingError, all_finite, check_choice, check_int, check_positive_int
from ..conventions import (
    BETA_SCHEDULES,
    CONVENTION_DEFAULTS,
    PREDICTION_TYPES,
    SDE_TYPES,
    TIME_SPACINGS,
    TIMESTEP_TYPES,
    BetaSchedule,
    ModelConvention,
    PredictionType,
    SDEType,
    TimestepType,
    TimeSpacing,
    config_source,
    convention_config_from_ddpm,
    convention_config_from_score_sde_ve,
)
from ..sde import TimeLike


__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "SDE_TYPES",
    "TIMESTEP_TYPES",
    "BetaSchedule",
    "PredictionType",
    "SDEType",
    "TimestepType",
    "MultistepHistory",
    "ScheduleGrid",
    "TIME_SPACINGS",
    "TimeSpacing",
    "ScoreSchedulerMixin",
    "ScoreSchedulerOutput",
    "check_choice",
    "check_positive_int",
]


@dataclass(frozen=True)
class ScheduleGrid:
    """Where each entry of a scheduler's `timesteps` stands, so a pipeline can act between steps.

    All fields are float64 tensors of shape `(len(timesteps),)` on the CPU. Entry k evaluates the model at time
    `times[k]`, where x_t = α·x₀ + σ·z with α = `alphas[k]`, σ = `sigmas[k]`; `step` then returns a sample at
    `next_times[k]` (`next_alphas[k]`, `next_sigmas[k]`). A corrector entry does not move in time (next = current);
    where the step returns the data estimate, `next_sigmas` is 0, `next_alphas` 1 and `next_times` 0.
    """

    times: torch.Tensor
    alphas: torch.Tensor
    sigmas: torch.Tensor
    next_times: torch.Tensor
    next_alphas: torch.Tensor
    next_sigmas: torch.Tensor

    @classmethod
    def build(cls, convention: ModelConvention, times: torch.Tensor, next_times: torch.Tensor,
              lands_on_data: torch.Tensor) -> ScheduleGrid:
        """The grid of evaluation times `times` and step targets `next_times` (float64), the targets marked in
        `lands_on_data` (bool) being the data itself."""
        alphas, sigmas = convention.coefficients(times)
        next_alphas, next_sigmas = convention.coefficients(next_times)
        data = lands_on_data.to(torch.bool)
        return cls(
            times=times,
            alphas=alphas,
            sigmas=sigmas,
            next_times=torch.where(data, torch.zeros_like(next_times), next_times),
            next_alphas=torch.where(data, torch.ones_like(next_alphas), next_alphas),
            next_sigmas=torch.where(data, torch.zeros_like(next_sigmas), next_sigmas),
        )


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


class MultistepHistory:
    """The x̂₀ of the last steps, for the DPM-Solver++ multistep solvers (probability flow and SDE alike)."""

    def __init__(self):
        self._values: list[torch.Tensor] = []

    def clear(self) -> None:
        self._values.clear()

    def combine(
        self, denoised: torch.Tensor, i: int, order: int, starts: list[float], ratios: list[float]
    ) -> torch.Tensor:
        """The x̂₀ for the step from point i (σ̄ `starts[i]`) to σ̄ `ratios[i + 1]`, with h_j = log(starts[j]/ratios[j+1])
        and r = h_{i−1}/h_i, r' = h_{i−2}/h_i: DPM-Solver++(2M)'s x̂₀_i + (x̂₀_i − x̂₀_{i−1})/(2r), or (3M, `order` 3)
        the same with x̂₀_{i−2}. The order drops to what the history holds: x̂₀_i itself on the first step, after
        `clear`, and on the last step (to σ̄ = 0, where h_i is infinite). Records `denoised`."""
        past = [] if ratios[i + 1] == 0 else self._values[len(self._values) - (order - 1):]
        self._values = [*self._values[-1:], denoised]
        if not past:
            return denoised
        step = math.log(starts[i] / ratios[i + 1])
        step_ratio = math.log(starts[i - 1] / ratios[i]) / step
        if len(past) == 1:
            return sampling.dpmpp_2m_denoised(denoised, past[-1], step_ratio)
        earlier_ratio = math.log(starts[i - 2] / ratios[i - 1]) / step
        return sampling.dpmpp_3m_denoised(denoised, past[-1], past[-2], step_ratio, earlier_ratio, step)


class ScoreSchedulerMixin(SchedulerMixin):
    """Base of the package's score schedulers.

    Subclasses call `_configure` in `__init__` with the config's convention keys, build each run in `set_timesteps`
    through `_reset_timesteps` (model timesteps and the public `grid`), and open every `step` with `_begin_step`,
    which enforces the call order. The update rules themselves live in `score_diffusers.sampling`.
    """

    order = 1
    # sde_type values a subclass can sample; annealed Langevin is VE only.
    _supported_sde_types: ClassVar[tuple[str, ...]] = SDE_TYPES
    _score_scheduler_classes: ClassVar[list[type]] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        ScoreSchedulerMixin._score_scheduler_classes.append(cls)

    # ---- the model convention ------------------------------------------------------------------------------------

    def _configure(self, convention_config: Mapping[str, Any], own_choices: dict[str, tuple[str, ...]]) -> None:
        """Validate the subclass's `own_choices` and build the convention `convention_config` describes."""
        for argument, accepted in own_choices.items():
            check_choice(argument, getattr(self.config, argument), accepted)
        self.convention = ModelConvention.from_config(convention_config)
        self.sde = self.convention.sde
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self._grid: ScheduleGrid | None = None
        self._step_index: int | None = None
        self._begin_index: int = 0

    @property
    def sampling_eps(self) -> float:
        """ε, the last time of sampling (and the likelihood's lower integration limit)."""
        return self.convention.sampling_eps

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the prior the loop starts from: σ_max for VE, 1 for VP and sub-VP."""
        return self.sde.prior_std

    @property
    def step_index(self) -> int | None:
        """Index into `timesteps` of the next `step` call; `None` before `set_timesteps`."""
        return self._step_index

    @property
    def begin_index(self) -> int:
        """Index into `timesteps` of the run's first step (`set_begin_index`); 0 by default."""
        return self._begin_index

    @property
    def grid(self) -> ScheduleGrid:
        """Where each entry of `timesteps` stands: its t, α, σ and those of the sample its step returns."""
        if self._grid is None:
            raise ValueError(f"Call `{type(self).__name__}.set_timesteps(num_inference_steps)` before reading `grid`.")
        return self._grid

    def timestep_for_time(self, t: TimeLike) -> torch.Tensor:
        """What the model receives as its timestep at continuous time `t` (`ModelConvention.timestep`)."""
        return self.convention.timestep(t)

    def time_for_timestep(self, timestep: TimeLike) -> torch.Tensor:
        """Continuous time t of a model timestep (`ModelConvention.time`, closed form)."""
        return self.convention.time(timestep)

    def score_from_model_output(self, model_output: torch.Tensor, timestep: TimeLike) -> torch.Tensor:
        """∇ₓ log p_t from a model output at `timestep`: the output itself for `prediction_type="score"`, −ε/σ_t for
        `"epsilon"`. Inside a run, `convention.score_from_output(output, grid.sigmas[k])` avoids the time lookup."""
        return self.convention.score_from_output(model_output, self._sigma_at(timestep, model_output))

    def _sigma_at(self, timestep: TimeLike, like: torch.Tensor) -> torch.Tensor:
        t = self.time_for_timestep(timestep.detach().cpu() if torch.is_tensor(timestep) else timestep)
        return self.sde.marginal_std(t).to(device=like.device, dtype=like.dtype)

    def scale_model_input(self, sample: torch.Tensor, timestep: TimeLike | None = None) -> torch.Tensor:
        """Score models take x_t unscaled; kept for interchangeability with Diffusers' loop."""
        return sample

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Forward process x_t = α_t·x₀ + σ_t·noise at model timesteps `timesteps` (shape `(batch,)` or `()`).

        `timesteps` use the same convention as the model input, so training code can draw them, feed the model the
        same values and recover t through `time_for_timestep`. They must lie in the model's training range.
        """
        self.convention.check_timesteps("timesteps", timesteps)
        t = self.time_for_timestep(timesteps.detach().cpu() if torch.is_tensor(timesteps) else timesteps)
        return self.convention.perturb(original_samples, t, noise).sample

    # ---- step bookkeeping ------------------------------------------------------------------------------------

    def _reset_timesteps(
        self, model_timesteps: torch.Tensor, num_inference_steps: int, device, grid: ScheduleGrid
    ) -> None:
        """Install a new run: `timesteps` as float32 model inputs, its `grid`, and a step counter back at 0."""
        self.num_inference_steps = num_inference_steps
        self.timesteps = model_timesteps.to(device=device, dtype=torch.float32)
        self._timestep_values = self.timesteps.tolist()
        self._grid = grid
        self._begin_index = 0
        self._step_index = 0

    def _can_begin_at(self, index: int) -> bool:
        """Whether a run may start at entry `index` (a subclass with multi-entry steps refuses their inner entries)."""
        return True

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at entry `begin_index` of `timesteps` instead of 0, as Diffusers' image-to-image pipelines do
        with `strength`: call it after `set_timesteps` and before the first `step`, with a sample at
        `grid.times[begin_index]`.

        Args:
            begin_index (`int`): the entry of `timesteps` the first `step` call stands for.
        """
        if self.timesteps is None:
            raise ValueError(f"Call `{type(self).__name__}.set_timesteps` before `set_begin_index`.")
        if self._step_index != self._begin_index:
            raise ValueError("`set_begin_index` must come before the run's first `step`.")
        check_int("begin_index", begin_index, 0)
        if begin_index >= len(self._timestep_values) or not self._can_begin_at(begin_index):
            starts = [k for k in range(len(self._timestep_values)) if self._can_begin_at(k)]
            raise ValueError(
                f"`begin_index` must be an entry of `timesteps` where a step starts, one of 0 … "
                f"{len(self._timestep_values) - 1}{'' if len(starts) == len(self._timestep_values) else ' among ' + str(starts)}"
                f"; got {begin_index}."
            )
        self._begin_index = begin_index
        self._step_index = begin_index

    def _begin_step(
        self, model_output: torch.Tensor, timestep: TimeLike, sample: torch.Tensor, check_finite: bool = True
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
        inf (`checks.all_finite`)."""
        if not all_finite(values):
            raise SamplingError(
                f"`model_output` holds NaN or infinite values at step {index} "
                f"(timestep {self._timestep_values[index]}); sampling stopped."
            )

    @staticmethod
    def _noise_like(sample: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
        """Standard normal noise shaped like `sample`, drawn from `generator` (one, or a list with one per sample)."""
        return randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ---- configs from other schedulers -----------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Instantiate from a config of any score scheduler of this package, of a Diffusers ᾱ-table scheduler
        (`DDPMScheduler`, `DDIMScheduler`, `EulerDiscreteScheduler`, `DPMSolverMultistepScheduler`, …: VP on the
        checkpoint's own ᾱ table, ε prediction, DDPM index timesteps) or of `ScoreSdeVeScheduler` (→ VE with its
        σ_min, σ_max, snr, correct_steps and sampling_eps, σ timesteps, batch-averaged corrector at a constant snr).

        The source's convention keys (SDE, noise range, ᾱ table, prediction and timestep types, N) are kept even where
        the source left them at its own defaults. Keys that only a sibling score scheduler uses are dropped, as in any
        Diffusers scheduler swap; keys no score scheduler knows raise a `ValueError`.
        """
        config = dict(config if config is not None else {})
        source = config_source(config)
        if source == "ddpm":
            config = convention_config_from_ddpm(config)
        elif source == "score_sde_ve":
            config = _translate_score_sde_ve_config(ScoreSdeVeScheduler.from_config(config).config)
        else:
            own_names = {klass.__name__ for klass in cls._score_scheduler_classes}
            name = config.get("_class_name", cls.__name__)
            if name not in own_names:
                raise ValueError(
                    f"{cls.__name__}.from_config takes a config of {', '.join(sorted(own_names))}, a Diffusers "
                    f"ᾱ-table scheduler (DDPMScheduler, DDIMScheduler, …) or ScoreSdeVeScheduler; got one of {name}."
                )
            # Diffusers resets keys the source left at its defaults (`_use_default_values`) to the target's defaults.
            # That is right for sampler keys but not for the model's conventions, which must survive the swap
            # (annealed Langevin's σ timesteps and N = 232 included): their values stay.
            defaulted = [k for k in config.get("_use_default_values", []) if k not in CONVENTION_DEFAULTS]
            config = {**config, "_use_default_values": defaulted}

        known_keys = set().union(*(klass._get_init_keys(klass) for klass in cls._score_scheduler_classes))
        own_keys = cls._get_init_keys(cls) - {"self", "kwargs"}
        unknown = sorted(k for k in {**config, **kwargs} if not k.startswith("_") and k not in known_keys)
        unknown += sorted(k for k in kwargs if k in known_keys and k not in own_keys)
        if unknown:
            raise ValueError(f"Unknown config keys for {cls.__name__}: {unknown}. Accepted keys: {sorted(own_keys)}.")
        sde_type = ModelConvention.from_config({**config, **kwargs}).sde_type
        if sde_type not in cls._supported_sde_types:
            raise ValueError(
                f"{cls.__name__} samples sde_type {', '.join(cls._supported_sde_types)} only; the config has "
                f"sde_type={sde_type!r}."
            )
        config = {k: v for k, v in config.items() if k.startswith("_") or k in own_keys}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)


def _translate_score_sde_ve_config(ve_config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **convention_config_from_score_sde_ve(ve_config),
        "snr": ve_config["snr"],
        "prior_snr": None,
        "correct_steps": ve_config["correct_steps"],
        "predictor": "reverse_diffusion",
        "corrector": "langevin",
        "corrector_norm": "batch",
    }
