"""Sample-quality metrics against a Gaussian mixture: sliced W2, mode weights, per-component spread, log-density."""

from __future__ import annotations

import math

import torch

from .mixtures import GaussianMixture


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples of shape `(n, dim)`.

    √(mean over random unit directions θ of W₂²(θᵀx, θᵀy)); the 1-D W₂ pairs sorted projections.
    """
    if x.shape != y.shape:
        raise ValueError(f"`x` and `y` must have the same shape; got {tuple(x.shape)} and {tuple(y.shape)}.")
    x, y = x.reshape(x.shape[0], -1).to(torch.float64), y.reshape(y.shape[0], -1).to(torch.float64)
    directions = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    x_projected = (x @ directions).sort(dim=0).values
    y_projected = (y @ directions).sort(dim=0).values
    return float((x_projected - y_projected).pow(2).mean().sqrt())


def mode_weights(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Fraction of samples assigned to each component by `mixture.classify`, shape `(K,)`."""
    labels = mixture.classify(x)
    return torch.bincount(labels, minlength=mixture.num_components).to(torch.float64) / x.shape[0]


def mode_weight_tv(mixture: GaussianMixture, x: torch.Tensor) -> float:
    """Total-variation distance ½Σ|ŵ_k − w_k| between the samples' mode weights and the mixture's."""
    return float(0.5 * (mode_weights(mixture, x) - mixture.weights).abs().sum())


def component_spreads(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Per-component RMS per-coordinate distance of the assigned samples to μ_k, shape `(K,)` (true value s_k).

    Components that received no sample give NaN.
    """
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    labels = mixture.classify(flat)
    spreads = [
        (flat[labels == k] - mixture.means[k]).pow(2).mean().sqrt() if bool((labels == k).any()) else torch.tensor(math.nan)
        for k in range(mixture.num_components)
    ]
    return torch.stack(spreads).to(torch.float64)


def log_density_gap(mixture: GaussianMixture, x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean log p_0 of `reference` minus mean log p_0 of `x`, per dimension (0 for a perfect sampler)."""
    gap = mixture.log_prob(reference).mean() - mixture.log_prob(x).mean()
    return float(gap / mixture.dim)


def quality_report(
    mixture: GaussianMixture,
    x: torch.Tensor,
    reference: torch.Tensor,
    generator: torch.Generator | None = None,
    log_prob_reference: torch.Tensor | None = None,
) -> dict[str, float]:
    """Sliced W2 to `reference` (same size as `x`), mode-weight TV and log-density gap per dim of samples `x`.

    The log-density gap compares with `log_prob_reference` when given: a large true sample makes its mean log p_0
    nearly exact, leaving only the sampling noise of `x`.
    """
    return {
        "sliced_w2": sliced_wasserstein(x, reference, generator=generator),
        "mode_tv": mode_weight_tv(mixture, x),
        "logp_gap": log_density_gap(mixture, x, reference if log_prob_reference is None else log_prob_reference),
    }


