"""Annealed Langevin dynamics of NCSN (Song & Ermon, 2019, https://arxiv.org/abs/1907.05600) and NCSNv2
(Song & Ermon, 2020, https://arxiv.org/abs/2006.09011)."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
# Diffusers' pipeline loader finds how to load a component from another package by looking its base class names
# up in the component's own module, so the scheduler modules must expose `SchedulerMixin`.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

import math

from .. import sampling
from ..checks import check_number, check_positive_int
from .scheduling_utils import (
    PredictionType,
    ScheduleGrid,
    ScoreSchedulerMixin,
    ScoreSchedulerOutput,
    TimestepType,
)


class AnnealedLangevinScheduler(ScoreSchedulerMixin, ConfigMixin):
    """Annealed Langevin dynamics over geometric noise levels σ_1 = σ_max > … > σ_n = σ_min.

    At each level i, `steps_per_level` (T) Langevin steps with step size α_i = ε·σ_i²/σ_min²:

        x ← x + (α_i/2)·s_θ(x, σ_i) + √α_i·z,

    and, with `final_denoising` (NCSNv2), one last model call at σ_min for the Tweedie step x ← x + σ_min²·s_θ(x, σ_min).
    `timesteps` repeat each level's model timestep T times, so `len(timesteps) = n·T (+ 1)`. The noise levels are
    the VE SDE's σ(t) on t = linspace(1, 0, n); with n = `num_train_timesteps` they are NCSN's training levels. In
    PC terms this is a corrector-only sampler with η = α_i/2, i.e. snr = √(ε/(4σ_min²)).

    The update is NCSN's (Algorithm 1 of Song & Ermon, 2019). NCSNv2's code writes the same step as
    x ← x + ε'(σ_i/σ_min)²·s_θ + √(2ε'(σ_i/σ_min)²)·z, so its ε' is half of ε here: NCSNv2's CIFAR-10 value
    ε' = 6.2e-6 is the default ε = 1.24e-5.

    With `consistent`, the noise is that of consistent annealed sampling (Jolicoeur-Martineau et al., 2021,
    https://arxiv.org/abs/2009.05475): the same drift step, then √(σ'² − (1 − η)²σ_i²)·z, where η = α_i/(2σ_i²) =
    ε/(2σ_min²) and σ' is the level of the next step. With the exact score of a point mass x_0, a sample x_0 + σ_i·z
    leaves the step as x_0 + σ'·z exactly, while Langevin's √α_i·z leaves its noise above the level and lagging
    behind it, which the final levels, with their small steps, cannot undo. It needs |1 − η|·σ_i ≤ σ', that is
    2σ_min²(1 − σ_{i+1}/σ_i) ≤ ε ≤ 2σ_min²(1 + σ_{i+1}/σ_i); `set_timesteps` checks it.

    Args:
        num_train_timesteps (`int`, defaults to 232): L, the number of training noise levels (the `"discrete"`
            label scale: label 0 is σ_max, L − 1 is σ_min).
        sigma_min (`float`, defaults to 0.01): the smallest noise level σ_L.
        sigma_max (`float`, defaults to 50.0): the largest noise level σ_1.
        steps_per_level (`int`, defaults to 5): T, Langevin steps at each level.
        step_size (`float`, defaults to 1.24e-5): ε in the update above; with the other defaults, NCSNv2's
            CIFAR-10 settings (its ε' = 6.2e-6).
        final_denoising (`bool`, defaults to `True`): end with the Tweedie denoising step.
        consistent (`bool`, defaults to `False`): consistent annealed sampling's noise instead of Langevin's.
        prediction_type (`str`, defaults to `"score"`): `"score"` or `"epsilon"` (score = −ε/σ).
        timestep_type (`str`, defaults to `"sigma"`): `"sigma"`, `"discrete"` or `"continuous"`.
    """

    _supported_sde_types = ("ve",)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 232,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        steps_per_level: int = 5,
        step_size: float = 1.24e-5,
        final_denoising: bool = True,
        consistent: bool = False,
        prediction_type: PredictionType = "score",
        timestep_type: TimestepType = "sigma",
    ):
        check_positive_int("steps_per_level", steps_per_level)
        check_number("step_size", step_size, 0, math.inf, low_open=True, high_open=True)
        # The VE SDE of the levels; sampling ends on the last level, σ_min at t = 0 (`conventions` knows its defaults).
        self._configure(dict(self.config), {})

    @property
    def order(self) -> int:
        """Entries of `timesteps` per noise level, so that Diffusers' image-to-image slicing
        `timesteps[t_start * order:]` starts on a level."""
        return self.config.steps_per_level

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Set `num_inference_steps` noise levels from σ_max down to σ_min and reset the step state.

        Args:
            num_inference_steps (`int`): number n of noise levels; the model runs n·T (+ 1) times.
            device (`str` or `torch.device`, *optional*): where `timesteps` live.
        """
        check_positive_int("num_inference_steps", num_inference_steps)
        times = torch.linspace(self.sde.T, 0, num_inference_steps, dtype=torch.float64)
        if self.config.final_denoising:
            times = torch.cat([times.repeat_interleave(self.config.steps_per_level), times[-1:]])
        else:
            times = times.repeat_interleave(self.config.steps_per_level)
        sigmas = self.sde.marginal_std(times).tolist()
        # Validated before any state changes: a refused call leaves the previous schedule intact.
        self._noise_stds = self._consistent_noise_stds(sigmas, num_inference_steps) if self.config.consistent else None
        self._sigmas = sigmas
        # Each Langevin entry leaves a sample at the next entry's level (its own, for the last); the final denoising
        # step returns the data estimate.
        next_times = torch.cat([times[1:], times[-1:]])
        lands_on_data = torch.zeros(len(times), dtype=torch.bool)
        lands_on_data[-1] = self.config.final_denoising
        grid = ScheduleGrid.build(self.convention, times, next_times, lands_on_data)
        self._reset_timesteps(self.timestep_for_time(times), num_inference_steps, device, grid)

    def _consistent_noise_stds(self, sigmas: list[float], num_inference_steps: int) -> list[float]:
        """√(σ'² − (1 − η)²σ²) for every Langevin entry of `sigmas`, σ' the next entry's level (σ_min after the last
        level)."""
        eta = self.config.step_size / (2 * self.config.sigma_min**2)
        langevin_sigmas = sigmas[: num_inference_steps * self.config.steps_per_level]
        next_sigmas = langevin_sigmas[1:] + langevin_sigmas[-1:]
        pairs = list(zip(langevin_sigmas, next_sigmas))
        if any(abs(1 - eta) * sigma > next_sigma * (1 + 1e-12) for sigma, next_sigma in pairs):
            ratio = min(next_sigma / sigma for sigma, next_sigma in pairs)
            raise ValueError(
                f"`consistent` sampling needs |1 − η|·σ_i ≤ σ_(i+1), η = step_size/(2·sigma_min²) = {eta:.4g}: with "
                f"num_inference_steps={num_inference_steps} levels, `step_size` must be in "
                f"[{2 * self.config.sigma_min**2 * (1 - ratio):.4g}, {2 * self.config.sigma_min**2 * (1 + ratio):.4g}]"
                f"; got {self.config.step_size}."
            )
        return [sampling.consistent_noise_std(sigma, next_sigma, eta) for sigma, next_sigma in pairs]

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
            `ScoreSchedulerOutput`, or the tuple `(prev_sample, prev_sample_mean, pred_original_sample)`.
        """
        index = self._begin_step(model_output, timestep, sample)
        sigma = self._sigmas[index]
        score = self.convention.score_from_output(model_output, sigma)
        pred_original = self.convention.denoised(sample, score, 1.0, sigma)
        is_denoising_step = self.config.final_denoising and index == len(self._sigmas) - 1
        if is_denoising_step:
            prev_sample = prev_mean = pred_original
        else:
            langevin_step = 0.5 * self.config.step_size * (sigma / self.config.sigma_min) ** 2
            noise = self._noise_like(sample, generator)
            noise_std = None if self._noise_stds is None else self._noise_stds[index]
            prev_sample, prev_mean = sampling.langevin_step(sample, score, langevin_step, noise, noise_std)
        if not return_dict:
            return prev_sample, prev_mean, pred_original
        return ScoreSchedulerOutput(prev_sample=prev_sample, prev_sample_mean=prev_mean, pred_original_sample=pred_original)
