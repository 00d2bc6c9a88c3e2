"""What every score scheduler shares: the model convention behind a config (`conventions.ModelConvention`), the
public grid of each run, configs from other schedulers, and step bookkeeping. Time conventions (`timestep_type`) are
described in `score_diffusers.conventions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import ScoreSdeVeScheduler
from diffusers.configuration_utils import FrozenDict
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, DummyObject
from diffusers.utils.torch_utils import randn_tensor

from .. import sampling
from ..checks import SamplingError, all_finite, check_choice, check_generator, check_int, check_positive_int
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


# Diffusers' schedulers whose configs hold a DDPM ᾱ table that `from_config` converts (the ᾱ-table members of
# `KarrasDiffusionSchedulers`; `EDMEulerScheduler` has no table).
ALPHA_TABLE_SCHEDULERS: tuple[str, ...] = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler",
)

# The attribute `step` sets on the `prev_sample` it returns: (scheduler, run, step index).
_STEP_MARK = "_score_scheduler_step"


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
    """Output of a score scheduler's `step`. With `return_dict=False`, `step` returns the tuple
    `(prev_sample, pred_original_sample, prev_sample_mean)`: its first two items are those of `DDPMScheduler`'s and
    `EulerDiscreteScheduler`'s tuples.

    Args:
        prev_sample (`torch.Tensor` of shape `(batch, *dims)`):
            The sample to feed the next model call.
        pred_original_sample (`torch.Tensor` of shape `(batch, *dims)`):
            The Tweedie denoised estimate x̂₀ = (x_t + σ_t²·score)/α_t at the current sample.
        prev_sample_mean (`torch.Tensor` of shape `(batch, *dims)`):
            `prev_sample` before the step's noise was added (equal to it on noise-free steps), as
            `ScoreSdeVeScheduler`'s `prev_sample_mean`.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    prev_sample_mean: torch.Tensor


class MultistepHistory:
    """The x̂₀ of the last steps, for the DPM-Solver++ multistep solvers (probability flow and SDE alike) and UniPC's
    corrector."""

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
        step = _log_step(starts, ratios, i)
        step_ratio = _log_step(starts, ratios, i - 1) / step
        if len(past) == 1:
            return sampling.dpmpp_2m_denoised(denoised, past[-1], step_ratio)
        earlier_ratio = _log_step(starts, ratios, i - 2) / step
        return sampling.dpmpp_3m_denoised(denoised, past[-1], past[-2], step_ratio, earlier_ratio, step)

    def correct(
        self, scaled: torch.Tensor, denoised: torch.Tensor, i: int, starts: list[float], ratios: list[float]
    ) -> torch.Tensor:
        """UniC's correction (`sampling.unic_corrected`) of x̄ = `scaled` at point i, reached by the 2M step from
        point i − 1 that `combine` built from this history, with `denoised` the x̂₀ evaluated at x̄. Call it before
        `combine` records `denoised`. x̄ is returned as it is where the history is empty (the first step, after
        `clear`)."""
        if not self._values:
            return scaled
        step = _log_step(starts, ratios, i - 1)
        if len(self._values) == 1:
            return sampling.unic_corrected(scaled, denoised, self._values[-1], None, step)
        step_ratio = _log_step(starts, ratios, i - 2) / step
        return sampling.unic_corrected(scaled, denoised, self._values[-1], self._values[-2], step, step_ratio)


def _log_step(starts: list[float], ratios: list[float], j: int) -> float:
    """h_j = log(σ̄ at the start of step j / σ̄ where it lands)."""
    return math.log(starts[j] / ratios[j + 1])


class ScoreSchedulerMixin(SchedulerMixin):
    """Base of the package's score schedulers.

    Subclasses call `_configure` in `__init__` with the config's convention keys, build each run in `set_timesteps`
    through `_reset_timesteps` (model timesteps and the public `grid`), and open every `step` with `_begin_step`,
    which enforces the call order. The update rules themselves live in `score_diffusers.sampling`.
    """

    order = 1
    # The Diffusers schedulers whose configs `from_config` converts (see `compatibles`); looked up inside `diffusers`.
    _compatibles: ClassVar[list[str]] = [*ALPHA_TABLE_SCHEDULERS, "ScoreSdeVeScheduler"]
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
        # Diffusers' `from_config` gives keys the source left at its defaults (`_use_default_values`) the target's
        # defaults. The model's conventions must survive any swap, into a Diffusers scheduler too (annealed Langevin's
        # N = 232 and σ_max into `ScoreSdeVeScheduler`): they never count as left at a default.
        if "_use_default_values" in self.config:
            config = dict(self.config)
            defaulted = [k for k in config.pop("_use_default_values") if k not in CONVENTION_DEFAULTS]
            self._internal_dict = FrozenDict({**config, **({"_use_default_values": defaulted} if defaulted else {})})
        self.sde = self.convention.sde
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self._grid: ScheduleGrid | None = None
        self._step_index: int | None = None
        self._begin_index: int = 0
        # Who returned a sample: this scheduler (`_lineage`) in which run (`_run`, new at every `set_timesteps`).
        self._lineage = object()
        self._run = object()

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

    def _run_times(
        self,
        num_inference_steps: int | None,
        timesteps: Sequence[float] | torch.Tensor | None,
        sigmas: Sequence[float] | torch.Tensor | None,
        default_times: Callable[[int], torch.Tensor],
    ) -> torch.Tensor:
        """The time points t_0 > … > t_{n−1} of a run (float64): `default_times(num_inference_steps)`, or a custom
        schedule given as model `timesteps` (the config's `timestep_type`) or as noise levels `sigmas` (σ̄ = σ_t/α_t,
        Diffusers' Karras σ; σ_t itself for VE), exactly one of the three. A custom schedule must be finite, inside
        the model's time range, strictly decreasing in noise level and above noise level 0; else a `ValueError`
        names the argument."""
        given = [
            name for name, value in
            (("num_inference_steps", num_inference_steps), ("timesteps", timesteps), ("sigmas", sigmas))
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "Pass exactly one of `num_inference_steps`, `timesteps` or `sigmas` to `set_timesteps`; got "
                f"{' and '.join(f'`{name}`' for name in given) or 'none'}."
            )
        if num_inference_steps is not None:
            check_positive_int("num_inference_steps", num_inference_steps)
            return default_times(num_inference_steps)
        argument = given[0]
        values = torch.as_tensor(timesteps if sigmas is None else sigmas).detach().to("cpu", torch.float64)
        if values.ndim != 1 or values.numel() == 0 or not bool(torch.isfinite(values).all()):
            raise ValueError(
                f"`{argument}` must be a non-empty 1-D sequence of finite numbers; got shape {tuple(values.shape)}"
                f"{'' if values.ndim != 1 else ' with values ' + str(values.tolist())}."
            )
        if argument == "timesteps":
            self.convention.check_timesteps("timesteps", values)
            times = self.convention.time(values).clamp(0, self.sde.T)
        else:
            ends = torch.tensor([0.0, self.sde.T], dtype=torch.float64)
            low, high = (float(ratio) for ratio in self.sde.noise_to_signal(ends))
            tolerance = 1e-6 * high
            if float(values.min()) < low - tolerance or float(values.max()) > high + tolerance:
                raise ValueError(
                    f"`sigmas` must lie in [{low:g}, {high:g}] (σ_t/α_t over the model's time range); got values in "
                    f"[{float(values.min()):g}, {float(values.max()):g}]."
                )
            times = self.sde.time_from_noise_to_signal(values.clamp(low, high)).clamp(0, self.sde.T)
        if bool((times.diff() >= 0).any()):
            raise ValueError(
                f"`{argument}` must go from noisy to clean, strictly decreasing in noise level (t), without repeats; "
                f"got {values.tolist()}. (A scheduler's own `timesteps` repeat a time point it evaluates the model at "
                "more than once; pass its distinct entries, `scheduler.timesteps[::scheduler.order]`.)"
            )
        if not bool((self.sde.marginal_std(times) > 0).all()):
            raise ValueError(
                f"`{argument}` must stay above noise level 0, where the score is infinite: the step from the last "
                f"entry goes to the data; got {values.tolist()}."
            )
        return times

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
        self._run = object()

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
        self,
        model_output: torch.Tensor,
        timestep: TimeLike,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        check_finite: bool = True,
    ) -> int:
        """Validate one `step` call and return its index into `timesteps`, advancing the counter.

        Bad input raises a `ValueError` before any state changes: a step out of order, a `timestep` tensor that is not
        one value for the whole batch, a `generator` list that is not one per sample, a `sample` that this scheduler
        returned at another step or in an earlier run (two loops sharing it), a NaN or infinite `sample` at the run's
        first step. A `sample` that turns NaN or infinite later, and (unless `check_finite=False`, where the caller
        checks a reduction of it that the step computes anyway) a non-finite model output, raise `SamplingError`.
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
        given = self._single_timestep(timestep)
        expected = self._timestep_values[index]
        if abs(given - expected) > 1e-4 * max(1.0, abs(expected)):
            raise ValueError(
                f"`timestep`={given} is not the next entry of `scheduler.timesteps` (index {index}: {expected}); "
                "step through `timesteps` in order, one call per entry."
            )
        check_generator(generator, sample.shape[0], "`sample`'s batch")
        self._check_sample_continues_the_run(sample, index)
        if not all_finite(sample):
            if index == self._begin_index:
                raise ValueError("`sample` holds NaN or infinite values at the first step of the run.")
            raise SamplingError(
                f"`sample` holds NaN or infinite values at step {index} (timestep {expected}); sampling stopped."
            )
        if check_finite:
            self._check_finite(model_output, index)
        self._step_index = index + 1
        return index

    @staticmethod
    def _single_timestep(timestep: TimeLike) -> float:
        """The one value of `timestep`: a number, or a tensor of equal entries (a loop that feeds the model one
        timestep per sample passes one per sample, one that doubles the batch for its model twice as many)."""
        if not torch.is_tensor(timestep):
            return float(timestep)
        values = timestep.detach().flatten()
        if values.numel() == 0:
            raise ValueError(
                "`timestep` must be a number or a tensor of one or more equal entries; got an empty tensor."
            )
        first = float(values[0])
        if values.numel() > 1 and not bool((values == values[0]).all()):
            raise ValueError(
                f"`timestep` must be the same entry of `timesteps` for every sample (a step moves the whole batch); "
                f"got values from {float(values.min())} to {float(values.max())}."
            )
        return first

    def _check_sample_continues_the_run(self, sample: torch.Tensor, index: int) -> None:
        """Refuse a `sample` this scheduler returned other than at the step just before: the mark of two loops
        stepping one scheduler, or of a loop that fed back an older sample. A sample it did not return (x_T, one a
        callback or a pipeline replaced, a copy: `.clone()`, a cast) is accepted, so a second loop's first step
        passes and the error comes at the next step of either loop; a second loop that takes a single step goes
        unnoticed."""
        mark = getattr(sample, _STEP_MARK, None)
        if mark is None or mark[0] is not self._lineage or index == self._begin_index:
            return
        run, returned_at = mark[1], mark[2]
        if run is not self._run or returned_at != index - 1:
            where = "an earlier run (`set_timesteps` was called since)" if run is not self._run else "this run"
            raise ValueError(
                f"`sample` is the output of step {returned_at} of {where}, but this is step {index} of the current "
                "run: two sampling loops seem to share this scheduler (or a loop passed back an older sample); give "
                "each loop its own (`copy.deepcopy(scheduler)` or `from_config(scheduler.config)`)."
            )

    def _step_output(
        self,
        index: int,
        prev_sample: torch.Tensor,
        prev_sample_mean: torch.Tensor,
        pred_original_sample: torch.Tensor,
        return_dict: bool,
    ) -> ScoreSchedulerOutput | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The output of step `index`; `prev_sample` is marked as this run's output of that step."""
        setattr(prev_sample, _STEP_MARK, (self._lineage, self._run, index))
        if not return_dict:
            return prev_sample, pred_original_sample, prev_sample_mean
        return ScoreSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=pred_original_sample, prev_sample_mean=prev_sample_mean
        )

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
    def _get_compatibles(cls) -> list[type]:
        """Diffusers' lookup of `_compatibles` (names inside `diffusers`), with this package's score schedulers in
        front: Diffusers' `from_config` keeps the keys of a compatible class hidden in the config instead of warning,
        so a swap to a sibling and back restores the sampler keys. Placeholders of schedulers whose optional
        dependency is missing (`DPMSolverSDEScheduler` without `torchsde`) are left out."""
        found = [c for c in super()._get_compatibles() if not isinstance(c, DummyObject)]
        return [*ScoreSchedulerMixin._score_scheduler_classes, *found]

    @property
    def compatibles(self) -> list[type]:
        """The scheduler classes a pipeline holding this scheduler may swap it for with `from_config(config)`: the
        score schedulers that sample this SDE, and the Diffusers schedulers of `_compatibles` where they describe the
        same model (the ᾱ-table family for a VP config on a DDPM table with ε prediction and DDPM index timesteps;
        `ScoreSdeVeScheduler` for a VE score model fed σ). `_compatibles` itself names every Diffusers scheduler whose
        config this class converts from."""
        sde_type, convention = self.convention.sde_type, self.convention
        siblings = [k for k in ScoreSchedulerMixin._score_scheduler_classes if sde_type in k._supported_sde_types]
        diffusers_classes = [c for c in self._get_compatibles() if not issubclass(c, ScoreSchedulerMixin)]
        outputs = (convention.prediction_type, convention.timestep_type)
        if sde_type == "vp" and self.config.get("beta_schedule") not in (None, "continuous_linear") and \
                outputs == ("epsilon", "discrete"):
            describe_same_model = [c for c in diffusers_classes if c.__name__ in ALPHA_TABLE_SCHEDULERS]
        elif sde_type == "ve" and outputs == ("score", "sigma") and self.config.get("sampling_eps", 0.0) is not None:
            # `ScoreSdeVeScheduler` needs its ε as a number (unset, ours means 1e-5).
            describe_same_model = [c for c in diffusers_classes if c.__name__ == "ScoreSdeVeScheduler"]
        else:
            describe_same_model = []
        return [*siblings, *describe_same_model]

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Instantiate from a config of any score scheduler of this package, of a Diffusers ᾱ-table scheduler
        (`DDPMScheduler`, `DDIMScheduler`, `EulerDiscreteScheduler`, `DPMSolverMultistepScheduler`, …: VP on the
        checkpoint's own ᾱ table, ε prediction, DDPM index timesteps) or of `ScoreSdeVeScheduler` (→ VE with its
        σ_min, σ_max, snr, correct_steps and sampling_eps, σ timesteps, batch-averaged corrector at a constant snr).

        The source's convention keys (SDE, noise range, ᾱ table, prediction and timestep types, N) are kept even where
        the source left them at its own defaults. Keys that only a sibling score scheduler (or a Diffusers scheduler of
        `_compatibles`) uses stay hidden in the config, as Diffusers does in a swap between compatible schedulers, so
        swapping back restores them; keys no such scheduler knows raise a `ValueError`. A Diffusers config that holds
        a score scheduler's hidden keys (one swapped from a score scheduler) is read as that score scheduler's.
        """
        config = dict(config if config is not None else {})
        source = config_source(config)
        if "sde_type" in config or "steps_per_level" in config:
            source = "score"
        if source == "ddpm":
            config = convention_config_from_ddpm(config)
        elif source == "score_sde_ve":
            config = _translate_score_sde_ve_config(ScoreSdeVeScheduler.from_config(config).config)
        else:
            own_names = {klass.__name__ for klass in cls._get_compatibles()}
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

        known_keys = set().union(*(klass._get_init_keys(klass) for klass in cls._get_compatibles()))
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
