"""Predictors of the reverse-time SDE from time t to an earlier time s (Song et al., 2021,
https://arxiv.org/abs/2011.13456; Ho et al., 2020, https://arxiv.org/abs/2006.11239).

(a, b) is the forward transition x_t = a·x_s + b·z of the linear SDE (`SDE.transition_coeffs`): a = α_t/α_s,
b² = σ_t² − a²σ_s². Each function returns the noise-free mean of x_s and the std of the noise to add to it.
"""

from __future__ import annotations

import math

import torch


def euler_maruyama_step(
    sample: torch.Tensor, score: torch.Tensor, drift_coeff: float, diffusion: float, dt: float
) -> tuple[torch.Tensor, float]:
    """x + (f(t)·x − g(t)²·score)·Δt, noise std g(t)·√|Δt| (Δt = s − t < 0)."""
    mean = torch.add(sample * (1 + drift_coeff * dt), score, alpha=-(diffusion**2) * dt)
    return mean, diffusion * abs(dt) ** 0.5


def reverse_diffusion_step(sample: torch.Tensor, score: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, float]:
    """score_sde's reverse diffusion: x − (a − 1)·x + b²·score, noise std b (Diffusers' `ScoreSdeVeScheduler.step_pred`
    for VE)."""
    return torch.add(sample if a == 1 else sample * (2 - a), score, alpha=b**2), b


def ancestral_step(
    sample: torch.Tensor, score: torch.Tensor, a: float, b: float, sigma: float, next_sigma: float
) -> tuple[torch.Tensor, float]:
    """A draw from the Gaussian posterior q(x_s | x_t, x̂₀): mean (x + b²·score)/a, std b·σ_s/σ_t (NCSN ancestral for
    VE, DDPM with `variance_type="fixed_small"` for VP)."""
    mean = torch.add(sample, score, alpha=b**2)
    return (mean if a == 1 else mean.div_(a)), b * next_sigma / sigma


def sde_dpmpp_step(
    scaled: torch.Tensor, denoised: torch.Tensor, ratio: float, next_ratio: float, eta: float = 1.0
) -> tuple[torch.Tensor, float]:
    """SDE-DPM-Solver++'s step in the scale-free variables x̄ = x/α, σ̄ = σ/α (Lu et al., 2022,
    https://arxiv.org/abs/2211.01095), from σ̄ to σ̄' = σ̄·e^{−h}: mean e^{−(1+η)h}·x̄ + (1 − e^{−(1+η)h})·D, noise std
    σ̄'·√(1 − e^{−2ηh}) in x̄. D is x̂₀ (first order) or a multistep combination of past x̂₀; η = 1 solves the
    reverse SDE (the exact posterior q(x_s | x_t, x̂₀) when D is exact), η = 0 is the probability-flow ODE's
    DPM-Solver++ step and η = ∞ forgets x̄: D + σ̄'·z. At σ̄' = 0 it returns D."""
    if next_ratio == 0:
        return denoised, 0.0
    shrink = (next_ratio / ratio) ** (1 + eta)
    mean = torch.add(scaled * shrink, denoised, alpha=1 - shrink)
    return mean, next_ratio * (1 - (next_ratio / ratio) ** (2 * eta)) ** 0.5


def sde_noise_scale(
    eta: float, ratio: float, next_ratio: float, max_noise_refresh: float = 1.0, min_ratio: float = 0.0
) -> float:
    """η_i of one SDE-DPM-Solver++ step from σ̄ = `ratio` to σ̄' = σ̄·e^{−h}: 0 below σ̄ = `min_ratio` (the
    probability-flow step there), else min(η, h*/h) with h* = −½·log(1 − `max_noise_refresh`), so that the share of
    the sample's noise variance the step replaces with fresh noise, 1 − e^{−2η_i·h}, is
    min(1 − e^{−2ηh}, `max_noise_refresh`). The last step (σ̄' = 0) takes no noise either way."""
    if not 0 <= next_ratio < ratio:
        raise ValueError(f"A step must lower the noise level: got σ̄ = {ratio} to σ̄' = {next_ratio}.")
    if ratio < min_ratio or next_ratio == 0 or max_noise_refresh == 0:
        return 0.0
    if max_noise_refresh == 1:
        return eta
    return min(eta, -0.5 * math.log1p(-max_noise_refresh) / math.log(ratio / next_ratio))


def add_noise(mean: torch.Tensor, noise: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """mean + std·noise (std a float or broadcastable per-sample tensor)."""
    if torch.is_tensor(std):
        return torch.addcmul(mean, std, noise)
    return torch.add(mean, noise, alpha=std)
