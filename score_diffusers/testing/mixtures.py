"""Closed-form score models: Gaussian mixtures under VE, VP and sub-VP noise.

For p_0 = Σ_k w_k N(μ_k, s_k² I) and x_t = α_t x_0 + σ_t z, the perturbed density is again a mixture,
p_t = Σ_k w_k N(α_t μ_k, (α_t² s_k² + σ_t²) I), so its score, its ε and its log-density are exact. Driving
a sampler with them isolates the sampler's own error, which is how the tests and benchmarks use them.
"""

from __future__ import annotations

import math

import torch

from ..conventions import ModelConvention
from ..sde import append_dims


class GaussianMixture:
    """p_0 = Σ_k w_k N(μ_k, s_k² I) in `dim` dimensions, evaluated exactly at any noise level.

    Args:
        means (`torch.Tensor` of shape `(K, dim)`): component means μ_k.
        stds (`torch.Tensor` of shape `(K,)` or `float`): per-component standard deviations s_k > 0.
        weights (`torch.Tensor` of shape `(K,)`, *optional*): mixture weights (normalised; uniform by default).
    """

    def __init__(
        self,
        means: torch.Tensor,
        stds: torch.Tensor | float,
        weights: torch.Tensor | None = None,
    ):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"`means` must have shape (K, dim); got {tuple(self.means.shape)}.")
        num_components = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(num_components).clone()
        if not bool((self.stds > 0).all()):
            raise ValueError("`stds` must be positive.")
        weights = torch.ones(num_components, dtype=torch.float64) if weights is None else torch.as_tensor(weights)
        if weights.shape != (num_components,) or not bool((weights > 0).all()):
            raise ValueError(f"`weights` must hold {num_components} positive values.")
        self.weights = weights.to(torch.float64) / weights.sum()

    @classmethod
    def random(
        cls,
        num_components: int,
        dim: int,
        mean_scale: float = 3.0,
        std_range: tuple[float, float] = (0.3, 0.8),
        generator: torch.Generator | None = None,
    ) -> GaussianMixture:
        """A mixture with N(0, mean_scale²) means, stds uniform in `std_range` and Dirichlet-like unequal weights."""
        means = torch.randn(num_components, dim, generator=generator, dtype=torch.float64) * mean_scale
        low, high = std_range
        stds = low + (high - low) * torch.rand(num_components, generator=generator, dtype=torch.float64)
        weights = 0.5 + torch.rand(num_components, generator=generator, dtype=torch.float64)
        return cls(means, stds, weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `num_samples` points (float64, shape `(num_samples, dim)`) and their component labels."""
        labels = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, self.dim, generator=generator, dtype=torch.float64)
        return self.means[labels] + self.stds[labels, None] * noise, labels

    def _component_log_probs(
        self, x: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """log(w_k N(x; α μ_k, v_k I)) of shape `(batch, K)`, with x flattened to float64 `(batch, dim)`, α as
        `(batch or 1, 1)` and the variances v_k = α²s_k² + σ² as `(batch or 1, K)`."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        alpha = append_dims(torch.as_tensor(alpha, dtype=torch.float64, device=flat.device), 2)
        sigma = append_dims(torch.as_tensor(sigma, dtype=torch.float64, device=flat.device), 2)
        means = self.means.to(flat.device)
        variances = alpha**2 * self.stds.to(flat.device) ** 2 + sigma**2
        # ‖x − αμ_k‖² = ‖x‖² − 2α xᵀμ_k + α²‖μ_k‖², with matrix products rather than a (batch, K, dim) tensor.
        squared = flat.square().sum(1, keepdim=True) - 2 * alpha * (flat @ means.T) + alpha**2 * means.square().sum(1)
        log_probs = (
            self.weights.to(flat.device).log()
            - 0.5 * self.dim * torch.log(2 * math.pi * variances)
            - 0.5 * squared.clamp_min(0) / variances
        )
        return log_probs, flat, alpha, variances

    def log_prob(self, x: torch.Tensor, alpha: torch.Tensor | float = 1.0, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """log p_t(x) per sample (float64, shape `(batch,)`) for x_t = α x_0 + σ z; defaults give the data density."""
        log_probs = self._component_log_probs(x, alpha, sigma)[0]
        return torch.logsumexp(log_probs, dim=1)

    def score(self, x: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float) -> torch.Tensor:
        """∇ₓ log p_t(x) = −Σ_k r_k (x − αμ_k)/v_k = α Σ_k (r_k/v_k) μ_k − x Σ_k r_k/v_k, with responsibilities r_k;
        shape and dtype of `x`."""
        log_probs, flat, alpha, variances = self._component_log_probs(x, alpha, sigma)
        weights = torch.softmax(log_probs, dim=1) / variances
        score = alpha * (weights @ self.means.to(flat.device)) - weights.sum(1, keepdim=True) * flat
        return score.reshape(x.shape).to(x.dtype)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable component of each sample under p_0, shape `(batch,)`."""
        return self._component_log_probs(x, 1.0, 0.0)[0].argmax(dim=1)


class ExactScoreModel:
    """A 'model' that answers a sampling loop with the exact output of a Gaussian mixture.

    Called as `model(x, timestep)` with a timestep in the convention's `timestep_type`, it returns the exact score or
    ε (following the convention's `prediction_type`) of `mixture` perturbed by the convention's SDE, as a real model
    would. `calls` counts evaluations.

    Args:
        mixture (`GaussianMixture`): the data distribution.
        convention (`ModelConvention`, or a score scheduler, whose `convention` is used): the model's conventions.
    """

    def __init__(self, mixture: GaussianMixture, convention):
        self.mixture = mixture
        self.convention: ModelConvention = getattr(convention, "convention", convention)
        self.calls = 0

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        self.calls += 1
        t = self.convention.time(torch.as_tensor(timestep).detach().cpu())
        alpha, sigma = self.convention.coefficients(t)
        return self.convention.output_from_score(self.mixture.score(x, alpha, sigma), sigma.to(x.dtype))
