"""Closed-form score models: Gaussian mixtures under VE, VP and sub-VP noise, and sample-quality metrics.

For p_0 = Σ_k w_k N(μ_k, s_k² I) and x_t = α_t x_0 + σ_t z, the perturbed density is again a mixture,
p_t = Σ_k w_k N(α_t μ_k, (α_t² s_k² + σ_t²) I), so its score, its ε and its log-density are exact. Driving
a sampler with them isolates the sampler's own error, which is how the tests and benchmarks use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .sde import SDE, append_dims


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
    """A 'model' that answers a scheduler's loop with the exact output of a Gaussian mixture.

    Called as `model(x, timestep)` with the timestep convention of `scheduler`, it returns the exact score or ε
    (following `scheduler.config.prediction_type`) of `mixture` perturbed by `sde`. `calls` counts evaluations.

    Args:
        mixture (`GaussianMixture`): the data distribution.
        scheduler: a score scheduler of this package (its SDE, time convention and prediction type are used).
    """

    def __init__(self, mixture: GaussianMixture, scheduler):
        self.mixture = mixture
        self.scheduler = scheduler
        self.calls = 0

    def score_at_time(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The exact score at continuous time `t`."""
        sde: SDE = self.scheduler.sde
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.mixture.score(x, sde.mean_coeff(t), sde.marginal_std(t))

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        self.calls += 1
        t = self.scheduler.time_for_timestep(torch.as_tensor(timestep).detach().cpu())
        return self.scheduler.model_output_from_score(self.score_at_time(x, t), timestep)


# ---- sample-quality metrics ---------------------------------------------------------------------------------


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


def run_loop(
    scheduler,
    model,
    sample: torch.Tensor,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """The plain Diffusers sampling loop of DESIGN.md §3 from a given x_T `sample`, with a callable
    `model(x, timestep) -> tensor`; returns the final sample."""
    scheduler.set_timesteps(num_inference_steps)
    for timestep in scheduler.timesteps:
        model_output = model(scheduler.scale_model_input(sample, timestep), timestep)
        sample = scheduler.step(model_output, timestep, sample, generator=generator).prev_sample
    return sample


def run_sampler(
    scheduler,
    model,
    shape: Sequence[int],
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`run_loop` from the prior, x_T = standard normal noise × `scheduler.init_noise_sigma`."""
    sample = torch.randn(tuple(shape), generator=generator, dtype=dtype) * scheduler.init_noise_sigma
    return run_loop(scheduler, model, sample, num_inference_steps, generator)
