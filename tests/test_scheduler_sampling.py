"""Each scheduler, fed the exact score (or the exact ε) of a 16-dimensional Gaussian mixture, reproduces the mixture:
mode weights, per-component spread and sliced Wasserstein distance near the noise floor of true samples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from helpers import DATA_DIM, make_generator, sample_with_seed
from diffusers import DDPMScheduler, UniPCMultistepScheduler

from score_diffusers import (
    AnnealedLangevinScheduler,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    SDEDPMSolverScheduler,
    sampling,
)
from score_diffusers.checks import SamplingError
from score_diffusers.sde import VPSDE
from score_diffusers.testing import (
    ExactScoreModel,
    GaussianMixture,
    component_spreads,
    log_density_gap,
    mode_weight_tv,
    run_loop,
    sliced_wasserstein,
)

NUM_SAMPLES = 2000
NUM_FLOOR_DRAWS = 6
# Sliced W2 between two independent true samples of 2,000 points varies by ±30% from draw to draw (the mode weights
# alone move mass between far-apart modes), so a sampler passes when it is no farther from the reference than the
# worst of NUM_FLOOR_DRAWS true samples, with this margin.
W2_MARGIN = 1.25
# Mode-weight TV of a true sample is pure multinomial noise; a sampler may be this many times its mean.
TV_MARGIN = 2.5
# Per-component RMS spread against the true s_k: a few percent (its own sampling error here is about 1%).
SPREAD_TOLERANCE = 0.06
# Mean log p_0 per dimension, reference minus samples (0 for a perfect sampler).
LOG_DENSITY_GAP_TOLERANCE = 0.08


@dataclass(frozen=True)
class NoiseFloor:
    """What independent true samples of the same size achieve against the reference."""

    reference: torch.Tensor
    worst_sliced_w2: float
    mean_mode_tv: float


def projection_generator() -> torch.Generator:
    """The same random projections for every sliced-W2 evaluation."""
    return make_generator(5)


@pytest.fixture(scope="module")
def noise_floor(mixture: GaussianMixture) -> NoiseFloor:
    reference, _ = mixture.sample(NUM_SAMPLES, make_generator(10))
    draws = [mixture.sample(NUM_SAMPLES, make_generator(100 + draw))[0] for draw in range(NUM_FLOOR_DRAWS)]
    return NoiseFloor(
        reference=reference,
        worst_sliced_w2=max(sliced_wasserstein(draw, reference, generator=projection_generator()) for draw in draws),
        mean_mode_tv=sum(mode_weight_tv(mixture, draw) for draw in draws) / NUM_FLOOR_DRAWS,
    )


def ddpm(beta_schedule: str) -> dict[str, Any]:
    return DDPMScheduler(beta_schedule=beta_schedule).config


# (scheduler, num_inference_steps). The defaults first: annealed Langevin at ≤ 1,000 evaluations and PC with its
# per-sample corrector. corrector_norm="sample" (uncorrected per-sample step sizes 2(snr·‖z‖/‖s‖)²) is left out on
# purpose: with it every component of this 16-d mixture comes out ~13% too wide at any step count (4% in 64-d), a
# property of that step-size rule, not of the implementation.
SAMPLERS = {
    "ald_defaults": (lambda: AnnealedLangevinScheduler(), 999),
    "ald_defaults_200": (lambda: AnnealedLangevinScheduler(), 200),
    "pc_ve_defaults": (lambda: PredictorCorrectorScheduler(), 100),
    "pc_vp_defaults_epsilon": (lambda: PredictorCorrectorScheduler(sde_type="vp", prediction_type="epsilon"), 100),
    "ald_ncsn": (lambda: AnnealedLangevinScheduler(consistent=False, step_size=1e-4, steps_per_level=3), 100),
    "ald_ncsn_epsilon_discrete": (
        lambda: AnnealedLangevinScheduler(
            consistent=False,
            step_size=1e-4,
            steps_per_level=3,
            prediction_type="epsilon",
            timestep_type="discrete",
            num_train_timesteps=100,
        ),
        100,
    ),
    "ald_consistent": (lambda: AnnealedLangevinScheduler(consistent=True, step_size=1e-5, steps_per_level=1), 200),
    "ald_consistent_3_steps_per_level": (lambda: AnnealedLangevinScheduler(steps_per_level=3), 300),
    "pc_ve_batch": (lambda: PredictorCorrectorScheduler(corrector_norm="batch"), 100),
    "pc_ve_ancestral_epsilon": (
        lambda: PredictorCorrectorScheduler(
            predictor="ancestral", corrector="none", prediction_type="epsilon", timestep_type="sigma"
        ),
        200,
    ),
    "pc_vp_euler_maruyama_epsilon": (
        lambda: PredictorCorrectorScheduler(
            sde_type="vp", predictor="euler_maruyama", corrector_norm="batch", prediction_type="epsilon"
        ),
        100,
    ),
    "pc_subvp_ancestral": (
        lambda: PredictorCorrectorScheduler(sde_type="subvp", predictor="ancestral", corrector_norm="batch"),
        100,
    ),
    "pc_ddpm_cosine_ancestral": (
        lambda: PredictorCorrectorScheduler.from_config(
            ddpm("squaredcos_cap_v2"), predictor="ancestral", corrector="none"
        ),
        200,
    ),
    "pf_ve_heun": (lambda: ProbabilityFlowScheduler(), 30),
    "pf_vp_heun_epsilon": (lambda: ProbabilityFlowScheduler(sde_type="vp", prediction_type="epsilon"), 30),
    "pf_vp_euler_log_sigma": (
        lambda: ProbabilityFlowScheduler(
            sde_type="vp", solver="euler", time_spacing="log_sigma", timestep_type="sigma"
        ),
        50,
    ),
    "pf_subvp_heun_uniform": (lambda: ProbabilityFlowScheduler(sde_type="subvp", time_spacing="uniform"), 30),
    "pf_ddpm_linear_heun": (lambda: ProbabilityFlowScheduler.from_config(ddpm("linear")), 30),
    "pf_ddpm_linear_unipc_log_sigma": (
        lambda: ProbabilityFlowScheduler.from_config(ddpm("linear"), solver="unipc", time_spacing="log_sigma"), 20
    ),
    "pf_ve_unipc_log_sigma": (lambda: ProbabilityFlowScheduler(solver="unipc", time_spacing="log_sigma"), 30),
    "pf_ve_dpmpp_2m": (lambda: ProbabilityFlowScheduler(solver="dpmpp_2m"), 30),
    "pf_ve_dpmpp_2m_churn": (lambda: ProbabilityFlowScheduler(solver="dpmpp_2m", s_churn=40.0, s_tmin=5.0), 30),
    "sde_dpmpp_2m_ve": (lambda: SDEDPMSolverScheduler(), 30),
    "sde_dpmpp_1_ve_sigma_epsilon": (
        lambda: SDEDPMSolverScheduler(solver_order=1, timestep_type="sigma", prediction_type="epsilon"), 150
    ),
    "sde_dpmpp_2m_ddpm_linear": (lambda: SDEDPMSolverScheduler.from_config(ddpm("linear")), 30),
    "sde_dpmpp_2m_subvp": (lambda: SDEDPMSolverScheduler(sde_type="subvp"), 50),
    "pf_vp_dpmpp_3m_epsilon": (
        lambda: ProbabilityFlowScheduler(sde_type="vp", solver="dpmpp_3m", prediction_type="epsilon"), 30
    ),
    # Karras spacing from the cosine table's huge σ̄_max is too coarse at 30 points for every solver; log σ̄ is not.
    "pf_ddpm_cosine_dpmpp_2m": (
        lambda: ProbabilityFlowScheduler.from_config(
            ddpm("squaredcos_cap_v2"), solver="dpmpp_2m", time_spacing="log_sigma"
        ),
        30,
    ),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_exact_score_sampling_reproduces_the_mixture(sampler: str, mixture: GaussianMixture, noise_floor: NoiseFloor):
    build, num_inference_steps = SAMPLERS[sampler]
    scheduler = build()
    samples = sample_with_seed(scheduler, mixture, (NUM_SAMPLES, DATA_DIM), num_inference_steps, seed=3)
    assert bool(torch.isfinite(samples).all())

    mode_tv = mode_weight_tv(mixture, samples)
    assert mode_tv <= TV_MARGIN * noise_floor.mean_mode_tv, f"mode-weight TV {mode_tv:.3f}"

    relative_spread_error = (component_spreads(mixture, samples) / mixture.stds - 1).abs()
    assert float(relative_spread_error.max()) <= SPREAD_TOLERANCE, f"spread errors {relative_spread_error.tolist()}"

    sliced_w2 = sliced_wasserstein(samples, noise_floor.reference, generator=projection_generator())
    assert sliced_w2 <= W2_MARGIN * noise_floor.worst_sliced_w2, f"sliced W2 {sliced_w2:.3f}"

    gap = log_density_gap(mixture, samples, noise_floor.reference)
    assert abs(gap) <= LOG_DENSITY_GAP_TOLERANCE, f"log-density gap {gap:.3f}"


def test_the_metrics_reject_a_wrong_sampler(mixture: GaussianMixture, noise_floor: NoiseFloor):
    """The bars above are not vacuous: true samples widened by 10%, or drawn with the wrong weights, fail them."""
    true_samples, labels = mixture.sample(NUM_SAMPLES, make_generator(50))
    widened = mixture.means[labels] + 1.1 * (true_samples - mixture.means[labels])
    assert float((component_spreads(mixture, widened) / mixture.stds - 1).abs().min()) > SPREAD_TOLERANCE
    uniform_weights = GaussianMixture(mixture.means, mixture.stds)
    wrong_weights, _ = uniform_weights.sample(NUM_SAMPLES, make_generator(51))
    assert mode_weight_tv(mixture, wrong_weights) > TV_MARGIN * noise_floor.mean_mode_tv
    collapsed = mixture.means[labels]
    collapsed_w2 = sliced_wasserstein(collapsed, noise_floor.reference, generator=projection_generator())
    assert collapsed_w2 > W2_MARGIN * noise_floor.worst_sliced_w2


def probability_flow_error(solver: str, num_inference_steps: int, sde_type: str = "ve") -> float:
    """Max error of the probability-flow sampler on N(μ, s²I) under VE (σ_min = 1e-4) or VP, on the log-σ̄ grid: in
    x̄ = x/α the ODE carries x̄_T to μ + c·√(s² + σ̄²), c = (x̄_T − μ)/√(s² + σ̄_T²), and the last step returns its
    x̂₀ at the grid's end σ̄_ε, μ + c·s²/√(s² + σ̄_ε²), so the error is the solver's own."""
    mean, std = 1.5, 0.5
    mixture = GaussianMixture(torch.full((1, 4), mean, dtype=torch.float64), std)
    noise_range = {"sigma_min": 1e-4} if sde_type == "ve" else {}
    scheduler = ProbabilityFlowScheduler(sde_type=sde_type, solver=solver, time_spacing="log_sigma", **noise_range)
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = x_T * scheduler.init_noise_sigma
    sample = run_loop(scheduler, ExactScoreModel(mixture, scheduler), x_T, num_inference_steps)
    ratio_end, ratio_T = (float(ratio) for ratio in scheduler.convention.noise_to_signal_range())
    alpha_T = float(scheduler.convention.coefficients(1.0)[0])
    spread = (x_T / alpha_T - mean) / (std**2 + ratio_T**2) ** 0.5
    exact = mean + spread * std**2 / (std**2 + ratio_end**2) ** 0.5
    return float((sample - exact).abs().max())


def test_probability_flow_solvers_converge_at_their_order():
    euler = [probability_flow_error("euler", n) for n in (40, 80)]
    multistep = [probability_flow_error("dpmpp_2m", n) for n in (40, 80)]
    assert 1.8 < euler[0] / euler[1] < 2.2, euler
    assert multistep[0] / multistep[1] > 3.5, multistep
    # At equal model evaluations (40 and 39) DPM-Solver++(2M) is far closer than Heun.
    assert multistep[0] < probability_flow_error("heun", 20) / 5


def test_dpmpp_3m_converges_at_third_order():
    """Globally on the Gaussian flow (the warm-up's Euler and 2M steps are negligible on the log-σ grid here), and
    locally: one step from exact history on x̄(σ̄) = μ + c·√(s² + σ̄²), whose x̂₀ is μ + c·s²/√(s² + σ̄²), errs by
    O(h⁴) (2M: O(h³))."""
    third = [probability_flow_error("dpmpp_3m", n) for n in (40, 80)]
    assert third[0] / third[1] > 10, third
    assert third[0] < probability_flow_error("dpmpp_2m", 40) / 5

    def local_error(step: float, order: int, ratio: float = 2.0) -> float:
        earlier, previous, target = ratio * math.exp(2 * step), ratio * math.exp(step), ratio * math.exp(-step)
        if order == 2:
            target_denoised = sampling.dpmpp_2m_denoised(flow_denoised(ratio), flow_denoised(previous), 1.0)
        else:
            target_denoised = sampling.dpmpp_3m_denoised(
                flow_denoised(ratio), flow_denoised(previous), flow_denoised(earlier), 1.0, 1.0, step
            )
        return float((flow_euler_step(ratio, target_denoised, target) - exact_flow(target)).abs())

    assert_local_orders({2: lambda step: local_error(step, 2), 3: lambda step: local_error(step, 3)})


# A solution of the probability-flow ODE of N(μ, s²) in x̄(σ̄), for the local-order tests: x̄ = μ + c·√(s² + σ̄²).
FLOW_MEAN, FLOW_SPREAD, FLOW_SCALE = 1.5, 0.5, 0.3


def exact_flow(ratio: float) -> torch.Tensor:
    return torch.tensor([FLOW_MEAN + FLOW_SCALE * math.sqrt(FLOW_SPREAD**2 + ratio**2)], dtype=torch.float64)


def flow_denoised(ratio: float, scaled: torch.Tensor | None = None) -> torch.Tensor:
    """x̂₀ = μ + (x̄ − μ)·s²/(s² + σ̄²) at x̄ = `scaled`, by default on the solution (μ + c·s²/√(s² + σ̄²))."""
    scaled = exact_flow(ratio) if scaled is None else scaled
    return FLOW_MEAN + (scaled - FLOW_MEAN) * FLOW_SPREAD**2 / (FLOW_SPREAD**2 + ratio**2)


def flow_euler_step(ratio: float, target_denoised: torch.Tensor, target: float) -> torch.Tensor:
    """The solvers' Euler step in x̄ from the solution at `ratio` to `target`, with x̂₀ replaced by `target_denoised`."""
    derivative = sampling.ode_derivative(exact_flow(ratio), target_denoised, ratio)
    return sampling.euler_step(exact_flow(ratio), derivative, target - ratio)


def assert_local_orders(local_errors: dict, steps: tuple[float, ...] = (0.1, 0.05, 0.025)) -> None:
    """Each `local_errors[p](h)` (one step of size h in log σ̄ from exact history) falls as h^{p+1} over `steps`:
    halving h divides it by 2^{p+1}."""
    bounds = {2: (7, 9), 3: (14, 18)}
    for order, local_error in local_errors.items():
        errors = [local_error(step) for step in steps]
        ratios = [errors[0] / errors[1], errors[1] / errors[2]]
        low, high = bounds[order]
        assert all(low < r < high for r in ratios), (order, ratios)


@pytest.mark.parametrize("sde_type", ["ve", "vp"])
def test_unipc_converges_at_third_order(sde_type: str):
    """Globally on the Gaussian flow: UniC's correction makes the 2M predictor third order at the same evaluations
    (ratio 8 per halving, against 2M's 4), and far closer at 80."""
    unipc = [probability_flow_error("unipc", n, sde_type) for n in (40, 80, 160)]
    assert all(6.5 < unipc[k] / unipc[k + 1] < 10 for k in range(2)), unipc
    second = [probability_flow_error("dpmpp_2m", n, sde_type) for n in (40, 80)]
    assert second[0] / second[1] < 4.5, second
    assert unipc[1] < second[1] / 3


def test_unic_correction_raises_the_local_order():
    """One 2M step from exact history at h = log(σ̄/σ̄'), then UniC's correction with the x̂₀ evaluated at the point it
    reached: the step errs by O(h⁴) instead of O(h³), for equal and unequal steps (r = 1, 0.6; at σ̄ = s, and at
    h ≤ 0.02, where h⁴ dominates: the correction leaves about 1/1000 of the predictor's error), and the trapezoidal
    correction after an Euler step by O(h³) instead of O(h²)."""

    def local_error(step: float, step_ratio: float | None, ratio: float = FLOW_SPREAD) -> float:
        target = ratio * math.exp(-step)
        if step_ratio is None:
            previous, target_denoised = None, flow_denoised(ratio)
        else:
            previous = flow_denoised(ratio * math.exp(step_ratio * step))
            target_denoised = sampling.dpmpp_2m_denoised(flow_denoised(ratio), previous, step_ratio)
        predicted = flow_euler_step(ratio, target_denoised, target)
        corrected = sampling.unic_corrected(
            predicted, flow_denoised(target, predicted), flow_denoised(ratio), previous, step, step_ratio
        )
        return float((corrected - exact_flow(target)).abs())

    assert_local_orders({2: lambda step: local_error(step, None)})
    for step_ratio in (1.0, 0.6):
        assert_local_orders({3: lambda step: local_error(step, step_ratio)}, steps=(0.02, 0.01, 0.005))


def test_unipc_matches_diffusers_unipc_on_its_grid(mixture: GaussianMixture):
    """On Diffusers' own grid (its timesteps given to `set_timesteps`, then the step to σ̄ = 0) `solver="unipc"` is
    Diffusers' `UniPCMultistepScheduler` with its defaults (bh2, order 2, x̂₀ prediction, lower order at the last
    step): the same `prev_sample` at every step but the last, to the float32 precision of Diffusers' noise levels.
    The last step differs as documented: ours adds the correction of its start, x̄_c − x̄, to Diffusers' x̂₀ (Diffusers
    keeps x_c as `last_sample`). DPM-Solver++(2M), the predictor alone, is far off."""
    config = ddpm("linear")
    x_T = torch.randn(64, DATA_DIM, generator=make_generator(4), dtype=torch.float64)

    def beside_diffusers(solver: str):
        """Both loops from x_T; the gaps between their samples after each step, their last samples, and Diffusers'
        correction of the last step's start, in x̄."""
        theirs = UniPCMultistepScheduler.from_config(config)
        theirs.set_timesteps(10)
        ours = ProbabilityFlowScheduler.from_config(config, solver=solver)
        ours.set_timesteps(timesteps=theirs.timesteps)
        torch.testing.assert_close(ours.timesteps, theirs.timesteps.float())
        model = ExactScoreModel(mixture, ours)
        sample = their_sample = x_T
        gaps = []
        for our_timestep, their_timestep in zip(ours.timesteps, theirs.timesteps):
            start = sample
            sample = ours.step(model(sample, our_timestep), our_timestep, sample).prev_sample
            their_sample = theirs.step(model(their_sample, their_timestep), their_timestep, their_sample).prev_sample
            gaps.append(float((sample - their_sample).abs().max()))
        return gaps, sample, their_sample, (theirs.last_sample - start) / float(ours.grid.alphas[-1])

    gaps, sample, their_sample, last_correction = beside_diffusers("unipc")
    assert max(gaps[:-1]) < 1e-5, gaps
    assert float(last_correction.abs().max()) > 1e-3
    torch.testing.assert_close(sample, their_sample + last_correction, rtol=0, atol=1e-5)
    predictor_gaps = beside_diffusers("dpmpp_2m")[0]
    assert min(predictor_gaps[2:]) > 1e-3, predictor_gaps


def test_churn_removes_the_prior_mismatch_the_flow_keeps():
    """On N(μ, s²I) under VE with σ_max = 10 the prior N(0, σ_max²I) misses p_T's mean by μ, and the exact flow
    carries that into the samples: their mean is off by −μ·s/√(s² + σ_max²). Karras et al.'s churn shrinks the
    offset by (1 + γ) at every raised point, and leaves the spread at s."""
    mean, std, dim, num_samples = 5.0, 0.5, 4, 8000
    mixture = GaussianMixture(torch.full((1, dim), mean, dtype=torch.float64), std)

    def sample(**churn: float) -> torch.Tensor:
        scheduler = ProbabilityFlowScheduler(sigma_max=10.0, **churn)
        return sample_with_seed(scheduler, mixture, (num_samples, dim), 40, seed=11).double()

    # The sample mean's standard error is about s/√(num_samples·dim) ≈ 0.003.
    flow = sample()
    offset = -mean * std / (std**2 + 10.0**2) ** 0.5
    assert float(flow.mean()) - mean == pytest.approx(offset, abs=0.01)
    # Raised points from σ_max down to 2s; below that the raised Heun steps' own error starts to widen the spread.
    churned = sample(s_churn=40.0, s_tmin=1.0)
    assert abs(float(churned.mean()) - mean) < 0.01 < abs(offset) / 20
    assert float(churned.std()) == pytest.approx(std, rel=0.03)


def gaussian_pc_moments(
    scheduler: PredictorCorrectorScheduler, mean: float, std: float, num_inference_steps: int
) -> tuple[float, float]:
    """Mean offset and per-coordinate variance that VE ancestral + Langevin PC leaves on N(μ, s²I), in closed form.

    Every step is linear on a Gaussian, so the per-coordinate offset δ and variance w of the samples follow
    exactly from x_T ~ N(0, σ_max²I) (δ = −μ, w = σ_max²). The batch-averaged corrector step is
    η = 2·snr_i²·(‖z‖/‖s‖)² with ‖z‖² ≈ d and ‖s‖² ≈ d(w + δ²)/v², v = s² + σ_i²; it takes δ to (1 − η/v)δ and w
    to (1 − η/v)²w + 2η. The ancestral step from σ_i to σ_{i+1} takes both by c = (s² + σ_{i+1}²)/v and adds
    (b·σ_{i+1}/σ_i)², b² = σ_i² − σ_{i+1}².
    """
    config = scheduler.config
    scheduler.set_timesteps(num_inference_steps)
    # With `timestep_type="continuous"` the model receives t itself: one entry per corrector and predictor call.
    times = scheduler.timesteps[:: scheduler.evaluations_per_time].to(torch.float64)
    sigmas = scheduler.sde.marginal_std(times).tolist() + [0.0]
    if config.prior_snr is None:
        snrs = [config.snr] * num_inference_steps
    else:
        ramp = ((times - config.snr_ramp_start) / (1 - config.snr_ramp_start)).clamp(0, 1)
        snrs = (config.snr + (config.prior_snr - config.snr) * ramp).tolist()
    offset, variance = -mean, sigmas[0] ** 2
    for sigma, next_sigma, snr in zip(sigmas, sigmas[1:], snrs):
        level_variance = std**2 + sigma**2
        step = 2 * snr**2 * level_variance**2 / (variance + offset**2)
        shrink = 1 - step / level_variance
        offset, variance = shrink * offset, shrink**2 * variance + 2 * step
        shrink = (std**2 + next_sigma**2) / level_variance
        posterior_variance = (sigma**2 - next_sigma**2) * (next_sigma / sigma) ** 2
        offset, variance = shrink * offset, shrink**2 * variance + posterior_variance
    return offset, variance


@pytest.mark.parametrize("prior_snr", [None, 0.5])
def test_predictor_corrector_moments_match_the_closed_form_on_a_gaussian(prior_snr: float | None):
    """The whole PC chain on N(μ, s²I) against `gaussian_pc_moments` (batch-averaged corrector norms): with
    score_sde's constant snr and with the default ramp to `prior_snr`, which at 10 steps already halves the offset the
    prior's missing mean leaves."""
    mean, std, dim, num_samples, num_inference_steps = 5.0, 3.0, 64, 4000, 10
    mixture = GaussianMixture(torch.full((1, dim), mean, dtype=torch.float64), std)
    scheduler = PredictorCorrectorScheduler(sigma_max=10.0, prior_snr=prior_snr, corrector_norm="batch")
    sample = sample_with_seed(scheduler, mixture, (num_samples, dim), num_inference_steps, seed=5).double()
    offset, variance = gaussian_pc_moments(scheduler, mean, std, num_inference_steps)
    # Standard errors: s/√(num_samples·dim) ≈ 0.006 for the mean, √(2/(num_samples·dim)) ≈ 0.3% for the variance.
    assert float(sample.mean()) - mean == pytest.approx(offset, abs=0.02)
    assert float(sample.var()) == pytest.approx(variance, rel=0.015)
    if prior_snr is not None:
        constant_offset, _ = gaussian_pc_moments(
            PredictorCorrectorScheduler(sigma_max=10.0, prior_snr=None, corrector_norm="batch"), mean, std,
            num_inference_steps,
        )
        assert abs(offset) < abs(constant_offset) / 1.8


@pytest.mark.parametrize("dim", [8, 16, 64])
def test_corrected_per_sample_corrector_keeps_a_gaussian_variance(dim: int):
    """Langevin corrector steps at a fixed level on N(0, vI), every step sized per sample: uncorrected
    (`"sample"`), the chain settles (d + 2)²/d² too wide in E‖x‖² (a noise that grows with the drawn ‖z‖, a step
    that shrinks with ‖x‖); `"sample_corrected"` settles where batch-averaged norms do, at Langevin's own excess
    1/(1 − η/(2v)) ≈ 1 + snr²."""
    variance, snr, num_chains, num_steps = 2.0, 0.1, 4000, 300
    start = torch.randn(num_chains, dim, generator=make_generator(6), dtype=torch.float64) * variance**0.5
    ratios = {}
    for norm in ("sample", "sample_corrected", "batch"):
        sample, chain_generator = start.clone(), make_generator(7)
        for _ in range(num_steps):
            score = -sample / variance
            noise = torch.randn(sample.shape, generator=chain_generator, dtype=torch.float64)
            sample, _ = sampling.langevin.langevin_corrector_step(
                sample, score, noise, sampling.per_sample_norm(score), snr, norm=norm
            )
        ratios[norm] = float(sample.square().sum(1).mean() / (dim * variance))
    # E‖x‖²/(dv) over num_chains chains has the standard error √(2/(d·num_chains)) ≤ 0.8%.
    assert ratios["sample"] == pytest.approx(((dim + 2) / dim) ** 2, rel=0.04), ratios
    assert ratios["sample_corrected"] == pytest.approx(1 + snr**2, abs=0.025), ratios
    assert ratios["sample_corrected"] == pytest.approx(ratios["batch"], abs=0.02), ratios


def test_corrected_per_sample_corrector_steps_in_half_precision():
    """In float16 ‖s‖² overflows once ‖s‖ > 256 (here ‖s‖ ≈ √d/σ ≈ 1100): the step is computed in float32 and comes
    back in the sample's dtype, as large as in float32 (it was 0, the sample returned unchanged)."""
    dim, sigma, snr = 3 * 32 * 32, 0.05, 0.16
    sample = torch.randn(4, dim, generator=make_generator(3)) * sigma
    noise = torch.randn(4, dim, generator=make_generator(4))
    moves = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x, z = sample.to(dtype), noise.to(dtype)
        score = -x / sigma**2
        moved, _ = sampling.langevin.langevin_corrector_step(x, score, z, sampling.per_sample_norm(score), snr)
        assert moved.dtype == dtype
        moves[dtype] = float((moved.float() - x.float()).abs().mean())
    assert moves[torch.float16] == pytest.approx(moves[torch.float32], rel=0.02), moves
    assert moves[torch.bfloat16] == pytest.approx(moves[torch.float32], rel=0.05), moves


def test_corrected_per_sample_corrector_takes_the_level_step_on_small_samples():
    """Below `MIN_SAMPLE_CORRECTED_DIM` elements one sample's score norm is too noisy a measure of its level's
    variance: the step is the point mass's, η = 2α·snr²·σ², stable wherever the sample is."""
    dim = sampling.langevin.MIN_SAMPLE_CORRECTED_DIM - 1
    sample = torch.randn(5, dim, generator=make_generator(1), dtype=torch.float64)
    score = -sample / 3.0
    noise = torch.randn(5, dim, generator=make_generator(2), dtype=torch.float64)
    snr, alpha, sigma = 0.16, 0.9, 0.7
    step = 2 * alpha * snr**2 * sigma**2
    prev_sample, mean = sampling.langevin.langevin_corrector_step(
        sample, score, noise, sampling.per_sample_norm(score), snr, alpha, "sample_corrected", sigma
    )
    torch.testing.assert_close(mean, sample + step * score, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prev_sample, mean + (2 * step) ** 0.5 * noise, rtol=1e-12, atol=1e-12)
    # Near a mode, where ‖s‖ → 0, the per-sample estimate would blow the step up; this one stays put.
    prev_sample, _ = sampling.langevin.langevin_corrector_step(
        sample * 1e-6, score * 1e-6, noise, sampling.per_sample_norm(score * 1e-6), snr, alpha, "sample_corrected",
        sigma,
    )
    assert float(prev_sample.abs().max()) < 10 * sigma


def test_default_predictor_corrector_samples_a_two_dimensional_mixture():
    """2-d samples, below `MIN_SAMPLE_CORRECTED_DIM`, with the default per-sample corrector: the mode weights within
    the bar of the sampling tests and the spreads within twice theirs (with `"sample"`'s uncorrected per-sample
    step every component comes out 2.5–3 times too wide)."""
    mixture = GaussianMixture(torch.tensor([[-2.0, -2.0], [2.0, 2.0], [2.0, -2.0]], dtype=torch.float64), 0.4,
                              torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    scheduler = PredictorCorrectorScheduler(sigma_max=10.0)
    samples = sample_with_seed(scheduler, mixture, (4000, 2), 100, seed=4)
    reference, _ = mixture.sample(4000, make_generator(5))
    floor = mode_weight_tv(mixture, reference)
    assert bool(torch.isfinite(samples).all())
    assert mode_weight_tv(mixture, samples) <= TV_MARGIN * max(floor, 0.01)
    assert float((component_spreads(mixture, samples) / mixture.stds - 1).abs().max()) <= 2 * SPREAD_TOLERANCE


def test_adaptive_reverse_sde_reproduces_the_mixture_and_reports_nfe_per_sample(mixture, noise_floor):
    """VP with the exact score at the default tolerance: mode weights and spreads within the same bars as the
    schedulers; the evaluations are counted per sample (2 per attempted step + the denoising one)."""
    sde = VPSDE()

    def score_fn(x, t, rows):
        return mixture.score(x, sde.mean_coeff(t), sde.marginal_std(t))

    generator = make_generator(8)
    x_T = torch.randn(NUM_SAMPLES, DATA_DIM, generator=generator, dtype=torch.float64)
    result = sampling.adaptive_reverse_sde(score_fn, x_T, sde, 1e-3, generator=generator)
    assert mode_weight_tv(mixture, result.sample) <= TV_MARGIN * noise_floor.mean_mode_tv
    assert float((component_spreads(mixture, result.sample) / mixture.stds - 1).abs().max()) <= SPREAD_TOLERANCE
    # Two per attempted step, one to forget the prior, one to denoise.
    assert torch.equal(result.nfe, 2 * (result.accepted + result.rejected) + 2)
    assert int(result.nfe.min()) < int(result.nfe.max())  # steps are chosen per sample


def test_adaptive_reverse_sde_is_reproducible_per_sample():
    mixture = GaussianMixture(torch.zeros(2, 4, dtype=torch.float64) + torch.tensor([[2.0], [-2.0]]), 0.5)
    sde = VPSDE()

    def score_fn(x, t, rows):
        return mixture.score(x, sde.mean_coeff(t), sde.marginal_std(t))

    def run(seeds):
        generators = [make_generator(seed) for seed in seeds]
        x_T = torch.cat([torch.randn(1, 4, generator=g, dtype=torch.float64) for g in generators])
        return sampling.adaptive_reverse_sde(score_fn, x_T, sde, 1e-3, generator=generators)

    alone, together = run([5]), run([5, 6, 7])
    # Equal up to the batch-size-dependent rounding of the mixture's matrix products.
    torch.testing.assert_close(alone.sample[0], together.sample[0], rtol=0, atol=1e-10)
    assert int(alone.nfe[0]) == int(together.nfe[0])
    torch.testing.assert_close(run([5, 6, 7]).sample, together.sample, rtol=0, atol=0)
    with pytest.raises(SamplingError, match="did not reach"):
        sampling.adaptive_reverse_sde(score_fn, torch.randn(2, 4, dtype=torch.float64), sde, 1e-3, max_evaluations=4)
