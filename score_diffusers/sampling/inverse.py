"""Sampling p(x₀ | y) for a linear-Gaussian measurement y = A x₀ + σ_y·z with a score model of p₀ (pure PyTorch).

Three ways, from cheapest to exact; each takes an operator of `score_diffusers.operators` (A, Aᵀ and the solve with
AAᵀ) and works in the model's data space:

- **Replacement** (Song et al., 2021, https://arxiv.org/abs/2011.13456, app. I): after every step of any sampler,
  the sample x at (α, σ) is projected onto the noised measurement y_t = α·y + σ·A z,
  x ← x + A⁺(y_t − A x). For a mask this replaces the observed pixels by a forward-noised copy; for the gray
  channel it is score_sde's colorizer. It treats y as noiseless and is biased even with the exact score: the free
  coordinates see a noised observation, not y.
- **Measurement guidance** (ΠGDM, Song et al., 2023, https://openreview.net/forum?id=9_gsMA8MRKQ): the score gains
  α_t·∇ₓ log N(y; A x̂₀(x_t), σ_y²I + r_t²AAᵀ), differentiated through the model's x̂₀ (`measurement_log_likelihood`;
  ΠGDM's weight α_t, which is 1 for VE).
  r_t² = σ̄²v/(σ̄² + v) (`denoised_error_variance`) is the error variance of x̂₀ when x₀ ~ N(0, vI); v is
  `prior_variance`: 1, the largest per-pixel variance of data in [−1, 1] (the pipelines' space, and ΠGDM's choice),
  or the second moment y shows where that is larger (data beyond [−1, 1]). No step size to tune. The bound σ̄² alone
  (v = ∞) left the guidance and the SMC twist uninformative in 64 dimensions; v read off y alone was overconfident
  where y says little (one observed coordinate near 0). Biased: the likelihood of x_t is replaced by a Gaussian
  around a point estimate.
- **Twisted sequential Monte Carlo** (`twisted_smc`), asymptotically exact: particles follow the reverse-time chain
  with the ancestral kernel p(x_s | x_t) = N(m(x_t), c²I), each step proposed from that kernel conditioned on y
  through the twist p̃_s(y | x_s) = N(y; A x_s/α_s, σ_y²I + σ̄_s²AAᵀ) (the likelihood of x_s under a flat prior on
  x₀; MCGdiff's, Cardoso et al., 2023, https://arxiv.org/abs/2308.07983, for general A). Kernel and twist are both
  linear-Gaussian, so the conditioned proposal and its normaliser Z = ∫ p(x_s | x_t) p̃_s(y | x_s) dx_s are exact,
  and the weights Z/p̃_t(y | x_t) make the particle system target the chain's p(x_ε) · N(y; A x_ε/α_ε, σ_y²I)
  exactly (the weights use the better twist N(y; A x̂₀(x_s), σ_y²I + r_s²AAᵀ) of the guidance, which costs nothing since x̂₀(x_s) is the
  next step's evaluation, and changes only the variance, not the target): as particles grow the output converges to the posterior of the chain, and as steps grow (exact score)
  that chain's marginal converges to p_ε, within σ_min of p₀.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..checks import SamplingError, all_finite, check_int, check_number
from ..conventions import ModelConvention
from ..operators import LinearOperator
from .predictors import ancestral_step


def noised_measurement(
    measurement: torch.Tensor, operator: LinearOperator, alpha: float, sigma: float, noise: torch.Tensor
) -> torch.Tensor:
    """y_t = α·y + σ·A z, a draw of A x_t given A x₀ = y, for a sample-shaped standard normal `noise`."""
    return alpha * measurement + sigma * operator.forward(noise)


def project_onto_measurement(sample: torch.Tensor, target: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
    """x + A⁺(target − A x): the nearest sample (in ‖·‖₂) whose measurement is `target`."""
    return sample + operator.pseudo_inverse(target - operator.forward(sample))


def measurement_log_likelihood(
    estimate: torch.Tensor,
    measurement: torch.Tensor,
    operator: LinearOperator,
    noise_variance: float | torch.Tensor,
    estimate_variance: float | torch.Tensor,
) -> torch.Tensor:
    """log N(y; A x̂, σ_y²I + v̂·AAᵀ) per sample up to a constant that depends on neither x̂ nor y: −½ rᵀ(v̂AAᵀ +
    σ_y²I)⁺r with r = y − A x̂ (on the range of A), shape `(batch,)`, float32 or wider. Differentiable in
    `estimate`; `noise_variance` σ_y² and `estimate_variance` v̂ are floats or one value per sample."""
    residual = measurement - operator.forward(estimate)
    solved = operator.gram_solve(residual, estimate_variance, noise_variance)
    return -0.5 * (residual * solved).flatten(1).sum(1, dtype=torch.float64 if residual.dtype == torch.float64 else None)


def prior_variance(measurement: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
    """v = max(1, ‖A⁺y‖²/rank(A)) per measurement, shape `(batch,)` (float64): the per-coordinate second moment of a
    zero-mean Gaussian stand-in for p₀, at least 1 (the most that data in [−1, 1] can have) and at least what y shows
    (‖A⁺A x₀‖² has mean v·rank(A) for x₀ ~ N(0, vI))."""
    least_norm = operator.pseudo_inverse(measurement)
    squared = least_norm.flatten(1).square().sum(1).to(torch.float64).cpu()
    return (squared / operator.rank(measurement).clamp_min(1)).clamp_min(1.0)


def denoised_error_variance(noise_to_signal: float, variance: torch.Tensor) -> torch.Tensor:
    """r² = σ̄²v/(σ̄² + v), the per-coordinate variance of x₀ given x_t when x₀ ~ N(0, v I) (σ̄ = σ_t/α_t)."""
    ratio2 = noise_to_signal**2
    return ratio2 * variance / (ratio2 + variance)


def twisted_proposal(
    mean: torch.Tensor,
    kernel_std: float,
    alpha: float,
    noise_to_signal: float,
    measurement: torch.Tensor,
    operator: LinearOperator,
    noise_variance: float,
    noises: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A draw from N(m, c²I) conditioned on y ~ N(A x/α, σ_y²I + σ̄²AAᵀ), and the log normaliser log Z.

    With B = A/α and S = (c²/α² + σ̄²)AAᵀ + σ_y²I, the conditioned Gaussian is drawn by Matheron's rule:
    x' = m + c·z, ξ = σ_y·P z₁ + σ̄·A z₂ (P the projection onto the range of A), x = x' + (c²/α)Aᵀ S⁺(y − B x' − ξ);
    log Z = log N(y; B m, S) up to a constant shared by all samples (`measurement_log_likelihood`).

    Args:
        mean (`torch.Tensor` of shape `(batch, *dims)`): m, the kernel's mean.
        kernel_std (`float`): c > 0.
        alpha, noise_to_signal (`float`): α_s and σ̄_s of the time proposed to (σ̄ = 0: the exact final likelihood).
        measurement (`torch.Tensor` of shape `(batch, *measurement_dims)`): y.
        noises: standard normal z (shape of `mean`), z₁ (shape of `measurement`) and z₂ (shape of `mean`).

    Returns:
        The sample, shape of `mean`, and log Z, shape `(batch,)`.
    """
    z, z_measurement, z_sample = noises
    total_variance = kernel_std**2 / alpha**2 + noise_to_signal**2
    log_normaliser = measurement_log_likelihood(mean / alpha, measurement, operator, noise_variance, total_variance)
    prior_draw = mean + kernel_std * z
    measurement_noise = noise_variance**0.5 * operator.range_projection(z_measurement)
    measurement_noise = measurement_noise + noise_to_signal * operator.forward(z_sample)
    innovation = measurement - operator.forward(prior_draw) / alpha - measurement_noise
    gain = operator.transpose(operator.gram_solve(innovation, total_variance, noise_variance))
    return prior_draw + (kernel_std**2 / alpha) * gain, log_normaliser


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """(Σw)²/Σw² per row of `log_weights` (shape `(images, particles)`), in [1, particles]."""
    normalised = torch.softmax(log_weights, dim=-1)
    return 1.0 / normalised.square().sum(-1)


def systematic_resample(log_weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Systematic resampling: for each row of `log_weights` (shape `(images, particles)`), the particle indices at
    the positions (u + j)/particles, j = 0 … particles − 1, of the weights' cumulative sum, one u ~ U[0, 1) per row
    (`uniforms`, shape `(images,)`). Returns int64 indices of shape `(images, particles)`."""
    particles = log_weights.shape[-1]
    cumulative = torch.softmax(log_weights.to(torch.float64), dim=-1).cumsum(-1)
    positions = (uniforms.to(torch.float64)[:, None] + torch.arange(particles, dtype=torch.float64)) / particles
    indices = torch.searchsorted(cumulative, positions.to(cumulative.device), right=True)
    return indices.clamp_max(particles - 1)


@dataclass
class SMCOutput:
    """Result of `twisted_smc`.

    Args:
        sample (`torch.Tensor` of shape `(images, *dims)`): one posterior draw per image (x_ε/α_ε of a particle drawn
            by the final weights).
        effective_sample_size (`torch.Tensor` of shape `(steps, images)`): the ESS after each step's reweighting,
            before any resampling.
        resampled (`torch.Tensor` of shape `(images,)`, int64): how many times each image's particles were resampled.
        nfe (`int`): model evaluations per image (steps × particles).
    """

    sample: torch.Tensor
    effective_sample_size: torch.Tensor
    resampled: torch.Tensor
    nfe: int


# score_fn(x, t): the score at particles x (rows, *dims), all at time t (a 0-d float64 tensor).
ParticleScoreFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (as Diffusers' `randn_tensor` does), moved to `like`'s."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _particle_noise(
    shape: tuple[int, ...], num_particles: int, generator: torch.Generator | list[torch.Generator] | None,
    like: torch.Tensor, num_images: int,
) -> torch.Tensor:
    """Standard normal noise for `num_images` × `num_particles` rows of `shape`, image by image from each image's
    own generator when given a list (so an image does not depend on the others)."""
    if isinstance(generator, list):
        return torch.cat([_randn((num_particles, *shape), g, like) for g in generator])
    return _randn((num_images * num_particles, *shape), generator, like)


def _randn_per_image(like: torch.Tensor, shape: tuple[int, ...],
                     generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise for one row of `shape` per image of `like` (image i from generator i of a list)."""
    return _particle_noise(shape, 1, generator, like, like.shape[0])


def _uniforms(num_images: int, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """U[0, 1) draws on the CPU, one per image (from each image's generator when given a list)."""
    if isinstance(generator, list):
        return torch.cat([torch.rand(1, generator=g, device=g.device, dtype=torch.float64).cpu() for g in generator])
    device = generator.device if generator is not None else "cpu"
    return torch.rand(num_images, generator=generator, device=device, dtype=torch.float64).cpu()


def _choose(probabilities: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """One index per row of `probabilities` (shape `(images, particles)`), drawn on the generator's device; shape
    `(images, 1)` on the CPU."""
    if isinstance(generator, list):
        return torch.cat([_choose(p[None], g) for p, g in zip(probabilities, generator)])
    device = generator.device if generator is not None else probabilities.device
    return torch.multinomial(probabilities.to(device), 1, generator=generator).cpu()


def twisted_smc(
    score_fn: ParticleScoreFunction,
    convention: ModelConvention,
    measurement: torch.Tensor,
    operator: LinearOperator,
    sample_shape: tuple[int, ...],
    noise_std: float = 0.0,
    num_particles: int = 16,
    num_steps: int = 50,
    generator: torch.Generator | list[torch.Generator] | None = None,
    resample_threshold: float = 0.5,
) -> SMCOutput:
    """Sample p(x | y) for y = A x + σ_y·z by twisted sequential Monte Carlo (see the module docstring).

    Each image runs `num_particles` particles from the prior at T through `num_steps` ancestral steps on the log-σ̄
    grid (`ModelConvention.time_grid`) to ε, all images' particles as one batch for `score_fn`. After each step the
    particles are reweighted by Z(x_t)/p̃_t(y | x_t) and resampled (systematically) when the effective sample size
    drops below `resample_threshold` × particles. At ε one particle per image is drawn by the final weights. With a
    `generator` list (one per image), an image's draws come from its own generator only.

    Args:
        score_fn: the score at (particles, t), see `ParticleScoreFunction`.
        convention (`ModelConvention`): the model's SDE and end time ε.
        measurement (`torch.Tensor` of shape `(images, *measurement_dims)`): y.
        operator (`LinearOperator`): A.
        sample_shape (`tuple[int, ...]`): the shape of one sample.
        noise_std (`float`, defaults to 0): σ_y ≥ 0.
        num_particles (`int`, defaults to 16): particles per image (≥ 1; 1 is the guided chain without weights).
        num_steps (`int`, defaults to 50): steps of the chain, one model evaluation per particle each.
        generator (`torch.Generator` or a list of one per image, *optional*): the randomness.
        resample_threshold (`float`, defaults to 0.5): resample when ESS < threshold × particles.

    Returns:
        `SMCOutput`.
    """
    check_int("num_particles", num_particles, 1)
    check_int("num_steps", num_steps, 1)
    check_number("noise_std", noise_std, 0.0, float("inf"), high_open=True)
    check_number("resample_threshold", resample_threshold, 0.0, 1.0)
    num_images = measurement.shape[0]
    if isinstance(generator, list) and len(generator) != num_images:
        raise ValueError(f"`generator` must be one generator or a list of {num_images} (one per image); got "
                         f"{len(generator)}.")
    sde = convention.sde
    noise_variance = float(noise_std) ** 2
    rows_operator = operator.repeat_interleave(num_particles)
    rows_measurement = measurement.repeat_interleave(num_particles, dim=0)
    times = convention.time_grid(num_steps + 1, "log_sigma")
    alphas, sigmas = convention.coefficients(times)
    ratios = sigmas / alphas
    variances = prior_variance(measurement, operator).repeat_interleave(num_particles)

    def flat_twist(x: torch.Tensor, k: int) -> torch.Tensor:
        """log p̃_k(y | x) = log N(y; A x/α_k, σ_y²I + σ̄_k²AAᵀ), the twist the proposals condition on."""
        return measurement_log_likelihood(x / float(alphas[k]), rows_measurement, rows_operator, noise_variance,
                                          float(ratios[k]) ** 2).reshape(num_images, num_particles).double().cpu()

    def denoised_twist(x: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
        """log N(y; A x̂₀(x), σ_y²I + r_k²AAᵀ), the twist the weights use: it knows the prior through x̂₀."""
        estimate = ModelConvention.denoised(x, score, float(alphas[k]), float(sigmas[k]))
        variance = denoised_error_variance(float(ratios[k]), variances).to(device=x.device, dtype=x.dtype)
        return measurement_log_likelihood(estimate, rows_measurement, rows_operator, noise_variance,
                                          variance).reshape(num_images, num_particles).double().cpu()

    def evaluate(x: torch.Tensor, k: int) -> torch.Tensor:
        score = score_fn(x, times[k])
        if not all_finite(score):
            raise SamplingError(f"twisted_smc: the score at step {k} (t = {float(times[k]):.4g}) is not finite.")
        return score

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return _particle_noise(shape, num_particles, generator, measurement, num_images)

    x = draw(tuple(sample_shape)) * sde.prior_std
    score = evaluate(x, 0)
    current_twist = denoised_twist(x, score, 0)
    log_weights = current_twist.clone()
    ess_history, resampled = [], torch.zeros(num_images, dtype=torch.int64)
    offsets = (torch.arange(num_images) * num_particles)[:, None]
    for k in range(num_steps):
        a, b = sde.transition_coeffs(alphas[k], sigmas[k], alphas[k + 1], sigmas[k + 1])
        mean, kernel_std = ancestral_step(x, score, float(a), float(b), float(sigmas[k]), float(sigmas[k + 1]))
        noises = (draw(tuple(sample_shape)), draw(tuple(measurement.shape[1:])), draw(tuple(sample_shape)))
        x, log_normaliser = twisted_proposal(mean, kernel_std, float(alphas[k + 1]), float(ratios[k + 1]),
                                             rows_measurement, rows_operator, noise_variance, noises)
        # w ← w · Z(x_t) · [p̂_s(y | x_s)/p̃_s(y | x_s)] / p̂_t(y | x_t): the proposal conditions on the flat twist
        # p̃, the weights carry the denoised one p̂ (at ε, the flat one: the final step's normaliser).
        increment = log_normaliser.reshape(num_images, num_particles).double().cpu() - current_twist
        if k + 1 < num_steps:
            score = evaluate(x, k + 1)
            current_twist = denoised_twist(x, score, k + 1)
            increment = increment + current_twist - flat_twist(x, k + 1)
        log_weights = log_weights + increment
        if not bool(torch.isfinite(log_weights).any(-1).all()):
            raise SamplingError(f"twisted_smc: every particle weight of an image is zero or NaN after step {k}.")
        ess = effective_sample_size(log_weights)
        ess_history.append(ess)
        if k == num_steps - 1:
            break
        low = ess < resample_threshold * num_particles
        # Drawn at every step, so that an image's generator does not depend on whether others resample.
        uniforms = _uniforms(num_images, generator)
        if bool(low.any()):
            indices = systematic_resample(log_weights, uniforms)
            indices = torch.where(low[:, None], indices, torch.arange(num_particles))
            rows = (offsets + indices).flatten()
            x, score = x[rows.to(x.device)], score[rows.to(x.device)]
            current_twist = current_twist.flatten()[rows].reshape(num_images, num_particles)
            log_weights = torch.where(low[:, None], torch.zeros_like(log_weights), log_weights)
            resampled += low.to(torch.int64)
    chosen = _choose(torch.softmax(log_weights, dim=-1), generator)
    x_eps = x[(offsets + chosen).flatten().to(x.device)]
    # x₀ given x_ε and y, from the kernel N(x_ε/α_ε, σ̄_ε²I) ≈ p(x₀ | x_ε) conditioned on y; its normaliser is the
    # twist at ε itself, so this step leaves the weights alone.
    final_noises = tuple(_randn_per_image(x_eps, shape, generator) for shape in
                         (tuple(sample_shape), tuple(measurement.shape[1:]), tuple(sample_shape)))
    sample, _ = twisted_proposal(x_eps / float(alphas[-1]), float(ratios[-1]), 1.0, 0.0, measurement, operator,
                                 noise_variance, final_noises)
    return SMCOutput(sample=sample, effective_sample_size=torch.stack(ess_history), resampled=resampled,
                     nfe=num_steps * num_particles)
