"""Langevin MCMC at a fixed noise level: the PC corrector (Song et al., 2021, https://arxiv.org/abs/2011.13456),
annealed Langevin dynamics (Song & Ermon, 2019, https://arxiv.org/abs/1907.05600; NCSNv2, Song & Ermon, 2020,
https://arxiv.org/abs/2006.09011) and consistent annealed sampling (Jolicoeur-Martineau et al., 2021,
https://arxiv.org/abs/2009.05475)."""

from __future__ import annotations

from typing import Literal

import torch

from ..sde import append_dims

# ‖score‖ below this counts as zero when sizing a Langevin step, so the step stays finite.
MIN_SCORE_NORM = 1e-12
# `"sample_corrected"` reads a level's variance off one sample's score from this many elements up: (d − 2)/‖s‖² has
# the relative spread √(2/(d − 4)) of an inverse χ²_d, and its rare huge values push a chain past Langevin's stability
# limit. On the 8-component mixture of `benchmarks/bench_schedulers.py` (PC at 200 evaluations, exact scores) the
# chains diverge in 2 dimensions and the mode weights come out twice as far off as with batch norms in 4 and 6; from 8
# they are level. Smaller samples take the point mass's variance σ² instead.
MIN_SAMPLE_CORRECTED_DIM = 8
# NCSNv2 technique 4 searches its step ratio ε/σ_L² on this log grid of (0, 1).
_TECHNIQUE_4_GRID = (-8.0, -1e-4, 200_000)

CorrectorNorm = Literal["sample_corrected", "sample", "batch"]


def per_sample_norm(values: torch.Tensor) -> torch.Tensor:
    """‖v‖ of each sample of a batch-first tensor, shape `(batch,)`."""
    return values.reshape(values.shape[0], -1).norm(dim=1)


def langevin_step_size(
    score_norm: torch.Tensor,
    noise_norm: torch.Tensor,
    snr: float,
    alpha: float = 1.0,
    norm: Literal["batch", "sample"] = "batch",
    ndim: int = 2,
) -> float | torch.Tensor:
    """score_sde's corrector step size η = 2α(snr·‖z‖/‖s‖)².

    With `norm="batch"` the norms (shape `(batch,)`) are averaged over the batch first, as score_sde and Diffusers'
    `ScoreSdeVeScheduler.step_correct` do, and η is one Python float; with `"sample"` η is per sample, shaped to
    broadcast against a sample with `ndim` dimensions.
    """
    if norm == "batch":
        # One transfer for both means; a float step size makes the update two fused scalar axpy passes.
        noise_mean, score_mean = torch.stack([noise_norm.mean(), score_norm.mean()]).tolist()
        return 2 * alpha * (snr * noise_mean / max(score_mean, MIN_SCORE_NORM)) ** 2
    ratio = noise_norm / score_norm.clamp_min(MIN_SCORE_NORM)
    return append_dims(2 * alpha * (snr * ratio) ** 2, ndim)


def langevin_corrector_step(
    sample: torch.Tensor,
    score: torch.Tensor,
    noise: torch.Tensor,
    score_norm: torch.Tensor,
    snr: float,
    alpha: float = 1.0,
    norm: CorrectorNorm = "sample_corrected",
    sigma: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PC corrector x ← x + η·s + √(2η)·z, η = 2α(snr·‖z‖/‖s‖)², with `score_norm` = ‖s‖ per sample and `sigma`
    the level's σ_t (needed by `"sample_corrected"` only).

    `"batch"` and `"sample"` size η as `langevin_step_size` does. `"sample_corrected"` sizes it per sample as
    η = 2α·snr²·(d − 2)/‖s‖² (d the sample's number of elements) and raises the drift to (1 + 2/d)·η·s. On N(μ, vI),
    ‖s‖² = χ²_d/v, so (d − 2)/‖s‖² is unbiased for v and η has the mean of the batch-averaged step, 2α·snr²·v; the
    expected ‖z‖ replaces the drawn one, whose η would add (d + 2)/d times the noise its drift balances. And a step
    η(x) ∝ ‖s(x)‖^(-2) that varies with x leaves p/η stationary instead of p (the Fokker–Planck equation of
    dx = η·s dt + √(2η) dW), ∝ p·‖x − μ‖² on the Gaussian, whose E‖x − μ‖² is then (d + 2)v: the drift factor
    1 + 2/d gives back dv, exactly on an isotropic Gaussian in the small-step limit (not the law of ‖x − μ‖², whose
    variance is d/(d + 2) of the target's, nor per coordinate on an anisotropic Gaussian, off by O(2/d)). Below `MIN_SAMPLE_CORRECTED_DIM` elements it takes η = 2α·snr²·σ², the step for
    the point mass's N(x₀, σ²I): every p_σ's curvature is at most 1/σ², so that step is stable, if small near the
    data. Either way every sample's step depends on that sample alone.
    """
    if norm != "sample_corrected":
        step_size = langevin_step_size(score_norm, per_sample_norm(noise), snr, alpha, norm, sample.ndim)
        return langevin_step(sample, score, step_size, noise)
    dim = sample[0].numel()
    if dim < MIN_SAMPLE_CORRECTED_DIM:
        if sigma is None:
            raise ValueError("`sigma` is needed for corrector_norm='sample_corrected' on samples of few elements.")
        return langevin_step(sample, score, 2 * alpha * snr**2 * sigma**2, noise)
    # In float32 at least: ‖s‖² overflows float16 (‖s‖ ≈ √d/σ passes 256 at σ < 1.7 for 3 × 256 × 256 images).
    compute = torch.promote_types(sample.dtype, torch.float32)
    # E[1/χ²_d] = 1/(d − 2).
    variance = (dim - 2) * (1 / score_norm.to(compute).clamp_min(MIN_SCORE_NORM)) ** 2
    step_size = append_dims(2 * alpha * snr**2 * variance, sample.ndim)
    # p/η ∝ p·‖x − μ‖² on the Gaussian: E‖x − μ‖² = (d + 2)v at the drift η·s, dv at (1 + 2/d)·η·s.
    mean = torch.addcmul(sample.to(compute), step_size * (1 + 2 / dim), score.to(compute))
    corrected = torch.addcmul(mean, (2 * step_size).sqrt(), noise.to(compute))
    return corrected.to(sample.dtype), mean.to(sample.dtype)


def langevin_step(
    sample: torch.Tensor,
    score: torch.Tensor,
    step_size: float | torch.Tensor,
    noise: torch.Tensor,
    noise_std: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ← x + η·score + √(2η)·z (or `noise_std`·z where given); returns the new sample and its noise-free mean.

    `step_size` is a float or a per-sample tensor broadcastable against `sample`.
    """
    if torch.is_tensor(step_size):
        mean = torch.addcmul(sample, step_size, score)
        if noise_std is None:
            return torch.addcmul(mean, (2 * step_size).sqrt(), noise), mean
    else:
        mean = torch.add(sample, score, alpha=step_size)
        if noise_std is None:
            noise_std = (2 * step_size) ** 0.5
    return torch.add(mean, noise, alpha=noise_std), mean


def consistent_noise_std(sigma: float, next_sigma: float, eta: float) -> float:
    """Consistent annealed sampling's noise √(σ'² − (1 − η)²σ²) after the drift step x + η·σ²·score at level σ,
    so that x₀ + σ·z leaves the step as x₀ + σ'·z for a point mass x₀; needs |1 − η|·σ ≤ σ' (0 at equality)."""
    return max(next_sigma**2 - (abs(1 - eta) * sigma) ** 2, 0.0) ** 0.5


# ---- step ratios η = (drift step at level σ)/σ² of annealed Langevin dynamics, from the grid ---------------------


def consistent_step_ratio(level_ratio: float) -> float:
    """η = 1 − ρ² for levels σ' = ρ·σ. A consistent step then drifts by (σ² − σ'²)·score and adds the noise
    √(σ'² − ρ⁴σ²) = σ'·√(σ² − σ'²)/σ: it is the reverse VE SDE's ancestral step from σ to σ', a draw from
    q(x_σ' | x_σ, x̂₀). On N(μ, s²I) a consistent step leaves the variance short by η²σ²s²/(s² + σ²), which later
    steps shrink by a fraction ≈ 2(η − (1 − ρ))·σ²/(s² + σ²) each; the balance of the two is least at
    η = 2(1 − ρ) ≈ 1 − ρ², a variance 1 − ρ short where σ ≈ s."""
    return 1 - level_ratio**2


def ncsnv2_step_ratio(level_ratio: float, steps_per_level: int) -> float:
    """NCSNv2 technique 4: the r = ε/σ_L² of x ← x + α·s + √(2α)·z, α = ε·σ_i²/σ_L², whose T Langevin steps carry
    N(0, (σ_i/ρ)²I) closest to N(0, σ_i²I) on a point mass, i.e. bring

        (1 − r)^{2T}·(γ² − 2r/(1 − (1 − r)²)) + 2r/(1 − (1 − r)²),   γ = 1/ρ,

    closest to 1 (it never falls below 1, so this is its minimum), searched on a log grid of r in (0, 1)."""
    ratio = torch.logspace(*_TECHNIQUE_4_GRID, dtype=torch.float64)
    stationary = 2 * ratio / (1 - (1 - ratio) ** 2)
    value = (1 - ratio) ** (2 * steps_per_level) * (level_ratio**-2 - stationary) + stationary
    return float(ratio[torch.argmin((value - 1).abs())])
