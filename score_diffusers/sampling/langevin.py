"""Langevin MCMC at a fixed noise level: the PC corrector (Song et al., 2021, https://arxiv.org/abs/2011.13456),
annealed Langevin dynamics (Song & Ermon, 2019, https://arxiv.org/abs/1907.05600) and consistent annealed sampling
(Jolicoeur-Martineau et al., 2021, https://arxiv.org/abs/2009.05475)."""

from __future__ import annotations

from typing import Literal

import torch

from ..sde import append_dims

# ‖score‖ below this counts as zero when sizing a Langevin step, so the step stays finite.
MIN_SCORE_NORM = 1e-12


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
