"""Predictor-corrector sampling of the reverse-time SDE (Song et al., 2021, https://arxiv.org/abs/2011.13456)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
# Diffusers' pipeline loader finds how to load a component from another package by looking its base class names
# up in the component's own module, so the scheduler modules must expose `SchedulerMixin`.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

from .. import sampling
from ..sampling import langevin
from ..checks import check_int, check_number
from .scheduling_utils import (
    SDE_TYPES,
    BetaSchedule,
    PredictionType,
    ScheduleGrid,
    ScoreSchedulerMixin,
    ScoreSchedulerOutput,
    SDEType,
    TimestepType,
)

Predictor = Literal["euler_maruyama", "reverse_diffusion", "ancestral"]
Corrector = Literal["langevin", "none"]
CorrectorNorm = langevin.CorrectorNorm
PREDICTORS: tuple[str, ...] = ("euler_maruyama", "reverse_diffusion", "ancestral")
CORRECTORS: tuple[str, ...] = ("langevin", "none")
CORRECTOR_NORMS: tuple[str, ...] = ("sample_corrected", "sample", "batch")


class PredictorCorrectorScheduler(ScoreSchedulerMixin, ConfigMixin):
    """Predictor-corrector (PC) sampler for VE, VP and sub-VP SDEs.

    On the time grid 1 = t_0 > … > t_{n−1} = ε (uniform), each time point gets `correct_steps` Langevin corrector
    steps at fixed t, then one predictor step to t_{i+1}. The last predictor step lands on the data (σ = 0) and adds
    no noise. Every model evaluation is one entry of `timesteps`, so the scheduler runs in the plain Diffusers loop
    and `len(timesteps) = n·(1 + correct_steps)`.

    Predictors, with (a, b) the forward transition x_t = a·x_s + b·z from s = t_{i+1} to t = t_i
    (a = α_t/α_s, b² = σ_t² − a²σ_s²) and s_θ the score at (x, t):

    - ``"euler_maruyama"``: x ← x + (f(t)x − g(t)²s_θ)Δt + g(t)√|Δt|·z, Δt = t_{i+1} − t_i.
    - ``"reverse_diffusion"``: x ← x − (a − 1)x + b²s_θ + b·z (score_sde's reverse diffusion; Diffusers'
      `ScoreSdeVeScheduler.step_pred` for VE).
    - ``"ancestral"`` (the default): a draw from the Gaussian posterior q(x_s | x_t, x̂₀): mean (x + b²s_θ)/a, std
      b·σ_s/σ_t (NCSN ancestral for VE, DDPM with `variance_type="fixed_small"` for VP). Reverse diffusion adds
      the full b² of variance where the posterior adds b²σ_s²/σ_t², so on coarse grids it overshoots the spread;
      with exact scores on a 64-dimensional mixture at 200 evaluations, ancestral + Langevin is closer on all three
      figures of `benchmarks/bench_schedulers.py` (sliced W2, mode weights, log-density gap).

    Corrector ``"langevin"``: x ← x + η·s_θ + √(2η)·z with η = 2α_i(snr_i·‖z‖/‖s_θ‖)², α_i = 1 for VE and
    exp(−β(t)/N) ≈ 1 − β_i for VP and sub-VP. snr_i is `snr` for t_i ≤ `snr_ramp_start` and rises linearly in t
    to `prior_snr` at t = 1; `prior_snr=None` keeps it at `snr` throughout, as score_sde and Diffusers'
    `ScoreSdeVeScheduler` do. The ramp is there to forget the prior: x_T ~ N(0, σ_max²I) is not p_T, whose mean is
    the data's, and the reverse SDE alone shrinks that offset only by ≈ (s² + σ_t²)/(s² + σ_max²) by time t (data
    spread s), still far from 0 where the modes of the data separate. On a Gaussian, a Langevin step shrinks the
    offset by 1 − 2·snr² and widens the chain's stationary variance by about 1/(1 − snr²); every later step shrinks
    that excess again, by ≈ ((s² + σ_s²)/(s² + σ_t²))² from t to s, so a large snr costs nothing near t = 1 and a
    lot near the data (the README's scheduler table measures it).

    The corrector's norms (`corrector_norm`): `"sample_corrected"` (the default) sizes each sample's step from its
    own score alone, η = 2α_i·snr_i²·(d − 2)/‖s_θ‖² with d the sample's number of elements, and raises the drift
    to (1 + 2/d)·η·s_θ. On a Gaussian level N(μ, vI) that η has the mean of the batch-averaged step, 2α_i·snr_i²·v,
    and the factor undoes the bias of a step that varies with the sample (η ∝ ‖s_θ‖^(-2) alone would leave the chain
    (d + 2)/d too wide in E‖x − μ‖²; `sampling.langevin.langevin_corrector_step`). A generator per sample then makes
    each sample reproducible on its own. Samples of fewer than 8 elements (`MIN_SAMPLE_CORRECTED_DIM` there) are
    too small to read the level's variance from: they take η = 2α_i·snr_i²·σ_i², stable but weaker near the data.
    `"batch"` averages the norms over the batch, as score_sde and Diffusers' `ScoreSdeVeScheduler.step_correct` do,
    so a sample's step depends on its batch. `"sample"` takes both norms per
    sample uncorrected, which in low dimension biases the chain: a sample far out has a large ‖s_θ‖ and so a small
    step, and the tails come out too heavy.

    Args:
        num_train_timesteps (`int`, defaults to 1000):
            N, the training grid length; sets the `"discrete"` timestep scale and the VP corrector's α_i.
        sde_type (`str`, defaults to `"ve"`): `"ve"`, `"vp"` or `"subvp"`.
        predictor (`str`, defaults to `"ancestral"`): `"euler_maruyama"`, `"reverse_diffusion"` or `"ancestral"`.
        corrector (`str`, defaults to `"langevin"`): `"langevin"` or `"none"`.
        snr (`float`, defaults to 0.16): signal-to-noise ratio of the Langevin corrector for t ≤ `snr_ramp_start`.
        prior_snr (`float`, *optional*, defaults to 0.5): the corrector's snr at t = 1, reached linearly from `snr` at
            `snr_ramp_start`; `None` keeps `snr` at every time (score_sde's sampler).
        snr_ramp_start (`float`, defaults to 0.8): the time in [0, 1) where the ramp to `prior_snr` begins.
        correct_steps (`int`, defaults to 1): corrector steps per time point (0 turns the corrector off).
        corrector_norm (`str`, defaults to `"sample_corrected"`): `"sample_corrected"`, `"batch"` or `"sample"` (see
            above).
        sigma_min (`float`, defaults to 0.01), sigma_max (`float`, defaults to 50.0): the VE noise range.
        beta_min (`float`, defaults to 0.1), beta_max (`float`, defaults to 20.0): the continuous linear VP schedule.
        beta_schedule (`str`, defaults to `"continuous_linear"`): `"continuous_linear"` uses `beta_min`/`beta_max`;
            `"linear"`, `"scaled_linear"`, `"squaredcos_cap_v2"`, `"sigmoid"` use Diffusers' DDPM ᾱ table.
        beta_start (`float`, defaults to 1e-4), beta_end (`float`, defaults to 0.02): DDPM table endpoints.
        trained_betas (`list[float]`, *optional*): an explicit DDPM β table.
        sampling_eps (`float`, *optional*): the last time point ε (1e-5 for VE, 1e-3 for VP and sub-VP when unset).
        prediction_type (`str`, defaults to `"score"`): `"score"` (the model returns ∇log p) or `"epsilon"`.
        timestep_type (`str`, defaults to `"continuous"`): `"sigma"`, `"discrete"` or `"continuous"`; see
            `score_diffusers.conventions`.
    """

    _supported_sde_types = SDE_TYPES

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        sde_type: SDEType = "ve",
        predictor: Predictor = "ancestral",
        corrector: Corrector = "langevin",
        snr: float = 0.16,
        prior_snr: float | None = 0.5,
        snr_ramp_start: float = 0.8,
        correct_steps: int = 1,
        corrector_norm: CorrectorNorm = "sample_corrected",
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        beta_schedule: BetaSchedule = "continuous_linear",
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        trained_betas: list[float] | None = None,
        sampling_eps: float | None = None,
        prediction_type: PredictionType = "score",
        timestep_type: TimestepType = "continuous",
    ):
        check_number("snr", snr, 0, math.inf, low_open=True, high_open=True)
        check_number(
            "prior_snr", prior_snr, 0, math.inf, low_open=True, high_open=True, allow_none=True,
            none_means="for a constant snr",
        )
        check_number("snr_ramp_start", snr_ramp_start, 0, 1, high_open=True)
        check_int("correct_steps", correct_steps, 0)
        self._configure(
            dict(self.config),
            {"predictor": PREDICTORS, "corrector": CORRECTORS, "corrector_norm": CORRECTOR_NORMS},
        )

    @property
    def order(self) -> int:
        """Entries of `timesteps` per time point (its corrector steps and its predictor step), so that Diffusers'
        image-to-image slicing `timesteps[t_start * order:]` starts on a time point."""
        return self.evaluations_per_time

    @property
    def evaluations_per_time(self) -> int:
        """Model evaluations per time point: the corrector steps plus one predictor step."""
        corrector_steps = self.config.correct_steps if self.config.corrector == "langevin" else 0
        return corrector_steps + 1

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[float] | torch.Tensor | None = None,
        sigmas: list[float] | torch.Tensor | None = None,
    ) -> None:
        """Set the time grid t_i = linspace(1, ε, `num_inference_steps`), or a custom one, and reset the step state.

        Args:
            num_inference_steps (`int`, *optional*): number n of predictor steps; the model runs n·(1 + correct_steps)
                times.
            device (`str` or `torch.device`, *optional*): where `timesteps` live.
            timesteps (`list[float]`, *optional*), sigmas (`list[float]`, *optional*): custom time points instead of
                `num_inference_steps`, as model timesteps or as noise levels σ̄ = σ_t/α_t (`_run_times`).
        """
        times = self._run_times(
            num_inference_steps, timesteps, sigmas,
            lambda n: torch.linspace(self.sde.T, self.sampling_eps, n, dtype=torch.float64),
        )
        num_inference_steps = len(times)
        next_times = torch.cat([times[1:], times.new_zeros(1)])
        # The last step lands on the data: α = 1, σ = 0.
        alphas = torch.cat([self.sde.mean_coeff(times), times.new_ones(1)])
        sigmas = torch.cat([self.sde.marginal_std(times), times.new_zeros(1)])
        self._alphas, self._sigmas = alphas.tolist(), sigmas.tolist()
        self._drift_coeffs = self.sde.drift_coeff(times).tolist()
        self._diffusions = self.sde.diffusion(times).tolist()
        self._time_deltas = (next_times - times).tolist()
        a, b = self.sde.transition_coeffs(alphas[:-1], sigmas[:-1], alphas[1:], sigmas[1:])
        self._transition_a, self._transition_b = a.tolist(), b.tolist()
        if self.config.sde_type == "ve":
            self._corrector_alphas = [1.0] * num_inference_steps
        else:
            # 1 − β_i of the discrete chain, as exp(−β(t)/N): equal to first order, and it stays in (0, 1] where a
            # DDPM table's β(t) is large (squaredcos_cap_v2 clips β_i at 0.999, so 1 − β(t)/N would turn negative).
            self._corrector_alphas = torch.exp(-self.sde.beta(times) / self.config.num_train_timesteps).tolist()
        self._corrector_snrs = self._snr_schedule(times).tolist()
        # Per entry: the corrector entries of a time point stay at t_i, its predictor entry moves to t_{i+1}.
        per_entry = self.evaluations_per_time
        is_predictor = torch.arange(num_inference_steps * per_entry) % per_entry == per_entry - 1
        entry_times = times.repeat_interleave(per_entry)
        entry_next = torch.where(is_predictor, next_times.repeat_interleave(per_entry), entry_times)
        # Ancestral and reverse-diffusion steps return the data estimate at the end; Euler–Maruyama's last step is a
        # drift step to t = 0, which its grid names as such.
        ends_on_data = self.config.predictor != "euler_maruyama"
        lands_on_data = is_predictor & (torch.arange(len(entry_times)) >= len(entry_times) - per_entry) & ends_on_data
        grid = ScheduleGrid.build(self.convention, entry_times, entry_next, lands_on_data)
        self._reset_timesteps(self.timestep_for_time(entry_times), num_inference_steps, device, grid)

    def _snr_schedule(self, times: torch.Tensor) -> torch.Tensor:
        """snr_i at each time t_i: `snr` up to `snr_ramp_start`, then linear in t up to `prior_snr` at t = T."""
        snr, prior_snr, start = self.config.snr, self.config.prior_snr, self.config.snr_ramp_start
        if prior_snr is None:
            return torch.full_like(times, snr)
        ramp = ((times - start) / (self.sde.T - start)).clamp(0, 1)
        return snr + (prior_snr - snr) * ramp

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> ScoreSchedulerOutput | tuple:
        """Run the corrector or predictor step that this entry of `timesteps` stands for.

        Args:
            model_output (`torch.Tensor` of shape `(batch, *dims)`): the model's score or ε at (`sample`, `timestep`).
            timestep (`float` or `torch.Tensor`): the current entry of `timesteps`.
            sample (`torch.Tensor` of shape `(batch, *dims)`): the current x_t.
            generator (`torch.Generator` or list of them, *optional*): source of the step's noise; a list gives one
                generator per sample.
            return_dict (`bool`, defaults to `True`): return a `ScoreSchedulerOutput` rather than a tuple.

        Returns:
            `ScoreSchedulerOutput`, or the tuple `(prev_sample, pred_original_sample, prev_sample_mean)`.
        """
        index = self._begin_step(model_output, timestep, sample, generator, check_finite=False)
        i, position = divmod(index, self.evaluations_per_time)
        alpha, sigma = self._alphas[i], self._sigmas[i]
        score = self.convention.score_from_output(model_output, sigma)
        if position < self.evaluations_per_time - 1:
            # Checks the output for NaN and inf through the norms it computes anyway.
            prev_sample, prev_mean = self._langevin_correct(sample, score, index, generator)
        else:
            self._check_finite(model_output, index)
            prev_sample, prev_mean = self._predict(sample, score, i, generator)
        pred_original = self.convention.denoised(sample, score, alpha, sigma)
        return self._step_output(index, prev_sample, prev_mean, pred_original, return_dict)

    def _langevin_correct(
        self, sample: torch.Tensor, score: torch.Tensor, index: int, generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Langevin step η = 2·α_i·(snr_i·‖z‖/‖score‖)² at entry `index` of `timesteps`, its norms as
        `corrector_norm` says."""
        noise = self._noise_like(sample, generator)
        score_norm = sampling.per_sample_norm(score)
        self._check_finite(score_norm, index)
        i = index // self.evaluations_per_time
        return langevin.langevin_corrector_step(
            sample, score, noise, score_norm, self._corrector_snrs[i], self._corrector_alphas[i],
            self.config.corrector_norm, self._sigmas[i],
        )

    def _predict(self, sample: torch.Tensor, score: torch.Tensor, i: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
        predictor = self.config.predictor
        a, b = self._transition_a[i], self._transition_b[i]
        if predictor == "euler_maruyama":
            mean, std = sampling.euler_maruyama_step(
                sample, score, self._drift_coeffs[i], self._diffusions[i], self._time_deltas[i]
            )
        elif predictor == "reverse_diffusion":
            mean, std = sampling.reverse_diffusion_step(sample, score, a, b)
        else:
            mean, std = sampling.ancestral_step(sample, score, a, b, self._sigmas[i], self._sigmas[i + 1])
        if i == self.num_inference_steps - 1:
            return mean, mean
        return sampling.add_noise(mean, self._noise_like(sample, generator), std), mean
