"""SDE-DPM-Solver++: the reverse-time SDE solved as an exponential integrator in log σ̄ (Lu et al., 2022,
https://arxiv.org/abs/2211.01095), for VE, VP and sub-VP models."""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
# Diffusers' pipeline loader finds how to load a component from another package by looking its base class names
# up in the component's own module, so the scheduler modules must expose `SchedulerMixin`.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

from .. import sampling
from ..checks import check_int, check_number
from .scheduling_utils import (
    SDE_TYPES,
    TIME_SPACINGS,
    BetaSchedule,
    MultistepHistory,
    PredictionType,
    ScheduleGrid,
    ScoreSchedulerMixin,
    ScoreSchedulerOutput,
    SDEType,
    TimeSpacing,
    TimestepType,
)


class SDEDPMSolverScheduler(ScoreSchedulerMixin, ConfigMixin):
    """Stochastic sampler of the reverse-time SDE with one model evaluation per step, VE, VP and sub-VP alike.

    In the scale-free variables x̄ = x/α_t, σ̄ = σ_t/α_t, each step from σ̄_i to σ̄_{i+1} = σ̄_i·e^{−h} is

        x̄ ← e^{−(1+η)h}·x̄ + (1 − e^{−(1+η)h})·D_i + σ̄_{i+1}·√(1 − e^{−2ηh})·z,

    with D_i = x̂₀_i (`solver_order=1`, which with η = 1 is ancestral sampling: a draw from the Gaussian posterior
    q(x_{i+1} | x_i, x̂₀)) or DPM-Solver++(2M)'s x̂₀_i + (x̂₀_i − x̂₀_{i−1})/(2r_i), r_i = h_{i−1}/h_i (the default,
    second order in the drift). η scales the noise: 1 solves the reverse SDE, 0 is the probability-flow ODE; each
    step's η is set from `eta` and the grid as below.
    The grid 1 = t_0 > … > t_{n−1} = ε follows `time_spacing` as in `ProbabilityFlowScheduler`, and a last step
    to σ̄ = 0 returns x̂₀.

    Unlike the deterministic flow, a step at η = 1 replaces a share 1 − e^{−2h} of the sample's noise with fresh
    noise. That alone does not forget the prior's mismatch with p_T: x_T ~ N(0, σ_max²I) misses p_T's mean, the data's,
    and the reverse SDE shrinks that offset only by ≈ (s² + σ_t²)/(s² + σ_max²) by time t (data spread s), still
    far from 0 where the modes separate when the data's mean is large against σ_max (images in [0, 1]). With
    `forget_prior` (the default) the first step is taken with η = ∞, x̄₁ = x̂₀(x_T) + σ̄₁·z: x_T holds no information
    but its offset, and x̂₀(x_T) at σ_max is the data's mean to within (s/σ_max)², so the chain starts from p_T's
    mean at no extra evaluation and with no noise range to set from the data's scale.

    Every other step's noise follows the grid: step i takes η_i = `sampling.sde_noise_scale`'s min(η, h*/h_i),
    h* = −½·log(1 − `max_noise_refresh`), so that no step replaces more than a share `max_noise_refresh` of the
    sample's noise variance (a long step's stochastic error outweighs what its fresh noise forgets), and η_i = 0
    below σ̄ = `s_tmin`, by default the geometric middle √(σ̄_ε·σ̄_T) of the scheduler's range: mode weights are set at large σ̄, where later steps shrink a noisy step's error away, while below it the noise's
    error shows as spread the remaining steps keep. So the fewer the steps, the less noise each takes (a share
    `max_noise_refresh` at most), and with steps of h ≤ h* the upper half of the range is the reverse SDE itself;
    the lower half is always the probability-flow ODE.

    Model evaluations: n, one per entry of `timesteps`.

    Args:
        num_train_timesteps (`int`, defaults to 1000): N, the `"discrete"` timestep scale.
        sde_type (`str`, defaults to `"ve"`): `"ve"`, `"vp"` or `"subvp"`.
        solver_order (`int`, defaults to 2): 1 or 2.
        eta (`float`, defaults to 1.0): the noise scale η ∈ [0, 1], the largest η_i: 1 solves the reverse SDE, 0 the
            probability-flow ODE after the prior-forgetting first step (registry name `"pf-dpmpp-2m-forget-prior"`).
        max_noise_refresh (`float`, defaults to 0.4): the largest share of the sample's noise variance one step
            replaces with fresh noise, in (0, 1]; 1 leaves η_i = η.
        s_tmin (`float`, *optional*): the σ̄ below which steps take no noise (the role of `ProbabilityFlowScheduler`'s
            `s_tmin` for its churn, so `from_config` carries a value set there); defaults to √(σ̄_ε·σ̄_T), and 0
            adds noise down to the end. `max_noise_refresh=1, s_tmin=0` is SDE-DPM-Solver++ with a constant η, as in
            k-diffusion and Diffusers.
        forget_prior (`bool`, defaults to `True`): take the first step with η = ∞ (see above).
        time_spacing (`str`, defaults to `"log_sigma"`): `"uniform"` in t, `"log_sigma"` or `"karras"` (ρ = 7).
        sigma_min, sigma_max, beta_min, beta_max, beta_schedule, beta_start, beta_end, trained_betas,
        sampling_eps, prediction_type, timestep_type: as for `PredictorCorrectorScheduler`.
    """

    _supported_sde_types = SDE_TYPES

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        sde_type: SDEType = "ve",
        solver_order: int = 2,
        eta: float = 1.0,
        max_noise_refresh: float = 0.4,
        s_tmin: float | None = None,
        forget_prior: bool = True,
        time_spacing: TimeSpacing = "log_sigma",
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
        check_int("solver_order", solver_order, 1)
        if solver_order > 2:
            raise ValueError(f"`solver_order` must be 1 or 2; got {solver_order}.")
        check_number("eta", eta, 0, 1)
        check_number("max_noise_refresh", max_noise_refresh, 0, 1, low_open=True)
        check_number("s_tmin", s_tmin, 0, allow_none=True, none_means="for √(σ̄_ε·σ̄_T)")
        self._configure(dict(self.config), {"time_spacing": TIME_SPACINGS})
        if s_tmin is None:
            s_tmin = math.sqrt(math.prod(float(ratio) for ratio in self.convention.noise_to_signal_range()))
        self._noise_min_ratio = s_tmin

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[float] | torch.Tensor | None = None,
        sigmas: list[float] | torch.Tensor | None = None,
    ) -> None:
        """Set the grid of `num_inference_steps` time points (spaced as `time_spacing` says), or a custom one, and
        reset the step state.

        Args:
            num_inference_steps (`int`, *optional*): number n of time points; the model runs n times.
            device (`str` or `torch.device`, *optional*): where `timesteps` live.
            timesteps (`list[float]`, *optional*), sigmas (`list[float]`, *optional*): custom time points instead of
                `num_inference_steps`, as model timesteps or as noise levels σ̄ = σ_t/α_t (`_run_times`).
        """
        times = self._run_times(
            num_inference_steps, timesteps, sigmas,
            lambda n: self.convention.time_grid(n, self.config.time_spacing),
        )
        num_inference_steps = len(times)
        alphas, sigmas = self.sde.mean_coeff(times), self.sde.marginal_std(times)
        self._alphas = torch.cat([alphas, alphas.new_ones(1)]).tolist()
        self._sigmas = sigmas.tolist()
        # σ̄ at each point, and the last step's target σ̄ = 0.
        self._ratios = torch.cat([sigmas / alphas, sigmas.new_zeros(1)]).tolist()
        self._denoised_history = MultistepHistory()
        next_times = torch.cat([times[1:], times.new_zeros(1)])
        lands_on_data = torch.arange(num_inference_steps) == num_inference_steps - 1
        grid = ScheduleGrid.build(self.convention, times, next_times, lands_on_data)
        self._reset_timesteps(self.timestep_for_time(times), num_inference_steps, device, grid)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> ScoreSchedulerOutput | tuple:
        """One SDE-DPM-Solver++ step from this entry's time point to the next.

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
        i = self._begin_step(model_output, timestep, sample, generator)
        alpha, sigma, ratio, next_ratio = self._alphas[i], self._sigmas[i], self._ratios[i], self._ratios[i + 1]
        score = self.convention.score_from_output(model_output, sigma)
        pred_original = self.convention.denoised(sample, score, alpha, sigma)
        target = self._denoised_history.combine(pred_original, i, self.config.solver_order, self._ratios, self._ratios)
        scaled = sample if alpha == 1 else sample / alpha
        if i == 0 and self.config.forget_prior:
            eta = math.inf
        else:
            eta = sampling.sde_noise_scale(
                self.config.eta, ratio, next_ratio, self.config.max_noise_refresh, self._noise_min_ratio
            )
        scaled_mean, std = sampling.sde_dpmpp_step(scaled, target, ratio, next_ratio, eta)
        next_alpha = self._alphas[i + 1]
        prev_mean = scaled_mean if next_alpha == 1 else scaled_mean * next_alpha
        prev_sample = prev_mean
        if std > 0:
            prev_sample = sampling.add_noise(prev_mean, self._noise_like(sample, generator), next_alpha * std)
        return self._step_output(i, prev_sample, prev_mean, pred_original, return_dict)
