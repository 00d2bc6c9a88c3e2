"""Steps of the probability-flow ODE in the scale-free variables x̄ = x/α_t, σ̄ = σ_t/α_t, where it reads
dx̄/dσ̄ = (x̄ − x̂₀)/σ̄ (Karras et al., 2022, https://arxiv.org/abs/2206.00364), and Karras et al.'s churn."""

from __future__ import annotations

import math

import torch

# Karras et al. cap the churn's γ at √2 − 1, so a raised point's variance at most doubles.
MAX_CHURN_GAMMA = math.sqrt(2) - 1


def ode_derivative(scaled: torch.Tensor, denoised: torch.Tensor, ratio: float) -> torch.Tensor:
    """dx̄/dσ̄ = (x̄ − x̂₀)/σ̄ at noise level `ratio` = σ̄."""
    return torch.sub(scaled, denoised).div_(ratio)


def euler_step(scaled: torch.Tensor, derivative: torch.Tensor, step: float) -> torch.Tensor:
    """x̄ + h·d, h = σ̄_next − σ̄ (DDIM with η = 0 when d comes from x̂₀ at the start)."""
    return torch.add(scaled, derivative, alpha=step)


def heun_step(
    scaled_start: torch.Tensor, start_derivative: torch.Tensor, end_derivative: torch.Tensor, step: float
) -> torch.Tensor:
    """Heun's correction x̄_start + ½h·(d_start + d_end); overwrites `start_derivative`."""
    return torch.add(scaled_start, start_derivative.add_(end_derivative), alpha=0.5 * step)


def dpmpp_2m_denoised(denoised: torch.Tensor, previous: torch.Tensor, step_ratio: float) -> torch.Tensor:
    """DPM-Solver++(2M)'s x̂₀ for an Euler step in x̄ (Lu et al., 2022, https://arxiv.org/abs/2211.01095):
    x̂₀_i + (x̂₀_i − x̂₀_{i−1})/(2r_i), r_i = h_{i−1}/h_i with h = log(σ̄_start/σ̄_end) of each step."""
    return torch.add(denoised, denoised - previous, alpha=1 / (2 * step_ratio))


def dpmpp_3m_denoised(
    denoised: torch.Tensor,
    previous: torch.Tensor,
    earlier: torch.Tensor,
    step_ratio: float,
    earlier_ratio: float,
    step: float,
) -> torch.Tensor:
    """DPM-Solver++(3M)'s x̂₀ for an Euler step in x̄ (Lu et al., 2022, https://arxiv.org/abs/2211.01095), so that
    x̄ + (σ̄' − σ̄)(x̄ − D)/σ̄ = e·x̄ + (1 − e)·x̂₀_i + (1 + (e − 1)/h)·D₁ − 2((e − 1 + h)/h² − ½)·D₂, e = e^{−h}.

    h = log(σ̄/σ̄') is this step, r₀ = `step_ratio` and r₁ = `earlier_ratio` the two before it over h;
    D₁ = d₀ + r₀/(r₀ + r₁)·(d₀ − d₁) ≈ h·x̂₀' and D₂ = (d₀ − d₁)/(r₀ + r₁) ≈ ½h²·x̂₀'' (derivatives in λ = −log σ̄),
    with d₀ = (x̂₀_i − x̂₀_{i−1})/r₀ and d₁ = (x̂₀_{i−1} − x̂₀_{i−2})/r₁. The exact flow x̄' = e·x̄ + ∫₀ʰ e^{u−h}x̂₀ du
    gives x̂₀'' the weight ∫₀ʰ e^{u−h}u²/2 du = −2((e − 1 + h)/h² − ½)·h²/2, hence the factor 2 on D₂: with it a step
    from exact history errs by O(h⁴); the published code (DPM-Solver's, Diffusers' `DPMSolverMultistepScheduler`,
    k-diffusion) weights D₂ by half that, which on the exact Gaussian flow leaves O(h³), the local order of 2M
    (`tests/test_scheduler_sampling.py` measures the local order of both solvers).
    """
    first = (denoised - previous) / step_ratio
    second = (previous - earlier) / earlier_ratio
    total = step_ratio + earlier_ratio
    slope = first + (first - second) * (step_ratio / total)
    curvature = (first - second) / total
    em1 = math.expm1(-step)
    slope_weight = (1 + em1 / step) / -em1
    curvature_weight = 2 * ((em1 + step) / step**2 - 0.5) / -em1
    return denoised + slope_weight * slope - curvature_weight * curvature


def churned_ratios(
    ratios: torch.Tensor, s_churn: float, s_tmin: float = 0.0, s_tmax: float | None = None
) -> torch.Tensor:
    """Karras et al.'s raised noise levels σ̄̂_i = min((1 + γ)σ̄_i, σ̄_0), γ = min(s_churn/n, √2 − 1), at the points
    i ≥ 1 of the grid `ratios` (n points, decreasing) with s_tmin ≤ σ̄_i ≤ s_tmax; σ̄_i elsewhere."""
    gamma = min(s_churn / len(ratios), MAX_CHURN_GAMMA)
    upper = math.inf if s_tmax is None else s_tmax
    in_range = (ratios >= s_tmin) & (ratios <= upper)
    in_range[0] = False
    return torch.where(in_range, torch.clamp(ratios * (1 + gamma), max=ratios[0]), ratios)


def churn_noise_std(raised_ratio: float, ratio: float, s_noise: float = 1.0) -> float:
    """s_noise·√(σ̄̂² − σ̄²): the std, in x̄, of the noise that raises a sample from σ̄ to σ̄̂."""
    return s_noise * math.sqrt(raised_ratio**2 - ratio**2)


def unic_corrected(
    scaled: torch.Tensor,
    denoised_next: torch.Tensor,
    denoised: torch.Tensor,
    previous: torch.Tensor | None,
    step: float,
    step_ratio: float | None = None,
) -> torch.Tensor:
    """UniC's correction (bh2, data prediction; Zhao et al., 2023, https://arxiv.org/abs/2302.04867) of x̄' = `scaled`,
    which a DPM-Solver++(2M) step (UniP-2 with bh2) reached from σ̄ to σ̄' = σ̄e^{−h}, h = `step`, with
    x̂₀' = `denoised_next` evaluated at x̄' (the next step's evaluation, so no extra one). Tensors `(batch, *dims)`.

    The exact flow is x̄' = e·x̄ + ∫₀ʰ e^{u−h} x̂₀(λ + u) du, e = e^{−h}, λ = −log σ̄. The predictor took
    x̄' = e·x̄ + (1 − e)·[x̂₀_i + ½d], d = (x̂₀_i − x̂₀_{i−1})/r, r = `step_ratio` = h_{i−1}/h, x̂₀_i = `denoised`,
    x̂₀_{i−1} = `previous`. UniC puts x̂₀_i + a·d + a'·(x̂₀' − x̂₀_i) in the bracket, the weights matching the integral's
    Taylor moments ∫₀ʰ e^{u−h}(u/h)^k du = (1 − e)·b_k for k = 1, 2: a + a' = b₁, −r·a + a' = b₂, with
    b₁ = (1 − φ)/(1 − e), b₂ = (1 − 2(1 − φ)/h)/(1 − e), φ = (1 − e)/h. Returned: x̄' + (1 − e)·[(a − ½)·d +
    a'·(x̂₀' − x̂₀_i)]; from exact history the corrected step errs by O(h⁴) (the predictor alone by O(h³)). After a
    first-order (Euler) step, `previous` is None and the correction is x̄' + (1 − e)·½(x̂₀' − x̂₀_i), the
    exponential trapezoidal rule, as in UniPC's reference code and Diffusers' `UniPCMultistepScheduler` (the solved
    weight b₁ = ½ + O(h) is as accurate). Adding the difference to the given x̄', rather than recomputing it from x̄,
    keeps a change that a pipeline made to the sample between the steps.
    """
    one_minus_e = -math.expm1(-step)
    if previous is None:
        return torch.add(scaled, denoised_next - denoised, alpha=0.5 * one_minus_e)
    phi = one_minus_e / step
    first = (1 - phi) / one_minus_e
    second = (1 - 2 * (1 - phi) / step) / one_minus_e
    new_weight = (step_ratio * first + second) / (1 + step_ratio)
    slope_weight = (first - second) / (1 + step_ratio)
    slope = (denoised - previous) / step_ratio
    correction = torch.add((slope_weight - 0.5) * slope, denoised_next - denoised, alpha=new_weight)
    return torch.add(scaled, correction, alpha=one_minus_e)
