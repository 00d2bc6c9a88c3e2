"""Inverse problems against closed forms: operators, the twisted proposal, SMC's convergence to the mixture posterior,
replacement's and guidance's bias, the inpainting / SDEdit / inverse pipelines and their bad input."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

from score_diffusers import (
    AveragePoolOperator,
    ChannelMixOperator,
    LinearOperator,
    MaskOperator,
    MatrixOperator,
    PredictorCorrectorScheduler,
    ScoreGuidedPipeline,
    ScoreImg2ImgPipeline,
    ScoreInpaintPipeline,
    ScoreInverseProblemPipeline,
    SDEDPMSolverScheduler,
    grayscale_operator,
)
from score_diffusers.conventions import ModelConvention
from score_diffusers.schedulers import build_scheduler
from score_diffusers.schedulers.registry import SCHEDULERS
from score_diffusers.sampling import inverse
from score_diffusers.sde import VESDE, VPSDE
from score_diffusers.testing import (
    ExactScoreUNet,
    GaussianMixture,
    GaussianMixturePosterior,
    mode_weights,
    sliced_wasserstein,
)

from helpers import make_generator, make_mixture, per_sample_generators, tiny_unet

# ---- operators ----------------------------------------------------------------------------------------------------


class SumOfHalves(LinearOperator):
    """A user's operator with only forward and transpose: y = left half + right half of each row, (b, 1, 2, 4) →
    (b, 1, 2, 2); its Gram solve is the base class's conjugate gradients."""

    def forward(self, x):
        return x[..., :2] + x[..., 2:]

    def transpose(self, y):
        return torch.cat([y, y], dim=-1)


def dense(operator: LinearOperator, sample_shape: tuple[int, ...]) -> torch.Tensor:
    """A as a (measurements, samples) matrix, from A applied to the basis."""
    size = math.prod(sample_shape)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *sample_shape)
    return operator.forward(basis).reshape(size, -1).T


SAMPLE_SHAPE = (1, 2, 4)
KEEP = torch.tensor([[[[1.0, 0, 1, 1], [0, 0, 1, 0]]]])
OPERATORS = {
    "mask": (MaskOperator(KEEP), SAMPLE_SHAPE),
    "per-image mask": (MaskOperator(torch.stack([KEEP[0], 1 - KEEP[0]])), SAMPLE_SHAPE),
    "channel mix": (ChannelMixOperator(torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, -1.0]])), (3, 2, 2)),
    "grayscale": (grayscale_operator(3), (3, 2, 2)),
    "rank-deficient channel mix": (ChannelMixOperator(torch.tensor([[1.0, 1.0], [2.0, 2.0]])), (2, 2, 2)),
    "average pool": (AveragePoolOperator(2), (2, 4, 4)),
    "matrix": (MatrixOperator(torch.randn(5, 8, generator=make_generator(0)), SAMPLE_SHAPE), SAMPLE_SHAPE),
    "user's forward/transpose (conjugate gradients)": (SumOfHalves(), SAMPLE_SHAPE),
}


@pytest.mark.parametrize("name", list(OPERATORS))
def test_operator_algebra_matches_its_dense_matrix(name):
    operator, sample_shape = OPERATORS[name]
    x = torch.randn(2, *sample_shape, generator=make_generator(1), dtype=torch.float64)
    y = operator.forward(x)
    v = torch.randn(y.shape, generator=make_generator(2), dtype=torch.float64)
    # Aᵀ is the adjoint: ⟨Ax, v⟩ = ⟨x, Aᵀv⟩.
    torch.testing.assert_close((y * v).sum(), (x * operator.transpose(v)).sum())
    # The Gram solve and the projection, against the dense pseudo-inverse of each image's A (rows in its range).
    for image in range(2):
        single = operator.repeat_interleave(1)
        if isinstance(operator, MaskOperator) and operator.keep.shape[0] == 2:
            single = MaskOperator(operator.keep[image:image + 1])
        matrix = dense(single, sample_shape)
        in_range = single.range_projection(v[image:image + 1]).flatten()
        gram = matrix @ matrix.T
        expected = torch.linalg.pinv(2.5 * gram + 0.3 * torch.eye(len(gram), dtype=torch.float64)) @ in_range
        solved = single.gram_solve(in_range.reshape(1, *v.shape[1:]), 2.5, 0.3).flatten()
        torch.testing.assert_close(solved, expected, rtol=1e-6, atol=1e-8)
        projector = gram @ torch.linalg.pinv(gram)
        torch.testing.assert_close(in_range, projector @ v[image].flatten(), rtol=1e-6, atol=1e-8)
        rank = int(torch.linalg.matrix_rank(matrix))
        assert float(single.rank(v[image:image + 1])[0]) == rank
        # The pseudo-inverse gives a sample whose measurement is the (range part of the) measurement.
        least_norm = single.pseudo_inverse(in_range.reshape(1, *v.shape[1:]))
        torch.testing.assert_close(single.forward(least_norm).flatten(), in_range, rtol=1e-6, atol=1e-8)


def test_operator_construction_refuses_bad_input():
    with pytest.raises(ValueError, match="binary"):
        MaskOperator(torch.full((1, 1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="batch or 1"):
        MaskOperator(torch.ones(4))
    with pytest.raises(ValueError, match="factor"):
        AveragePoolOperator(0)
    with pytest.raises(ValueError, match="sample_shape"):
        MatrixOperator(torch.ones(2, 6), (1, 2, 2))
    with pytest.raises(ValueError, match="matrix"):
        ChannelMixOperator(torch.ones(3))
    with pytest.raises(ValueError, match="num_channels"):
        grayscale_operator(0)


# ---- the twisted proposal -----------------------------------------------------------------------------------------


def test_twisted_proposal_draws_the_conditioned_gaussian_and_its_normaliser():
    """N(m, c²I) conditioned on y ~ N(A x/α, σ_y²I + σ̄²AAᵀ): the draws' mean and covariance are the Kalman
    update's, and log Z differences between two means are those of N(y; A m/α, S)."""
    torch.manual_seed(0)
    matrix = torch.randn(2, 3, dtype=torch.float64)
    operator = MatrixOperator(matrix)
    kernel_std, alpha, ratio, noise_std = 0.7, 0.8, 0.5, 0.3
    mean = torch.tensor([[0.2, -0.4, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    n = 200_000
    noises = tuple(torch.randn(n, size, dtype=torch.float64, generator=make_generator(seed))
                   for size, seed in ((3, 1), (2, 2), (3, 3)))
    draws, log_z = inverse.twisted_proposal(mean.expand(n, 3), kernel_std, alpha, ratio, y.expand(n, 2), operator,
                                            noise_std**2, noises)
    observation = matrix / alpha
    covariance = (ratio**2) * matrix @ matrix.T + noise_std**2 * torch.eye(2, dtype=torch.float64)
    innovation = kernel_std**2 * observation @ observation.T + covariance
    gain = kernel_std**2 * observation.T @ torch.linalg.inv(innovation)
    expected_mean = mean[0] + gain @ (y[0] - observation @ mean[0])
    expected_cov = kernel_std**2 * (torch.eye(3, dtype=torch.float64) - gain @ observation)
    torch.testing.assert_close(draws.mean(0), expected_mean, atol=0.01, rtol=0)
    torch.testing.assert_close(draws.T.cov(), expected_cov, atol=0.01, rtol=0)
    other = mean + torch.tensor([[1.0, 0.5, -0.5]], dtype=torch.float64)
    _, other_log_z = inverse.twisted_proposal(other, kernel_std, alpha, ratio, y, operator, noise_std**2,
                                              tuple(noise[:1] for noise in noises))
    exact = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), innovation)
    expected = exact.log_prob(y[0] - observation @ other[0]) - exact.log_prob(y[0] - observation @ mean[0])
    torch.testing.assert_close(other_log_z[0] - log_z[0], expected)


def test_systematic_resampling_and_effective_sample_size():
    log_weights = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64))
    indices = inverse.systematic_resample(log_weights, torch.tensor([0.5, 0.0]))
    # Positions (0.5 + j)/4 = 0.125, 0.375, 0.625, 0.875 against cumulative 0.1, 0.3, 0.6, 1.0.
    assert indices.tolist() == [[1, 2, 3, 3], [0, 1, 2, 3]]
    ess = inverse.effective_sample_size(log_weights)
    torch.testing.assert_close(ess, torch.tensor([1 / 0.3, 4.0], dtype=torch.float64))


# ---- SMC against the closed-form posterior -------------------------------------------------------------------------

# Two components split by every coordinate; the first coordinate observed at 0.5 favours the rarer one.
TWO_MODES = GaussianMixture(torch.tensor([[1.0, 2, 2, 2], [-1.0, -2, -2, -2]]), torch.tensor([0.8, 0.8]),
                            torch.tensor([0.3, 0.7]))
TWO_MODES_KEEP = torch.tensor([[1.0, 0, 0, 0]])
TWO_MODES_Y = torch.tensor([[0.5, 0.0, 0.0, 0.0]])


def smc_samples(sde, num_particles, num_steps, num_samples=2000, seed=3):
    convention = ModelConvention(sde, "continuous", "score", 1000)

    def score_fn(x, t):
        return TWO_MODES.score(x, *convention.coefficients(t))

    measurement = TWO_MODES_Y.expand(num_samples, -1).contiguous()
    return inverse.twisted_smc(score_fn, convention, measurement, MaskOperator(TWO_MODES_KEEP), (4,), 0.0,
                               num_particles, num_steps, make_generator(seed))


@pytest.mark.parametrize("sde", [VESDE(0.01, 20.0), VPSDE()], ids=["ve", "vp"])
def test_smc_mode_weights_and_component_moments_converge_to_the_posterior(sde):
    posterior = GaussianMixturePosterior(TWO_MODES, torch.eye(4)[:1], TWO_MODES_Y[0, :1].double(), 0.0)
    assert 0.6 < float(posterior.weights[0]) < 0.75  # the observation reverses the prior's 0.3 / 0.7

    def weight_error(result):
        return abs(float(mode_weights(TWO_MODES, result.sample.double())[0] - posterior.weights[0]))

    one = smc_samples(sde, 1, 150)
    many = smc_samples(sde, 16, 150)
    # One particle is the guided chain without weights: it keeps the prior's mode weights.
    assert weight_error(one) > 0.3
    assert weight_error(many) < 0.03
    labels = TWO_MODES.classify(many.sample.double())
    for k in range(2):
        component = many.sample.double()[labels == k]
        stds = posterior.covariances[k].diagonal().sqrt()
        # Four standard errors of the mean (and about four of the std), plus 0.02 for the 150-step chain.
        tolerance = 4 * float(stds.max()) / math.sqrt(len(component)) + 0.02
        torch.testing.assert_close(component.mean(0), posterior.means[k], atol=tolerance, rtol=0)
        torch.testing.assert_close(component[:, 1:].std(0), stds[1:], atol=tolerance, rtol=0)
    assert many.effective_sample_size.shape == (150, 2000)
    assert bool((many.effective_sample_size >= 1 - 1e-9).all() & (many.effective_sample_size <= 16 + 1e-9).all())
    assert many.nfe == 150 * 16


def test_smc_error_falls_with_particles_in_64_dimensions():
    """Half of a 64-dimensional mixture observed: sliced W2 to the posterior falls with particles, to near the floor of
    two exact posterior sets."""
    mixture = GaussianMixture.random(8, 64, generator=make_generator(0))
    x0, _ = mixture.sample(1, make_generator(1000))
    keep = torch.zeros(1, 64)
    keep[:, :32] = 1
    posterior = GaussianMixturePosterior(mixture, torch.eye(64)[:32], x0[0, :32], 0.0)
    convention = ModelConvention(VESDE(0.01, 50.0), "continuous", "score", 1000)
    n = 500
    reference = posterior.sample(n, make_generator(1))[0]
    floor = sliced_wasserstein(posterior.sample(n, make_generator(2))[0], reference, generator=make_generator(0))

    def error(num_particles):
        result = inverse.twisted_smc(lambda x, t: mixture.score(x, *convention.coefficients(t)), convention,
                                     (x0.float() * keep).expand(n, -1).contiguous(), MaskOperator(keep), (64,), 0.0,
                                     num_particles, 50, make_generator(3))
        return sliced_wasserstein(result.sample.double(), reference, generator=make_generator(0))

    errors = [error(count) for count in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1.6 * floor


def test_smc_is_reproducible_per_image_and_keeps_the_observation():
    keep = TWO_MODES_KEEP
    convention = ModelConvention(VESDE(0.01, 20.0), "continuous", "score", 1000)

    def run(measurement, generator):
        return inverse.twisted_smc(lambda x, t: TWO_MODES.score(x, *convention.coefficients(t)), convention,
                                   measurement, MaskOperator(keep), (4,), 0.0, 4, 10, generator).sample

    measurement = torch.tensor([[0.5, 0, 0, 0], [-0.3, 0, 0, 0], [1.2, 0, 0, 0]])
    batch = run(measurement, per_sample_generators([5, 6, 7]))
    alone = run(measurement[1:2], per_sample_generators([6]))
    torch.testing.assert_close(batch[1:2], alone)
    torch.testing.assert_close(batch[:, 0], measurement[:, 0])  # σ_y = 0: the observed coordinate is y
    torch.testing.assert_close(run(measurement, make_generator(1)), run(measurement, make_generator(1)))


def test_smc_reports_a_non_finite_score_as_a_sampling_error():
    from score_diffusers import SamplingError

    convention = ModelConvention(VESDE(0.01, 20.0), "continuous", "score", 1000)
    with pytest.raises(SamplingError, match="step 0"):
        inverse.twisted_smc(lambda x, t: torch.full_like(x, math.nan), convention, TWO_MODES_Y,
                            MaskOperator(TWO_MODES_KEEP), (4,), 0.0, 2, 3)


# ---- the pipelines with the exact score ----------------------------------------------------------------------------

MIXTURE = make_mixture()
IMAGE_SHAPE = (1, 4, 4)


def exact_pipeline(klass, scheduler=None):
    scheduler = scheduler or SDEDPMSolverScheduler(sigma_max=20.0)
    pipe = klass(unet=ExactScoreUNet(MIXTURE, scheduler, IMAGE_SHAPE), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def half_observed(num_images: int, seed: int = 0):
    x0, _ = MIXTURE.sample(num_images, make_generator(seed))
    keep = torch.zeros(1, *IMAGE_SHAPE)
    keep[..., :2, :] = 1
    operator = MaskOperator(keep)
    return x0.float().reshape(num_images, *IMAGE_SHAPE), operator


def test_methods_bias_is_measured_against_smc_at_equal_evaluations():
    """A random 8 × 16 operator with σ_y = 0.05: at equal NFE per image (800) SMC is at the floor of two exact
    posterior sets; replacement (which treats y as noiseless and conditions on a noised copy) and guidance (a
    Gaussian around x̂₀ for p(y | x_t)) are biased: sliced W2 of about 50× and 20× the floor here. The figures are
    in `benchmarks/bench_inverse.py`; here their order is held."""
    matrix = torch.randn(8, 16, generator=make_generator(1)) / 4
    operator = MatrixOperator(matrix, IMAGE_SHAPE)
    x0, _ = MIXTURE.sample(1, make_generator(7))
    noise_std = 0.05
    y = (matrix.double() @ x0[0] + noise_std * torch.randn(8, generator=make_generator(8), dtype=torch.float64))
    posterior = GaussianMixturePosterior(MIXTURE, matrix, y, noise_std)
    n = 400
    reference = posterior.sample(n, make_generator(9))[0]
    measurement = y.float()[None].expand(n, -1).contiguous()

    def error(method, scheduler=None, **kwargs):
        out = exact_pipeline(ScoreInverseProblemPipeline, scheduler)(
            measurement, operator, noise_std, method, generator=make_generator(4), output_type="latent", **kwargs)
        return sliced_wasserstein(out.images.reshape(n, -1).double(), reference, generator=make_generator(0)), out.nfe

    smc, smc_nfe = error("smc", num_inference_steps=50, num_particles=16)
    replacement, replacement_nfe = error("replacement", PredictorCorrectorScheduler(sigma_max=20.0),
                                         num_inference_steps=400)
    guidance, guidance_nfe = error("guidance", num_inference_steps=800)
    assert smc_nfe == replacement_nfe == guidance_nfe == 800
    floor = sliced_wasserstein(posterior.sample(n, make_generator(10))[0], reference, generator=make_generator(0))
    assert smc < 2 * floor
    assert replacement > 10 * floor
    assert guidance > 5 * floor


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_inpainting_keeps_the_kept_pixels_with_every_scheduler(name):
    scheduler = build_scheduler(name, {"sde_type": "ve", "sigma_max": 20.0}) if name != "annealed-langevin" else \
        build_scheduler(name, {"sigma_max": 20.0, "num_train_timesteps": 10})
    x0, operator = half_observed(2)
    pipe = exact_pipeline(ScoreInverseProblemPipeline, scheduler)
    out = pipe(operator.forward(x0), operator, method="replacement", num_inference_steps=4,
               generator=make_generator(0), output_type="latent")
    kept = operator.keep.expand_as(x0) > 0
    torch.testing.assert_close(out.images[kept], x0[kept])
    assert out.nfe == len(pipe.scheduler.timesteps)
    guided = pipe(operator.forward(x0), operator, method="guidance", num_inference_steps=4,
                  generator=make_generator(0), output_type="latent")
    assert bool(torch.isfinite(guided.images).all())


@pytest.mark.parametrize("method", ["smc", "replacement"])
@pytest.mark.parametrize("kind", ["pil", "np", "pt"])
def test_inpaint_pipeline_mask_convention_and_inputs(method, kind):
    """White (1) is generated, black (0) kept; PIL, numpy and tensor inputs give the same result."""
    x0, _ = half_observed(2)
    images = ((x0 / 8) + 0.5).clamp(0, 1)  # the mixture scaled into [0, 1] images
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:, :] = 1
    if kind == "pil":
        image_input = [PIL.Image.fromarray(np.uint8(np.round(image[0].numpy() * 255))) for image in images]
        images = torch.stack([torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None] for image in image_input])
        mask_input = PIL.Image.fromarray(np.uint8(mask[0, 0].numpy() * 255))
    elif kind == "np":
        image_input, mask_input = images.permute(0, 2, 3, 1).numpy(), mask.permute(0, 2, 3, 1).numpy()
    else:
        image_input, mask_input = images, mask
    pipe = exact_pipeline(ScoreInpaintPipeline)
    out = pipe(image_input, mask_input, method=method, num_inference_steps=6, num_particles=2,
               generator=per_sample_generators([0, 1]), output_type="pt")
    torch.testing.assert_close(out.images[..., :2, :], images[..., :2, :], atol=1e-6, rtol=0)
    assert not torch.allclose(out.images[..., 2:, :], images[..., 2:, :])
    assert out.nfe == (12 if method == "smc" else 6)
    assert (out.effective_sample_size is not None) == (method == "smc")


def test_colorization_keeps_the_gray_channel():
    mixture = GaussianMixture.random(3, 12, mean_scale=0.3, std_range=(0.05, 0.1), generator=make_generator(0))
    scheduler = SDEDPMSolverScheduler(sigma_max=5.0)
    pipe = ScoreInverseProblemPipeline(unet=ExactScoreUNet(mixture, scheduler, (3, 2, 2)), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    x0, _ = mixture.sample(2, make_generator(1))
    x0 = x0.float().reshape(2, 3, 2, 2)
    operator = grayscale_operator(3)
    gray = operator.forward(x0)
    for method in ("smc", "replacement"):
        out = pipe(gray, operator, method=method, num_inference_steps=8, generator=make_generator(2),
                   output_type="latent")
        torch.testing.assert_close(out.images.mean(1, keepdim=True), gray, atol=1e-5, rtol=0)


def test_sdedit_strength_one_is_unconditional_sampling_and_small_strength_stays_close():
    x0, _ = half_observed(3)
    images = ((x0 / 8) + 0.5).clamp(0, 1)
    edit = exact_pipeline(ScoreImg2ImgPipeline)
    generate = exact_pipeline(ScoreGuidedPipeline)
    full = edit(images, strength=1.0, num_inference_steps=10, generator=make_generator(3), output_type="pt").images
    unconditional = generate(batch_size=3, num_inference_steps=10, generator=make_generator(3), output_type="pt").images
    torch.testing.assert_close(full, unconditional)
    light = edit(images, strength=0.1, num_inference_steps=10, generator=make_generator(3), output_type="pt").images
    assert float((light - images).abs().max()) < 0.05 < float((full - images).abs().max())


@pytest.mark.parametrize("strength", [0.3, 0.7])
def test_sdedit_with_the_exact_score_maps_data_to_data(strength):
    """Edited samples of p₀ are samples of p₀: sliced W2 to a fresh p₀ sample within twice the floor of two exact
    sets, mode weights within sampling noise. The mixture is scaled into [−1, 1], the images' space."""
    n = 1500
    large, _ = MIXTURE.sample(n, make_generator(11))
    scale = float(large.abs().max()) * 1.01
    mixture = GaussianMixture(MIXTURE.means / scale, MIXTURE.stds / scale, MIXTURE.weights)
    x0 = large / scale
    scheduler = SDEDPMSolverScheduler(sigma_max=5.0)
    edit = ScoreImg2ImgPipeline(unet=ExactScoreUNet(mixture, scheduler, IMAGE_SHAPE), scheduler=scheduler)
    edit.set_progress_bar_config(disable=True)
    images = (x0.float().reshape(n, *IMAGE_SHAPE) + 1) / 2
    edited = edit(images, strength=strength, num_inference_steps=30, generator=make_generator(12),
                  output_type="latent").images.reshape(n, -1).double()
    reference, _ = mixture.sample(n, make_generator(13))
    floor = sliced_wasserstein(x0.double(), reference, generator=make_generator(0))
    assert sliced_wasserstein(edited, reference, generator=make_generator(0)) < 2 * floor
    assert float(0.5 * (mode_weights(mixture, edited) - mixture.weights).abs().sum()) < 0.05
    assert float((edited - x0).abs().mean()) > 0.01  # it did edit


# ---- loading and bad input ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("klass", [ScoreInpaintPipeline, ScoreImg2ImgPipeline, ScoreInverseProblemPipeline])
def test_pipelines_load_a_stock_ddpm_folder(ddpm_folder, klass):
    pipe = klass.from_pretrained(ddpm_folder)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 1, 8, 8, generator=make_generator(0))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    if klass is ScoreInpaintPipeline:
        out = pipe(image, mask, num_inference_steps=2, num_particles=2, output_type="pt")
    elif klass is ScoreImg2ImgPipeline:
        out = pipe(image, strength=0.5, num_inference_steps=4, output_type="pt")
    else:
        operator = AveragePoolOperator(2)
        out = pipe(operator.forward(image * 2 - 1), operator, 0.1, num_inference_steps=2, num_particles=2,
                   output_type="pt")
    assert out.images.shape == (1, 1, 8, 8) and bool(torch.isfinite(out.images).all())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, im, m: p(im, torch.zeros(1, 1, 4, 4)), "does not fit"),
        (lambda p, im, m: p(im, m * 0.5), "binary"),
        (lambda p, im, m: p(im, m, method="dps"), "method"),
        (lambda p, im, m: p(im, m, num_particles=0), "num_particles"),
        (lambda p, im, m: p(im, m, num_inference_steps=0), "num_inference_steps"),
        (lambda p, im, m: p(im * 3, m), r"\[0, 1\]"),
        (lambda p, im, m: p(im[:, :, :4], m), "8 × 8"),
        (lambda p, im, m: p(im, m, generator=[make_generator(0)] * 2), "generator"),
        (lambda p, im, m: p(im, m, generator=0), "generator"),
    ],
)
def test_inpaint_bad_input_raises(ddpm_folder, call, message):
    pipe = ScoreInpaintPipeline.from_pretrained(ddpm_folder)
    image = torch.rand(1, 1, 8, 8, generator=make_generator(0))
    mask = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match=message):
        call(pipe, image, mask)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise_std": -0.1}, "noise_std"),
        ({"operator": "mask"}, "operator"),
        ({"measurement": torch.zeros(1, 1, 3, 3)}, "shape"),
        ({"operator": MatrixOperator(torch.ones(2, 10))}, "does not apply"),
        ({"measurement": torch.full((1, 1, 4, 4), math.nan)}, "NaN"),
        ({"guidance_scale": 1.0}, "guidance_scale"),
        ({"particle_batch_size": 0}, "particle_batch_size"),
    ],
)
def test_inverse_bad_input_raises(ddpm_folder, kwargs, message):
    pipe = ScoreInverseProblemPipeline.from_pretrained(ddpm_folder)
    operator = AveragePoolOperator(2)
    arguments = {"measurement": torch.zeros(1, 1, 4, 4), "operator": operator, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**arguments)


@pytest.mark.parametrize("strength, message", [(0.0, "strength"), (1.5, "strength"), (math.nan, "strength"),
                                               (0.01, "runs no step")])
def test_sdedit_bad_strength_raises(ddpm_folder, strength, message):
    pipe = ScoreImg2ImgPipeline.from_pretrained(ddpm_folder)
    with pytest.raises(ValueError, match=message):
        pipe(torch.rand(1, 1, 8, 8), strength=strength, num_inference_steps=10)


def test_smc_particle_chunks_do_not_change_the_result():
    """`particle_batch_size` bounds how many particles one unet call sees; the samples are the same."""
    x0, operator = half_observed(2)
    pipe = exact_pipeline(ScoreInverseProblemPipeline)
    calls = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda sample, timestep: calls.append(len(sample)) or forward(sample, timestep)

    def run(chunk):
        return pipe(operator.forward(x0), operator, num_inference_steps=5, num_particles=6, particle_batch_size=chunk,
                    generator=make_generator(0), output_type="latent").images

    torch.testing.assert_close(run(5), run(64))
    assert max(calls[: len(calls) // 2]) == 5 and max(calls) == 12


class LinearNoiseFreeClassifier(torch.nn.Module):
    """logits = W·x (ignoring the noise level), for 1 × 4 × 4 samples and 3 classes."""

    device = torch.device("cpu")

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 16, generator=make_generator(9)))

    def forward(self, sample, timestep):
        return sample.reshape(len(sample), -1) @ self.weight.T


@pytest.mark.parametrize("method", ["replacement", "guidance"])
def test_classifier_guidance_combines_with_inpainting(method):
    x0, operator = half_observed(64)
    scheduler = SDEDPMSolverScheduler(sigma_max=20.0)
    pipe = ScoreInverseProblemPipeline(unet=ExactScoreUNet(MIXTURE, scheduler, IMAGE_SHAPE), scheduler=scheduler,
                                       classifier=LinearNoiseFreeClassifier())
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(measurement=operator.forward(x0), operator=operator, method=method, num_inference_steps=20,
                  generator=make_generator(0), output_type="latent", class_labels=2)
    plain = pipe(**kwargs).images
    guided = pipe(**kwargs, guidance_scale=3.0).images
    kept = operator.keep.expand_as(x0) > 0
    if method == "replacement":
        torch.testing.assert_close(guided[kept], x0[kept])
    logits = LinearNoiseFreeClassifier()

    def class_two_share(images):
        with torch.no_grad():
            return float((logits(images, None).argmax(1) == 2).float().mean())

    assert class_two_share(guided) > class_two_share(plain)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_sdedit_runs_with_every_scheduler(name):
    """Every scheduler of the registry starts mid-run at the strength's entry (a multiple of its `order`)."""
    config = {"sigma_max": 20.0, "num_train_timesteps": 10} if name == "annealed-langevin" else \
        {"sde_type": "ve", "sigma_max": 20.0}
    scheduler = build_scheduler(name, config)
    x0, _ = half_observed(2)
    images = ((x0 / 8) + 0.5).clamp(0, 1)
    edit = exact_pipeline(ScoreImg2ImgPipeline, scheduler)
    calls = []
    edit(images, strength=0.5, num_inference_steps=6, generator=make_generator(0), output_type="pt",
         callback_on_step_end=lambda pipe, i, t, kwargs: calls.append(i) or {})
    assert len(calls) == len(edit.scheduler.timesteps) - edit.scheduler.begin_index > 0
    assert edit.scheduler.begin_index == 3 * edit.scheduler.order


def test_pil_images_of_one_bit_are_read_as_0_or_1_and_float_modes_are_refused():
    from score_diffusers.pipelines.image_processing import images_to_tensor

    bits = PIL.Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1")
    torch.testing.assert_close(images_to_tensor(bits), torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]]))
    floats = PIL.Image.fromarray(np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32), mode="F")
    with pytest.raises(ValueError, match="mode 'F'"):
        images_to_tensor(floats, "image")
    with pytest.raises(ValueError, match="non-empty"):
        images_to_tensor([], "image")
