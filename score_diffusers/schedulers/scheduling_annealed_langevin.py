"""Annealed Langevin dynamics of NCSN (Song & Ermon, 2019, https://arxiv.org/abs/1907.05600) and NCSNv2
(Song & Ermon, 2020, https://arxiv.org/abs/2006.09011), and consistent annealed sampling (Jolicoeur-Martineau et al.,
2021, https://arxiv.org/abs/2009.05475)."""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
# Diffusers' pipeline loader finds how to load a component from another package by looking its base class names
# up in the component's own module, so the scheduler modules must expose `SchedulerMixin`.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

from ..checks import check_number, check_positive_int
from .. import sampling
from ..sampling import langevin
from .scheduling_utils import (
    PredictionType,
    ScheduleGrid,
    ScoreSchedulerMixin,
    ScoreSchedulerOutput,
    TimestepType,
)


class AnnealedLangevinScheduler(ScoreSchedulerMixin, ConfigMixin):
    """Annealed Langevin dynamics over geometric noise levels σ_1 = σ_max > … > σ_n = σ_min, σ_{i+1} = ρ·σ_i.

    At each level i, `steps_per_level` (T) steps with the drift η·σ_i²·s_θ(x, σ_i), i.e. a step size
    α_i = ε·σ_i²/σ_min² with η = ε/(2σ_min²), and, with `final_denoising` (NCSNv2), one last model call at σ_min for
    the Tweedie step x ← x + σ_min²·s_θ(x, σ_min). `timesteps` repeat each level's model timestep T times, so
    `len(timesteps) = n·T (+ 1)`. The noise levels are the VE SDE's σ(t) on t = linspace(1, 0, n); with
    n = `num_train_timesteps` they are NCSN's training levels.

    With `consistent` (the default), the noise is that of consistent annealed sampling (Jolicoeur-Martineau et al.,
    2021, https://arxiv.org/abs/2009.05475):

        x ← x + η·σ_i²·s_θ(x, σ_i) + √(σ'² − (1 − η)²σ_i²)·z,

    σ' the level of the next step. With the exact score of a point mass x_0, a sample x_0 + σ_i·z leaves the step
    as x_0 + σ'·z exactly. It needs |1 − η|·σ_i ≤ σ', that is 2σ_min²(1 − ρ) ≤ ε ≤ 2σ_min²(1 + ρ); `set_timesteps`
    checks a given `step_size` against it. Unset, η = 1 − ρ²: the drift is then (σ_i² − σ_{i+1}²)·s_θ and the
    noise σ_{i+1}·√(σ_i² − σ_{i+1}²)/σ_i, the reverse SDE's ancestral step (NCSN ancestral sampling), and further
    steps at a level (T > 1) are Langevin steps of that η.

    With `forget_prior` (the default) the first step, in either update, is x ← x̂₀(x_T) + σ'·z, a consistent step with
    η = 1, as `SDEDPMSolverScheduler`'s: x_T ~ N(0, σ_max²I) misses p_T's mean (the data's), and the annealing
    shrinks that offset only by ≈ (s² + σ²)/(s² + σ_max²) by level σ (data spread s), still far from 0 where the modes
    separate when the data's mean is large against σ_max; x̂₀(x_T) is the data's mean to within (s/σ_max)².

    Without `consistent`, the update is NCSN's (Algorithm 1 of Song & Ermon, 2019):

        x ← x + (α_i/2)·s_θ(x, σ_i) + √α_i·z.

    Its noise stays above the level: at small ε the last levels' steps (α ∝ σ²) are too small to shrink it back,
    and at large ε Langevin's own bias misplaces mode weight where the modes separate. Unset, ε follows NCSNv2's
    technique 4 for ρ and T: the ε that carries N(0, (σ_i/ρ)²I) closest to N(0, σ_i²I) in T steps. NCSNv2's code
    writes the update as x ← x + ε'(σ_i/σ_min)²·s_θ + √(2ε'(σ_i/σ_min)²)·z, so its ε' is half of ε here: its
    CIFAR-10 settings (232 levels, T = 5) give ε' = 6.2e-6, ε = 1.24e-5. In PC terms NCSN's sampler is a
    corrector-only sampler with the corrector step α_i/2, i.e. snr = √(ε/(4σ_min²)).

    Args:
        num_train_timesteps (`int`, defaults to 232): L, the number of training noise levels (the `"discrete"`
            label scale: label 0 is σ_max, L − 1 is σ_min).
        sigma_min (`float`, defaults to 0.01): the smallest noise level σ_L.
        sigma_max (`float`, defaults to 50.0): the largest noise level σ_1.
        steps_per_level (`int`, defaults to 1): T, steps at each level (NCSN used 100, NCSNv2 5).
        step_size (`float`, *optional*): ε in the updates above; unset, it follows from the levels of each
            `set_timesteps` and T as described (`step_size_for_levels`).
        final_denoising (`bool`, defaults to `True`): end with the Tweedie denoising step.
        consistent (`bool`, defaults to `True`): consistent annealed sampling's noise; `False` for NCSN's.
        forget_prior (`bool`, defaults to `True`): take the first step as x̂₀ + σ'·z (see above).
        prediction_type (`str`, defaults to `"score"`): `"score"` or `"epsilon"` (score = −ε/σ).
        timestep_type (`str`, defaults to `"sigma"`): `"sigma"`, `"discrete"` or `"continuous"`.
    """

    _supported_sde_types = ("ve",)
    # VE only: of Diffusers' schedulers, only `ScoreSdeVeScheduler` configs convert.
    _compatibles = ["ScoreSdeVeScheduler"]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 232,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        steps_per_level: int = 1,
        step_size: float | None = None,
        final_denoising: bool = True,
        consistent: bool = True,
        forget_prior: bool = True,
        prediction_type: PredictionType = "score",
        timestep_type: TimestepType = "sigma",
    ):
        check_positive_int("steps_per_level", steps_per_level)
        check_number(
            "step_size", step_size, 0, math.inf, low_open=True, high_open=True, allow_none=True,
            none_means="to derive it from the noise levels",
        )
        # The VE SDE of the levels; sampling ends on the last level, σ_min at t = 0 (`conventions` knows its defaults).
        self._configure(dict(self.config), {})

    @property
    def order(self) -> int:
        """Entries of `timesteps` per noise level, so that Diffusers' image-to-image slicing
        `timesteps[t_start * order:]` starts on a level."""
        return self.config.steps_per_level

    def step_size_for_levels(self, num_inference_steps: int) -> float:
        """ε on `num_inference_steps` levels: `step_size` where set, else 2σ_min²·η with η = 1 − ρ² (`consistent`)
        or NCSNv2's technique 4 for ρ and `steps_per_level`.

        Args:
            num_inference_steps (`int`): number n of noise levels.
        """
        check_positive_int("num_inference_steps", num_inference_steps)
        if self.config.step_size is not None:
            return self.config.step_size
        # One level has no next one: as if it stepped to σ_min, which makes a consistent step denoise fully.
        level_ratio = (self.config.sigma_min / self.config.sigma_max) ** (1 / max(num_inference_steps - 1, 1))
        if self.config.consistent:
            eta = langevin.consistent_step_ratio(level_ratio)
        else:
            eta = langevin.ncsnv2_step_ratio(level_ratio, self.config.steps_per_level)
        return 2 * self.config.sigma_min**2 * eta

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Set `num_inference_steps` noise levels from σ_max down to σ_min and reset the step state.

        Args:
            num_inference_steps (`int`): number n of noise levels; the model runs n·T (+ 1) times.
            device (`str` or `torch.device`, *optional*): where `timesteps` live.
        """
        step_size = self.step_size_for_levels(num_inference_steps)
        times = torch.linspace(self.sde.T, 0, num_inference_steps, dtype=torch.float64)
        if self.config.final_denoising:
            times = torch.cat([times.repeat_interleave(self.config.steps_per_level), times[-1:]])
        else:
            times = times.repeat_interleave(self.config.steps_per_level)
        sigmas = self.sde.marginal_std(times).tolist()
        # Validated before any state changes: a refused call leaves the previous schedule intact.
        self._noise_stds = (
            self._consistent_noise_stds(sigmas, num_inference_steps, step_size) if self.config.consistent else None
        )
        self._sigmas = sigmas
        self._step_size = step_size
        # The level the first step lands on: the next entry's, or its own when it is the only Langevin entry.
        self._first_next_sigma = sigmas[min(1, num_inference_steps * self.config.steps_per_level - 1)]
        # Each Langevin entry leaves a sample at the next entry's level (its own, for the last); the final denoising
        # step returns the data estimate.
        next_times = torch.cat([times[1:], times[-1:]])
        lands_on_data = torch.zeros(len(times), dtype=torch.bool)
        lands_on_data[-1] = self.config.final_denoising
        grid = ScheduleGrid.build(self.convention, times, next_times, lands_on_data)
        self._reset_timesteps(self.timestep_for_time(times), num_inference_steps, device, grid)

    def _consistent_noise_stds(self, sigmas: list[float], num_inference_steps: int, step_size: float) -> list[float]:
        """√(σ'² − (1 − η)²σ²) for every Langevin entry of `sigmas`, σ' the next entry's level (σ_min after the last
        level)."""
        eta = step_size / (2 * self.config.sigma_min**2)
        langevin_sigmas = sigmas[: num_inference_steps * self.config.steps_per_level]
        next_sigmas = langevin_sigmas[1:] + langevin_sigmas[-1:]
        pairs = list(zip(langevin_sigmas, next_sigmas))
        if any(abs(1 - eta) * sigma > next_sigma * (1 + 1e-12) for sigma, next_sigma in pairs):
            ratio = min(next_sigma / sigma for sigma, next_sigma in pairs)
            raise ValueError(
                f"`consistent` sampling needs |1 − η|·σ_i ≤ σ_(i+1), η = step_size/(2·sigma_min²) = {eta:.4g}: with "
                f"num_inference_steps={num_inference_steps} levels, `step_size` must be in "
                f"[{2 * self.config.sigma_min**2 * (1 - ratio):.4g}, {2 * self.config.sigma_min**2 * (1 + ratio):.4g}]"
                f" (or unset, to derive it from the levels); got {step_size}."
            )
        return [langevin.consistent_noise_std(sigma, next_sigma, eta) for sigma, next_sigma in pairs]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> ScoreSchedulerOutput | tuple:
        """One Langevin step at the current noise level, or the final Tweedie denoising step.

        Args:
            model_output (`torch.Tensor` of shape `(batch, *dims)`): the model's score or ε at (`sample`, `timestep`).
            timestep (`float` or `torch.Tensor`): the current entry of `timesteps`.
            sample (`torch.Tensor` of shape `(batch, *dims)`): the current x.
            generator (`torch.Generator` or list of them, *optional*): source of the Langevin noise.
            return_dict (`bool`, defaults to `True`): return a `ScoreSchedulerOutput` rather than a tuple.

        Returns:
            `ScoreSchedulerOutput`, or the tuple `(prev_sample, pred_original_sample, prev_sample_mean)`.
        """
        index = self._begin_step(model_output, timestep, sample, generator)
        sigma = self._sigmas[index]
        score = self.convention.score_from_output(model_output, sigma)
        pred_original = self.convention.denoised(sample, score, 1.0, sigma)
        is_denoising_step = self.config.final_denoising and index == len(self._sigmas) - 1
        if is_denoising_step:
            prev_sample = prev_mean = pred_original
        elif index == 0 and self.config.forget_prior:
            prev_mean = pred_original
            prev_sample = sampling.add_noise(pred_original, self._noise_like(sample, generator), self._first_next_sigma)
        else:
            noise = self._noise_like(sample, generator)
            noise_std = None if self._noise_stds is None else self._noise_stds[index]
            # η·σ² with η = ε/(2σ_min²): α_i/2 of NCSN's update.
            langevin_step = 0.5 * self._step_size * (sigma / self.config.sigma_min) ** 2
            prev_sample, prev_mean = langevin.langevin_step(sample, score, langevin_step, noise, noise_std)
        return self._step_output(index, prev_sample, prev_mean, pred_original, return_dict)
