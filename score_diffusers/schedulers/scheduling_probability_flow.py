"""Sampling with the probability-flow ODE (Song et al., 2021, https://arxiv.org/abs/2011.13456), integrated in the
scale-free variables of Karras et al. (2022, https://arxiv.org/abs/2206.00364), deterministic or with their churn."""

from __future__ import annotations

import math
from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
# Diffusers' pipeline loader finds how to load a component from another package by looking its base class names
# up in the component's own module, so the scheduler modules must expose `SchedulerMixin`.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

from .. import sampling
from ..checks import check_number
from .scheduling_utils import (
    SDE_TYPES,
    TIME_SPACINGS,
    MultistepHistory,
    BetaSchedule,
    PredictionType,
    ScheduleGrid,
    ScoreSchedulerMixin,
    ScoreSchedulerOutput,
    SDEType,
    TimeSpacing,
    TimestepType,
)

Solver = Literal["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"]
SOLVERS: tuple[str, ...] = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")
# Orders of the multistep predictors: how many past x̂₀ (plus the current one) a step combines (UniPC's is 2M).
MULTISTEP_ORDERS: dict[str, int] = {"dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 2}


class ProbabilityFlowScheduler(ScoreSchedulerMixin, ConfigMixin):
    """Probability-flow ODE sampler for VE, VP and sub-VP SDEs, with Euler, Heun, DPM-Solver++(2M / 3M) or UniPC steps.

    The ODE dx/dt = f(t)x − ½g(t)²∇log p_t(x) has the SDE's marginals. With x̄ = x/α_t and σ̄ = σ_t/α_t it
    becomes dx̄/dσ̄ = (x̄ − x̂₀)/σ̄, x̂₀ = (x + σ_t²·score)/α_t the Tweedie estimate, which the solvers integrate:
    Euler there is DDIM (η = 0), Heun is Karras et al.'s second-order sampler. `"dpmpp_2m"` is the second-order
    multistep DPM-Solver++(2M) of Lu et al. (2022, https://arxiv.org/abs/2211.01095): the Euler step with x̂₀_i
    replaced by x̂₀_i + (x̂₀_i − x̂₀_{i−1})/(2r_i), where r_i = h_{i−1}/h_i and h_i = log(σ̄_i/σ̄_{i+1}); its first
    step has no history and stays Euler. `"dpmpp_3m"` is the third-order DPM-Solver++(3M) (the same paper), which
    adds x̂₀_{i−2} (`sampling.dpmpp_3m_denoised`, whose second difference is weighted for a local error O(h⁴)); it
    starts with one Euler and one 2M step. `"unipc"` is UniPC-2 with bh2 and data prediction (Zhao et al., 2023,
    https://arxiv.org/abs/2302.04867): the 2M step (UniP-2), then, at the start of the next step, UniC's correction of
    the point it reached with the x̂₀ evaluated there (`sampling.unic_corrected`), which makes it third order at no
    extra evaluation. As in Diffusers' `UniPCMultistepScheduler`, `prev_sample` is the predictor's result, the
    correction is applied inside the next `step` (whose `pred_original_sample` is the uncorrected point's x̂₀), and
    the sample from the last step (to σ̄ = 0) is not corrected. Unlike it, the last step keeps the correction of
    its start: it returns x̂₀ + (x̄_c − x̄), x̄_c the corrected x̄ (DDIM's step x̄_c − σ̄·ε̂ with ε̂ = (x̄ − x̂₀)/σ̄
    of the evaluated point), where Diffusers returns x̂₀ of the uncorrected point. The grid
    1 = t_0 > … > t_{n−1} = ε is followed by a last Euler step to σ̄ = 0, which returns x̂₀ (plus that correction).

    Model evaluations: n for `"euler"`, `"dpmpp_2m"`, `"dpmpp_3m"` and `"unipc"`; 2n − 1 for `"heun"` (two per
    interval, one for the last step), laid out in `timesteps` as t_0, t_1, t_1, t_2, t_2, …, t_{n−1}, t_{n−1} like
    Diffusers' `HeunDiscreteScheduler`.

    With `s_churn` > 0 the sampler becomes the stochastic one of Karras et al. (Algorithm 2), at no extra model
    evaluation: each grid point i ≥ 1 with s_tmin ≤ σ̄_i ≤ s_tmax is raised to σ̄̂_i = min((1 + γ)σ̄_i, σ̄_0),
    γ = min(s_churn/n, √2 − 1), by adding fresh noise at the end of the step that reaches it,
    x̄ ← x̄ + s_noise·√(σ̄̂_i² − σ̄_i²)·z, and the next step starts from σ̄̂_i (its `timesteps` entry is t(σ̄̂_i);
    Heun's layout becomes t_0, t_1, t̂_1, t_2, t̂_2, …). Unlike Karras et al., the first point is never raised and no
    point goes above σ̄_0: the model is never asked for a noise level beyond its range.
    Each such round shrinks by (1 + γ) what the ODE cannot: the prior's mismatch with p_T, which a deterministic
    flow carries into the samples. Use it where that mismatch is the error, when σ_max is not far above the data's
    diameter (its largest pairwise distance), and only at σ̄ where p_σ̄ is still nearly Gaussian: s_tmin above
    about half the diameter. A DPM-Solver++(2M) step that starts from a raised point is first-order, and UniPC does
    not correct a raised point.

    Args:
        num_train_timesteps (`int`, defaults to 1000): N, the `"discrete"` timestep scale.
        sde_type (`str`, defaults to `"ve"`): `"ve"`, `"vp"` or `"subvp"`.
        solver (`str`, defaults to `"heun"`): `"euler"`, `"heun"`, `"dpmpp_2m"`, `"dpmpp_3m"` or `"unipc"`.
        time_spacing (`str`, defaults to `"karras"`): the grid in t: `"uniform"` in t, `"log_sigma"` uniform in
            log σ̄, or `"karras"` (σ̄ spaced with ρ = 7).
        s_churn (`float`, defaults to 0.0): Karras et al.'s S_churn; 0 keeps the sampler deterministic.
        s_tmin (`float`, defaults to 0.0), s_tmax (`float`, *optional*): the σ̄ range where noise is added (no upper
            bound by default).
        s_noise (`float`, defaults to 1.0): scale of the added noise (Karras et al.'s S_noise).
        sigma_min, sigma_max, beta_min, beta_max, beta_schedule, beta_start, beta_end, trained_betas,
        sampling_eps, prediction_type, timestep_type: as for `PredictorCorrectorScheduler`.
    """

    _supported_sde_types = SDE_TYPES

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        sde_type: SDEType = "ve",
        solver: Solver = "heun",
        time_spacing: TimeSpacing = "karras",
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float | None = None,
        s_noise: float = 1.0,
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
        self._configure(dict(self.config), {"solver": SOLVERS, "time_spacing": TIME_SPACINGS})
        for argument, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
            check_number(argument, value, 0, math.inf, high_open=True)
        check_number("s_tmax", s_tmax, s_tmin, math.inf, allow_none=True, none_means="for no upper bound")

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
            num_inference_steps (`int`, *optional*): number n of time points; 2n − 1 model calls for Heun, n otherwise.
            device (`str` or `torch.device`, *optional*): where `timesteps` live.
            timesteps (`list[float]`, *optional*), sigmas (`list[float]`, *optional*): custom time points instead of
                `num_inference_steps`, as model timesteps or as noise levels σ̄ = σ_t/α_t (`_run_times`).
        """
        times = self._run_times(
            num_inference_steps, timesteps, sigmas,
            lambda n: self.convention.time_grid(n, self.config.time_spacing),
        )
        num_inference_steps = len(times)
        ratios = self.sde.noise_to_signal(times)
        config = self.config
        start_ratios = sampling.churned_ratios(ratios, config.s_churn, config.s_tmin, config.s_tmax)
        raised = start_ratios > ratios
        start_times = times.clone()
        start_times[raised] = self.sde.time_from_noise_to_signal(start_ratios[raised])
        start_times[start_ratios == ratios[0]] = times[0]
        # x̄ = x/α and σ̄ = σ/α where each interval starts (a grid point, raised where the churn adds noise) ...
        self._start_alphas = self.sde.mean_coeff(start_times).tolist()
        self._start_sigmas = self.sde.marginal_std(start_times).tolist()
        self._start_ratios = start_ratios.tolist()
        # ... and at the grid points the ODE reaches; the appended 0 is the last step's target σ̄ = 0 (α = 1).
        alphas = self.sde.mean_coeff(times)
        self._alphas = torch.cat([alphas, alphas.new_ones(1)]).tolist()
        self._sigmas = self.sde.marginal_std(times).tolist()
        self._ratios = torch.cat([ratios, ratios.new_zeros(1)]).tolist()
        last = num_inference_steps - 1
        if self.config.solver == "heun":
            # (kind, interval): "predict" is Heun's Euler half from the start of interval i, "correct" its second
            # evaluation at t_{i+1}.
            self._plan = [(kind, i) for i in range(last) for kind in ("predict", "correct")] + [("euler", last)]
        else:
            self._plan = [("euler", i) for i in range(num_inference_steps)]
        self._heun_state: tuple[torch.Tensor, torch.Tensor] | None = None
        # x̂₀ at the starts of the steps since the last raised point (multistep solvers).
        self._denoised_history = MultistepHistory()
        model_times = torch.stack([times[i + 1] if kind == "correct" else start_times[i] for kind, i in self._plan])
        # Heun's first half lands on the grid point t_{i+1}; every other entry lands where the next interval starts
        # (raised by the churn), or on the data after the last point.
        next_times = torch.stack(
            [times[i + 1] if kind == "predict" else start_times[min(i + 1, last)] for kind, i in self._plan]
        )
        lands_on_data = torch.tensor([kind != "predict" and i == last for kind, i in self._plan])
        grid = ScheduleGrid.build(self.convention, model_times, next_times, lands_on_data)
        self._reset_timesteps(self.timestep_for_time(model_times), num_inference_steps, device, grid)

    @property
    def order(self) -> int:
        """Entries of `timesteps` per interval: 2 for Heun (its second evaluation is an entry of its own, as in
        Diffusers' `HeunDiscreteScheduler`), 1 otherwise. A run may begin at any multiple of it."""
        return 2 if self.config.solver == "heun" else 1

    def _can_begin_at(self, index: int) -> bool:
        # Heun's second evaluation needs the first half of its interval.
        return self._plan[index][0] != "correct"

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> ScoreSchedulerOutput | tuple:
        """Advance the ODE by the Euler step or Heun half-step that this entry of `timesteps` stands for, then add
        the churn's noise if the next interval starts from a raised point.

        Args:
            model_output (`torch.Tensor` of shape `(batch, *dims)`): the model's score or ε at (`sample`, `timestep`).
            timestep (`float` or `torch.Tensor`): the current entry of `timesteps`.
            sample (`torch.Tensor` of shape `(batch, *dims)`): the current x_t.
            generator (`torch.Generator` or list of them, *optional*): source of the noise `s_churn` adds (the ODE
                itself is deterministic).
            return_dict (`bool`, defaults to `True`): return a `ScoreSchedulerOutput` rather than a tuple.

        Returns:
            `ScoreSchedulerOutput`, or the tuple `(prev_sample, pred_original_sample, prev_sample_mean)`.
        """
        index = self._begin_step(model_output, timestep, sample, generator)
        kind, i = self._plan[index]
        if kind == "correct":
            alpha, sigma, ratio = self._alphas[i + 1], self._sigmas[i + 1], self._ratios[i + 1]
        else:
            alpha, sigma, ratio = self._start_alphas[i], self._start_sigmas[i], self._start_ratios[i]
        score = self.convention.score_from_output(model_output, sigma)
        pred_original = self.convention.denoised(sample, score, alpha, sigma)
        scaled = sample if alpha == 1 else sample / alpha
        if self.config.solver in MULTISTEP_ORDERS:
            start, target = self._multistep(scaled, pred_original, i)
        else:
            start, target = scaled, pred_original
        # UniC's corrected start would drop out of the last step (to σ̄ = 0: x̄ + (0 − σ̄)(x̄ − x̂₀)/σ̄ = x̂₀); there the
        # derivative is taken at the evaluated point instead, so the step returns x̄_c − (x̄ − x̂₀) = x̂₀ + (x̄_c − x̄).
        last = self._ratios[i + 1] == 0
        derivative = sampling.ode_derivative(scaled if last else start, target, ratio)
        step = self._ratios[i + 1] - self._start_ratios[i]
        if kind == "correct":
            scaled_start, start_derivative = self._heun_state
            self._heun_state = None
            scaled_next = sampling.heun_step(scaled_start, start_derivative, derivative, step)
        else:
            scaled_next = sampling.euler_step(start, derivative, step)
            if kind == "predict":
                self._heun_state = (start, derivative)
        # Heun's first half and the last step land on the grid; other steps land where the next interval starts.
        lands_on_grid = kind == "predict" or i + 1 == len(self._start_ratios)
        next_alpha = self._alphas[i + 1] if lands_on_grid else self._start_alphas[i + 1]
        prev_mean = scaled_next if next_alpha == 1 else scaled_next.mul_(next_alpha)
        prev_sample = prev_mean
        if not lands_on_grid and self._start_ratios[i + 1] > self._ratios[i + 1]:
            added_std = sampling.churn_noise_std(self._start_ratios[i + 1], self._ratios[i + 1], self.config.s_noise)
            prev_sample = sampling.add_noise(prev_mean, self._noise_like(sample, generator), next_alpha * added_std)
        return self._step_output(index, prev_sample, prev_mean, pred_original, return_dict)

    def _multistep(self, scaled: torch.Tensor, denoised: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The multistep solvers' start x̄ (UniC-corrected for `"unipc"`, `MultistepHistory.correct`) and x̂₀ for the
        Euler step from point i (`MultistepHistory.combine`); a raised start breaks the history."""
        history = self._denoised_history
        if self._start_ratios[i] > self._ratios[i]:
            history.clear()
        if self.config.solver == "unipc":
            scaled = history.correct(scaled, denoised, i, self._start_ratios, self._ratios)
        order = MULTISTEP_ORDERS[self.config.solver]
        return scaled, history.combine(denoised, i, order, self._start_ratios, self._ratios)
