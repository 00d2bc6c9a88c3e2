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



class _Config(dict):
    """A config dict whose keys read as attributes too, like Diffusers' `FrozenDict`."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class ExactScoreUNet(torch.nn.Module):
    """`ExactScoreModel` as a 'unet' over images of shape `sample_shape` (channels, height, width) flattened to the
    mixture's dimension, with the `config` (`sample_size`, `in_channels`) and `device` that pipelines read, so a
    pipeline can be driven by the exact score. Differentiable in the sample.

    Args:
        mixture (`GaussianMixture`): p₀, of dimension channels × height × width.
        convention (`ModelConvention` or a score scheduler): the model's conventions.
        sample_shape (`tuple[int, int, int]`): (channels, height, width).
    """

    device = torch.device("cpu")

    def __init__(self, mixture: GaussianMixture, convention, sample_shape: tuple[int, int, int]):
        super().__init__()
        if math.prod(sample_shape) != mixture.dim:
            raise ValueError(f"`sample_shape` {sample_shape} must hold the mixture's {mixture.dim} dimensions.")
        self.config = _Config(sample_size=tuple(sample_shape[1:]), in_channels=sample_shape[0])
        self.exact = ExactScoreModel(mixture, convention)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.exact(sample.reshape(sample.shape[0], -1), timestep).reshape(sample.shape)

class GaussianMixturePosterior:
    """p(x₀ | y) for p₀ a `GaussianMixture` and y = A x₀ + σ_y·z: a mixture again, in closed form.

    With S_k = s_k²AAᵀ + σ_y²I, component k has weight ∝ w_k·N(y; Aμ_k, S_k), mean m_k = μ_k + K_k(y − Aμ_k) and
    covariance C_k = s_k²(I − K_k A), K_k = s_k²AᵀS_k⁻¹ (the Kalman update; σ_y = 0 needs A of full row rank).

    Args:
        mixture (`GaussianMixture`): the prior p₀.
        matrix (`torch.Tensor` of shape `(m, dim)`): A.
        measurement (`torch.Tensor` of shape `(m,)`): y.
        noise_std (`float`): σ_y ≥ 0.
    """

    def __init__(self, mixture: GaussianMixture, matrix: torch.Tensor, measurement: torch.Tensor, noise_std: float):
        A = torch.as_tensor(matrix, dtype=torch.float64)
        y = torch.as_tensor(measurement, dtype=torch.float64).flatten()
        eye_m, eye_d = torch.eye(A.shape[0], dtype=torch.float64), torch.eye(A.shape[1], dtype=torch.float64)
        variances = mixture.stds**2
        log_weights, means, covariances = [], [], []
        for k in range(mixture.num_components):
            innovation_cov = variances[k] * A @ A.T + noise_std**2 * eye_m
            residual = y - A @ mixture.means[k]
            log_weights.append(
                mixture.weights[k].log() + torch.distributions.MultivariateNormal(
                    A @ mixture.means[k], innovation_cov).log_prob(y)
            )
            gain = variances[k] * torch.linalg.solve(innovation_cov, A).T
            means.append(mixture.means[k] + gain @ residual)
            covariance = variances[k] * (eye_d - gain @ A)
            covariances.append(0.5 * (covariance + covariance.T))
        self.weights = torch.softmax(torch.stack(log_weights), dim=0)
        self.means = torch.stack(means)
        self.covariances = torch.stack(covariances)
        # A square root of each C_k (C_k is singular for σ_y = 0: eigenvalues clamped at 0).
        eigenvalues, eigenvectors = torch.linalg.eigh(self.covariances)
        self._roots = eigenvectors * eigenvalues.clamp_min(0).sqrt()[:, None, :]

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_samples` draws (float64, shape `(num_samples, dim)`) and their posterior component labels."""
        labels = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[labels] + torch.einsum("nij,nj->ni", self._roots[labels], noise), labels
