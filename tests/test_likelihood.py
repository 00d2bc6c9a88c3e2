"""Probability-flow likelihoods and encoding against closed forms (Gaussian and Gaussian-mixture data, exact scores).

What the ODE computes: started at a data point x = x_ε it returns log p_prior(x_1) + ∫_ε^1 ∇·F dt, which equals the
density of the data perturbed to t = ε, log p_ε(x), when p_1 is exactly the prior. It is not exactly: p_1 is the
data perturbed to t = 1, whose mean α_1μ and extra variance α_1²s² the prior ignores. The pointwise gap
log p_prior(x_1) − log p_1(x_1) is of first order in α_1|μ|/σ_1, so the data here is small against σ_max (VE) and
against 1/α_1 ≈ 150 (VP, sub-VP), and the solver alone is checked by putting the exact p_1 in place of the prior.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from score_diffusers import ProbabilityFlowScheduler, log_likelihood
from score_diffusers.conventions import ModelConvention
from score_diffusers.sde import VESDE, VPSDE
from score_diffusers.testing import ExactScoreModel, GaussianMixture
from score_diffusers.checks import SamplingError
from score_diffusers.likelihood import (
    LOG_SIGMA_METHODS,
    METHODS,
    TORCHDIFFEQ_FIXED_METHODS,
    decode,
    default_ab4_steps,
    dequantized_log_likelihood,
    eight_bit_offset,
    encode,
    round_trip,
)

DIM = 4
NUM_SAMPLES = 32
# VE's σ_max, large against the data (|μ| ≈ 1) so the prior N(0, σ_max²) matches p_1 to ~0.003 bits/dim.
VE_SIGMA_MAX = 200.0
# The bar: the ODE log-likelihood within 0.01 bits/dim of the closed form.
BPD_TOLERANCE = 0.01
# The solver's own error at rtol = atol = 1e-5, once the prior is replaced by the exact p_1.
SOLVER_BPD_TOLERANCE = 1e-3
SCHEDULER_KWARGS = {"ve": {"sigma_max": VE_SIGMA_MAX}, "vp": {}, "subvp": {}}


def _mixtures() -> dict[str, GaussianMixture]:
    generator = torch.Generator().manual_seed(0)
    return {
        "gaussian": GaussianMixture(torch.full((1, DIM), 0.3, dtype=torch.float64), 0.6),
        "mixture": GaussianMixture.random(3, DIM, mean_scale=0.5, generator=generator),
    }


MIXTURES = _mixtures()


def _setup(sde_type: str, data: str = "mixture", **scheduler_kwargs):
    mixture = MIXTURES[data]
    scheduler = ProbabilityFlowScheduler(sde_type=sde_type, **SCHEDULER_KWARGS[sde_type], **scheduler_kwargs)
    samples, _ = mixture.sample(NUM_SAMPLES, generator=torch.Generator().manual_seed(1))
    return mixture, scheduler, ExactScoreModel(mixture, scheduler), samples


def _marginal(scheduler, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.tensor(t, dtype=torch.float64)
    return scheduler.sde.mean_coeff(t), scheduler.sde.marginal_std(t)


def _to_bpd(nats: torch.Tensor) -> torch.Tensor:
    return nats / (DIM * math.log(2))


def _exact(model, scheduler, samples, **kwargs):
    return log_likelihood(
        model, scheduler, samples, divergence="exact", dtype=torch.float64, show_progress=False, **kwargs
    )


# ---- accuracy against the closed form ------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["gaussian", "mixture"])
@pytest.mark.parametrize("sde_type", ["ve", "vp", "subvp"])
def test_exact_divergence_matches_closed_form(sde_type, data):
    mixture, scheduler, model, samples = _setup(sde_type, data)
    out = _exact(model, scheduler, samples)

    assert out.log_likelihood.shape == out.bits_per_dim.shape == (NUM_SAMPLES,)
    assert out.latent.shape == samples.shape and out.nfe > 0
    true = mixture.log_prob(samples, *_marginal(scheduler, scheduler.sampling_eps))
    assert _to_bpd(out.log_likelihood - true).abs().max() < BPD_TOLERANCE
    # The solver alone: swap the prior for the exact density at t = 1.
    prior_gap = out.prior_log_prob - mixture.log_prob(out.latent, *_marginal(scheduler, 1.0))
    assert _to_bpd(out.log_likelihood - prior_gap - true).abs().max() < SOLVER_BPD_TOLERANCE
    assert torch.allclose(out.bits_per_dim, -_to_bpd(out.log_likelihood))
    assert torch.equal(out.log_likelihood_stderr, torch.zeros(NUM_SAMPLES, dtype=torch.float64))


@pytest.mark.parametrize("method", ["dopri5", "ab4"])
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@pytest.mark.parametrize("sde_type", ["ve", "vp"])
def test_hutchinson_within_reported_standard_error(sde_type, probe, method):
    _, scheduler, model, samples = _setup(sde_type)
    exact = _exact(model, scheduler, samples, method=method)
    estimate = log_likelihood(
        model, scheduler, samples, divergence="hutchinson", probe=probe, num_probes=8, dtype=torch.float64,
        generator=torch.Generator().manual_seed(2), show_progress=False, method=method,
    )
    stderr = estimate.log_likelihood_stderr
    assert bool((stderr > 0).all()) and bool(torch.isfinite(stderr).all())
    error = estimate.log_likelihood - exact.log_likelihood
    # Per sample the error is t-distributed with 7 degrees of freedom in units of its SE: P(|t₇| > 4) ≈ 0.5%.
    assert (error.abs() > 4 * stderr).float().mean() <= 0.1
    # Over the batch the errors are independent: the mean error within 4 standard errors of the mean.
    assert error.mean().abs() < 4 * stderr.pow(2).sum().sqrt() / NUM_SAMPLES


def test_single_probe_reports_unknown_standard_error():
    _, scheduler, model, samples = _setup("vp")
    out = log_likelihood(model, scheduler, samples[:4], num_probes=1, method="rk4", num_steps=4, show_progress=False)
    assert bool(out.log_likelihood_stderr.isnan().all()) and bool(torch.isfinite(out.log_likelihood).all())


@pytest.mark.parametrize("sde_type", ["ve", "vp", "subvp"])
def test_ab4_in_log_sigma_matches_closed_form_at_its_default_steps_within_its_error_estimate(sde_type):
    """The fixed-grid Adams–Bashforth mode: one evaluation per step, within the solver tolerance of the closed form at
    its default steps (6 per unit of log σ̄), its error estimate above the actual error; other methods estimate none."""
    mixture, scheduler, model, samples = _setup(sde_type)
    out = _exact(model, scheduler, samples, method="ab4")
    # Three RK4 steps start it (four evaluations each), then one evaluation per step.
    assert out.nfe == default_ab4_steps(scheduler.convention) + 9
    true = mixture.log_prob(samples, *_marginal(scheduler, scheduler.sampling_eps))
    prior_gap = out.prior_log_prob - mixture.log_prob(out.latent, *_marginal(scheduler, 1.0))
    error = (out.log_likelihood - prior_gap - true).abs()
    assert _to_bpd(error).max() < SOLVER_BPD_TOLERANCE
    assert bool((out.error_estimate >= error).all())
    # The latent is the end of the same trajectory as the adaptive solve's (to 1%: the prior's density barely
    # depends on it, so the error estimate leaves it out).
    torch.testing.assert_close(out.latent, _exact(model, scheduler, samples).latent, rtol=1e-2, atol=1e-3)
    assert bool(_exact(model, scheduler, samples[:2]).error_estimate.isnan().all())
    # Fewer than four steps are all Runge–Kutta, and their error goes unestimated.
    short = _exact(model, scheduler, samples[:2], method="ab4", num_steps=2)
    assert short.nfe == 8 and bool(short.error_estimate.isnan().all())
    # The dequantised bound passes each draw's estimate on.
    draws = dequantized_log_likelihood(
        model, scheduler, samples[:2].clamp(-1, 1), data_range=(-1.0, 1.0), num_samples=3, method="ab4",
        num_steps=6, divergence="exact", show_progress=False, generator=torch.Generator().manual_seed(0),
    )
    assert draws.error_estimate.shape == (2, 3) and bool((draws.error_estimate > 0).all())


@pytest.mark.parametrize("sde_type", ["ve", "subvp"])
def test_ab4_converges_at_fourth_order(sde_type):
    """Doubling the steps divides the solver error by about 2⁴ = 16 (more than 8, a third order's)."""
    mixture, scheduler, model, samples = _setup(sde_type)
    samples = samples[:8]
    true = mixture.log_prob(samples, *_marginal(scheduler, scheduler.sampling_eps))

    def solver_error(num_steps: int) -> float:
        out = _exact(model, scheduler, samples, method="ab4", num_steps=num_steps)
        prior_gap = out.prior_log_prob - mixture.log_prob(out.latent, *_marginal(scheduler, 1.0))
        return float((out.log_likelihood - prior_gap - true).abs().mean())

    coarse, fine = solver_error(40), solver_error(80)
    assert coarse / fine > 10, (coarse, fine)


def test_ab4_rademacher_estimate_is_the_x_space_estimate_of_the_same_probes():
    """With vᵀv = D the scaled flow's vᵀ(∂G/∂w)v differs from the x-space one by a known term only, so the two
    estimates agree within the solvers' error, probe by probe."""
    _, scheduler, model, samples = _setup("vp")
    kwargs = dict(divergence="hutchinson", num_probes=3, dtype=torch.float64, show_progress=False)
    x_space = log_likelihood(model, scheduler, samples[:8], generator=torch.Generator().manual_seed(4), **kwargs)
    scaled = log_likelihood(
        model, scheduler, samples[:8], generator=torch.Generator().manual_seed(4), method="ab4", **kwargs
    )
    assert _to_bpd(scaled.log_likelihood - x_space.log_likelihood).abs().max() < SOLVER_BPD_TOLERANCE
    torch.testing.assert_close(scaled.log_likelihood_stderr, x_space.log_likelihood_stderr, rtol=1e-2, atol=1e-3)


def test_ab4_answers_do_not_depend_on_the_batch():
    """Each sample has its own state scale on one fixed grid: its answer is the same alone or in any chunk."""
    _, scheduler, model, samples = _setup("ve")
    kwargs = dict(method="ab4", num_steps=12, num_probes=2, dtype=torch.float64, show_progress=False)
    whole = log_likelihood(model, scheduler, samples[:6], generator=torch.Generator().manual_seed(3), **kwargs)
    chunks = log_likelihood(
        model, scheduler, samples[:6], generator=torch.Generator().manual_seed(3), batch_size=4, **kwargs
    )
    torch.testing.assert_close(chunks.log_likelihood, whole.log_likelihood, rtol=0, atol=1e-10)
    torch.testing.assert_close(chunks.error_estimate, whole.error_estimate, rtol=0, atol=1e-12)


@pytest.mark.parametrize("function", [encode, decode])
def test_encode_and_decode_refuse_the_likelihoods_own_method(function):
    _, scheduler, model, samples = _setup("vp")
    with pytest.raises(ValueError, match="`method='ab4'` is implemented for `log_likelihood` only; `(en|de)code` "
                                         "takes 'dopri5', .*'DOP853': the adaptive default"):
        function(model, scheduler, samples[:2], method="ab4", show_progress=False)


def test_scipy_rk45_agrees_with_dopri5():
    _, scheduler, model, samples = _setup("subvp")
    reference = _exact(model, scheduler, samples)
    scipy_out = _exact(model, scheduler, samples, method="RK45")
    assert _to_bpd(scipy_out.log_likelihood - reference.log_likelihood).abs().max() < SOLVER_BPD_TOLERANCE
    assert torch.allclose(scipy_out.latent, reference.latent, atol=1e-3)


def test_epsilon_prediction_equals_score_path():
    _, score_scheduler, score_model, samples = _setup("vp", timestep_type="discrete")
    _, eps_scheduler, eps_model, _ = _setup("vp", timestep_type="discrete", prediction_type="epsilon")
    score_out = _exact(score_model, score_scheduler, samples)
    eps_out = _exact(eps_model, eps_scheduler, samples)
    assert torch.allclose(eps_out.log_likelihood, score_out.log_likelihood, rtol=0, atol=1e-8)
    assert eps_out.nfe == score_out.nfe


# ---- encoding ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_type", ["ve", "vp", "subvp"])
def test_encode_decode_round_trip(sde_type):
    _, scheduler, model, samples = _setup(sde_type)
    out = round_trip(model, scheduler, samples, dtype=torch.float64, show_progress=False)
    assert out.error.shape == (NUM_SAMPLES,)
    assert out.error.max() < 1e-3
    assert out.nfe > 0
    # The same ODE as the likelihood: encode's latent is log_likelihood's.
    latent = _exact(model, scheduler, samples).latent
    assert torch.allclose(out.latent, latent, atol=1e-3 * scheduler.sde.prior_std)


def test_encode_and_decode_are_separately_callable():
    _, scheduler, model, samples = _setup("vp")
    latents = encode(model, scheduler, samples, dtype=torch.float64, show_progress=False)
    decoded = decode(model, scheduler, latents.sample, dtype=torch.float64, show_progress=False)
    assert latents.sample.shape == decoded.sample.shape == samples.shape
    assert (decoded.sample - samples).abs().max() < 1e-3
    # Latents of the VP flow look like the N(0, I) prior.
    assert abs(float(latents.sample.std()) - 1.0) < 0.3


# ---- batching and randomness ---------------------------------------------------------------------------------------


def test_batch_size_gives_the_same_answer():
    _, scheduler, model, samples = _setup("vp")
    kwargs = dict(num_probes=2, dtype=torch.float64, show_progress=False)
    # Fixed grid: identical results whatever the chunking (probes are drawn up front for the whole batch).
    samples = samples[:8]
    whole = log_likelihood(
        model, scheduler, samples, method="rk4", num_steps=8, generator=torch.Generator().manual_seed(5), **kwargs
    )
    single = log_likelihood(
        model, scheduler, samples, method="rk4", num_steps=8, generator=torch.Generator().manual_seed(5),
        batch_size=1, **kwargs,
    )
    torch.testing.assert_close(single.log_likelihood, whole.log_likelihood, rtol=0, atol=1e-10)
    assert single.nfe == samples.shape[0] * whole.nfe
    # Adaptive: each chunk picks its own steps, so answers agree within the solver's tolerance.
    adaptive_whole = _exact(model, scheduler, samples)
    adaptive_chunks = _exact(model, scheduler, samples, batch_size=5)
    assert _to_bpd(adaptive_chunks.log_likelihood - adaptive_whole.log_likelihood).abs().max() < 1e-3


def test_per_sample_generators_make_each_sample_reproducible():
    _, scheduler, model, samples = _setup("ve")
    kwargs = dict(num_probes=2, method="rk4", num_steps=6, dtype=torch.float64, show_progress=False)
    generators = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    batch = log_likelihood(model, scheduler, samples[:3], generator=generators, **kwargs)
    alone = log_likelihood(model, scheduler, samples[1:2], generator=[torch.Generator().manual_seed(11)], **kwargs)
    torch.testing.assert_close(alone.log_likelihood, batch.log_likelihood[1:2], rtol=0, atol=1e-10)
    reseeded = log_likelihood(model, scheduler, samples[:3], generator=torch.Generator().manual_seed(0), **kwargs)
    assert not torch.allclose(reseeded.log_likelihood, batch.log_likelihood)


# ---- image data ----------------------------------------------------------------------------------------------------


def test_eight_bit_offsets_are_score_sdes():
    assert eight_bit_offset((-1.0, 1.0)) == pytest.approx(7.0)
    assert eight_bit_offset((0.0, 1.0)) == pytest.approx(8.0)


def test_data_range_reports_bits_per_dim_on_the_eight_bit_scale():
    _, scheduler, model, samples = _setup("vp")
    samples = samples.clamp(-1, 1)
    raw = _exact(model, scheduler, samples)
    scaled = _exact(model, scheduler, samples, data_range=(-1.0, 1.0))
    torch.testing.assert_close(scaled.log_likelihood, raw.log_likelihood)
    torch.testing.assert_close(scaled.bits_per_dim, raw.bits_per_dim + 7.0)


def test_dequantization_stays_in_each_pixels_bin():
    _, scheduler, model, _ = _setup("vp")
    levels = torch.randint(0, 256, (6, DIM), generator=torch.Generator().manual_seed(3))
    samples = (levels / 255 * 2 - 1).to(torch.float64)
    kwargs = dict(data_range=(-1.0, 1.0), dequantize=True)
    first = _exact(model, scheduler, samples, generator=torch.Generator().manual_seed(4), **kwargs)
    again = _exact(model, scheduler, samples, generator=torch.Generator().manual_seed(4), **kwargs)
    other = _exact(model, scheduler, samples, generator=torch.Generator().manual_seed(5), **kwargs)
    torch.testing.assert_close(again.log_likelihood, first.log_likelihood, rtol=0, atol=0)
    assert not torch.allclose(other.log_likelihood, first.log_likelihood)
    # Decoding the latent gives back the dequantised point, which lies in level k's bin [k, k + 1)/256.
    dequantized = decode(model, scheduler, first.latent, dtype=torch.float64, show_progress=False).sample
    eight_bit = (dequantized + 1) / 2 * 256
    assert bool(((eight_bit - levels) > -1e-3).all()) and bool(((eight_bit - levels) < 1 + 1e-3).all())


def test_float32_unet_with_float64_integration():
    """A Diffusers UNet2DModel in float32 inside a float64 solve; fractional DDPM timesteps arrive as float tensors."""
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    seen = []
    unet.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    scheduler = ProbabilityFlowScheduler.from_config(DDPMScheduler(num_train_timesteps=100).config)
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = log_likelihood(
        unet, scheduler, images, data_range=(-1.0, 1.0), method="rk4", num_steps=2, dtype=torch.float64,
        generator=torch.Generator().manual_seed(0), show_progress=False,
    )
    assert out.log_likelihood.dtype == torch.float64 and bool(torch.isfinite(out.bits_per_dim).all())
    assert all(t.dtype == torch.float32 and t.shape == (2,) for t in seen)
    assert any(float(t[0]) != round(float(t[0])) for t in seen)
    # No autograd graph outlives an evaluation.
    assert not out.log_likelihood.requires_grad and not out.latent.requires_grad
    assert all(p.grad is None for p in unet.parameters())


# ---- input validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"divergence": "trace"}, "`divergence` must be one of 'exact', 'hutchinson'"),
        ({"probe": "sphere"}, "`probe` must be one of 'rademacher', 'gaussian'"),
        ({"method": "rk45"}, "`method` must be one of"),
        ({"rtol": 0.0}, "`rtol` must be a finite number > 0"),
        ({"atol": -1e-5}, "`atol` must be a finite number > 0"),
        ({"num_probes": 0}, "`num_probes` must be an integer >= 1"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
        ({"method": "rk4"}, "needs `num_steps`"),
        ({"num_steps": 10}, "`num_steps` is only used by the fixed-grid methods"),
        ({"data_range": (-0.5, 0.5)}, r"`samples` must lie in `data_range` \[-0.5, 0.5\]"),
        ({"data_range": (1.0, -1.0)}, "`data_range` must be finite with low < high"),
        ({"dequantize": True}, "`dequantize=True` needs `data_range`"),
        ({"dtype": torch.int64}, "`dtype` must be a floating dtype"),
        ({"generator": [torch.Generator()]}, "one per sample"),
        ({"dtype": torch.bfloat16}, "`dtype` torch.bfloat16 is too coarse to integrate the ODE"),
        ({"dtype": torch.float16}, "`dtype` torch.float16 is too coarse to integrate the ODE"),
        # Before: AttributeError from inside.
        ({"dtype": "float64"}, "`dtype` must be a floating dtype such as torch.float64; got 'float64'"),
        ({"generator": 0}, "`generator` must be a `torch.Generator` or a list of them, one per sample; got int"),
        ({"generator": [0, 1]}, "`generator` must be a `torch.Generator` or a list of them, one per sample; got list"),
        # Before: "math domain error".
        ({"data_range": (0.0, math.inf)}, "`data_range` must be finite with low < high"),
        ({"data_range": (math.nan, 1.0)}, "`data_range` must be finite with low < high"),
        ({"max_nfe": 0}, "`max_nfe` must be an integer >= 1"),
        ({"rtol": math.nan}, "`rtol` must be a finite number > 0"),
        ({"atol": math.inf}, "`atol` must be a finite number > 0"),
        ({"method": "euler", "num_steps": 0}, "`num_steps` must be an integer >= 1"),
        ({"method": "rk4", "num_steps": 2.5}, "`num_steps` must be an integer >= 1"),
        # Before: a TypeError from the model at its first call.
        ({"class_labels": torch.tensor([0])}, "`model` is not class-conditional"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    _, scheduler, model, samples = _setup("vp")
    with pytest.raises(ValueError, match=match):
        log_likelihood(model, scheduler, samples.clamp(-1, 1), show_progress=False, **kwargs)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool, torch.complex64])
def test_samples_that_are_not_floating_are_refused(dtype):
    """Before: integer and bool samples were cast to float and scored silently (8-bit levels as if they were the
    model's scale: 8,600 bits/dim), complex ones lost their imaginary part with only PyTorch's warning."""
    _, scheduler, model, samples = _setup("vp")
    with pytest.raises(ValueError, match=rf"`samples` must be a floating tensor; got {dtype}\. Scale 8-bit images"):
        log_likelihood(model, scheduler, samples.to(dtype), show_progress=False)


class _Affine(torch.nn.Module):
    def __init__(self, dropout: float = 0.0, device=None):
        super().__init__()
        self.linear = torch.nn.Linear(DIM, DIM, device=device, dtype=torch.float64)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x, timestep):
        return self.dropout(self.linear(x))


def test_models_that_cannot_serve_the_solve_are_refused_before_it():
    """Before: None raised `TypeError: 'NoneType' object is not callable`; a model on another device a RuntimeError
    from inside it; dropout left on never converged (no answer after minutes), a module in training mode passed
    silently; an integer output was blamed on a missing autograd graph."""
    _, scheduler, model, samples = _setup("vp")
    samples = samples[:3].clamp(-1, 1)
    with pytest.raises(ValueError, match="`model` must be callable as model"):
        log_likelihood(None, scheduler, samples, show_progress=False)
    with pytest.raises(ValueError, match=r"`samples` are on cpu but `model` is on meta; move them with `samples.to"):
        log_likelihood(_Affine(device="meta").eval(), scheduler, samples, show_progress=False)
    with pytest.raises(ValueError, match="`latents` are on cpu but `model` is on meta"):
        decode(_Affine(device="meta").eval(), scheduler, samples, show_progress=False)
    with pytest.warns(UserWarning, match="`model` is in training mode"), pytest.raises(
        ValueError, match="`model` is not deterministic: two calls on the same input at t = 0.001 differ"
    ):
        log_likelihood(_Affine(dropout=0.5).train(), scheduler, samples, show_progress=False)
    with pytest.raises(ValueError, match="`model` is not deterministic"):
        encode(lambda x, t: model(x, t) + torch.randn_like(x), scheduler, samples, show_progress=False)
    with pytest.warns(UserWarning, match="`model` is in training mode"):
        log_likelihood(_Affine().train(), scheduler, samples, show_progress=False)
    with pytest.raises(ValueError, match="`model` must return a floating tensor; got torch.int64"):
        log_likelihood(lambda x, t: model(x, t).long(), scheduler, samples, show_progress=False)


def test_class_labels_must_match_the_models_conditioning():
    """Before: labels for an unconditional unet, or none for a conditional one, raised Diffusers' ValueError from the
    first evaluation; an out-of-range label an IndexError from the embedding."""
    scheduler = ProbabilityFlowScheduler.from_config(DDPMScheduler(num_train_timesteps=100).config)
    conditional = UNet2DModel(**{**_TINY_UNET, "num_class_embeds": 3}).eval()
    samples = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="`model` is class-conditional; pass `class_labels`"):
        log_likelihood(conditional, scheduler, samples, show_progress=False)
    with pytest.raises(ValueError, match=r"`class_labels` must lie in \[0, 2\] .*num_class_embeds = 3.*in \[0, 3\]"):
        log_likelihood(conditional, scheduler, samples, class_labels=torch.tensor([0, 3]), show_progress=False)
    with pytest.raises(ValueError, match="`model` is class-conditional; `encode` takes no `class_labels`"):
        encode(conditional, scheduler, samples, show_progress=False)
    with pytest.raises(ValueError, match="`class_labels` were given but `model` is not class-conditional"):
        log_likelihood(_tiny_unet(), scheduler, samples, class_labels=torch.tensor([0, 1]), show_progress=False)
    convention = ModelConvention(VESDE(0.01, 10.0), "continuous", "score", 1000)
    with pytest.raises(ValueError, match="`model` is class-conditional; pass `class_labels`"):
        log_likelihood(_TwoClassExactModel(convention), convention, torch.zeros(2, 3), show_progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # Before: TypeError "got multiple values for keyword argument 'dequantize'".
        ({"dequantize": "uniform"}, "unknown arguments 'dequantize' \\(`dequantization` names the convention here\\)"),
        ({"num_step": 3}, "unknown arguments 'num_step'; besides its own it takes 'divergence'"),
        ({"num_samples": 0}, "`num_samples` must be an integer >= 1"),
        ({"dequantization": "none"}, "`dequantization` must be one of 'uniform', 'truncated_normal'"),
        ({"generator": 0}, "`generator` must be a `torch.Generator`"),
    ],
)
def test_bad_arguments_to_the_dequantized_likelihood_raise(kwargs, match):
    _, scheduler, model, samples = _setup("vp")
    with pytest.raises(ValueError, match=match):
        dequantized_log_likelihood(model, scheduler, samples[:2].clamp(-1, 1), data_range=(-1.0, 1.0),
                                   show_progress=False, **kwargs)


def test_bad_samples_and_schedulers_raise():
    _, scheduler, model, samples = _setup("vp")
    with pytest.raises(ValueError, match=r"batch-first with shape \(batch, \*dims\)"):
        log_likelihood(model, scheduler, samples[0], show_progress=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        log_likelihood(model, scheduler, samples * math.nan, show_progress=False)
    with pytest.raises(ValueError, match=r"ProbabilityFlowScheduler.from_config"):
        log_likelihood(model, DDPMScheduler(), samples, show_progress=False)
    with pytest.raises(ValueError, match="`model` must return a tensor of the samples' shape"):
        log_likelihood(lambda x, t: x[:, :1], scheduler, samples, show_progress=False)
    with pytest.raises(ValueError, match="differentiable with respect to its input"):
        log_likelihood(lambda x, t: model(x.detach(), t), scheduler, samples, show_progress=False)
    with pytest.raises(ValueError, match="`rtol` must be a finite number > 0"):
        encode(model, scheduler, samples, rtol=-1.0, show_progress=False)
    with pytest.raises(ValueError, match=r"`latents` must be batch-first"):
        decode(model, scheduler, torch.zeros(3), show_progress=False)


def _convention(kind: str):
    """The convention of a score SDE, or of a Diffusers DDPM table (discrete timesteps, ε-prediction)."""
    if kind == "ddpm":
        return ModelConvention.from_config(DDPMScheduler(num_train_timesteps=1000).config)
    return ProbabilityFlowScheduler(sde_type=kind, **SCHEDULER_KWARGS[kind]).convention


class _FailingModel:
    """The exact model whose `calls`-th call and every later one return `fault` (NaN, inf) times its output, or
    whose derivative turns NaN there (`fault="grad"`: + sqrt(|0·x|), 0 with an infinite derivative at 0)."""

    def __init__(self, model, calls: int, fault: str = "nan"):
        self.model, self.calls, self.fault, self.count = model, calls, fault, 0

    def __call__(self, x, timestep):
        self.count += 1
        output = self.model(x, timestep)
        if self.count < self.calls:
            return output
        return output + (x * 0).abs().sqrt() if self.fault == "grad" else output * float(self.fault)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["ve", "vp", "subvp", "ddpm"])
def test_a_model_that_turns_nan_mid_solve_is_a_sampling_error_for_every_method(kind, method):
    """Before: dopri5 raised `AssertionError: underflow in dt`, SciPy's RK45 gave no answer after 60 s, VP on a DDPM
    table an `IndexError` (a NaN time indexed the table). Now the first non-finite output stops the solve, whatever
    the back end, for the likelihood and for both directions of the flow."""
    convention = _convention(kind)
    mixture = MIXTURES["gaussian"]
    samples = mixture.sample(3, generator=torch.Generator().manual_seed(1))[0].clamp(-1, 1)
    kwargs = dict(method=method, show_progress=False)
    if method in TORCHDIFFEQ_FIXED_METHODS:
        kwargs["num_steps"] = 4
    # Two calls check the model is deterministic; the fault comes a few evaluations into the solve.
    faults = (("nan", "`model` returned NaN or infinite values at t = "), ("inf", "returned NaN or infinite"),
              ("grad", "the divergence of the drift is NaN or infinite at t = "))
    for fault, match in faults:
        model = _FailingModel(ExactScoreModel(mixture, convention), calls=6, fault=fault)
        with pytest.raises(SamplingError, match=match):
            log_likelihood(model, convention, samples, **kwargs)
    for function in (encode, decode) if method not in LOG_SIGMA_METHODS else ():
        with pytest.raises(SamplingError, match="`model` returned NaN or infinite values"):
            function(_FailingModel(ExactScoreModel(mixture, convention), calls=6), convention, samples, **kwargs)


def test_nan_in_the_dequantized_likelihood_is_a_sampling_error():
    _, scheduler, model, samples = _setup("vp")
    failing = _FailingModel(model, calls=4)
    with pytest.raises(SamplingError, match="`model` returned NaN or infinite values"):
        dequantized_log_likelihood(failing, scheduler, samples[:3].clamp(-1, 1), data_range=(-1.0, 1.0),
                                   num_samples=2, show_progress=False)


def test_a_solve_that_overflows_or_does_not_converge_is_a_sampling_error():
    """An adaptive solve is bounded by `max_nfe`; a result that overflowed float32 (finite evaluations, an infinite
    prior log-density) is reported, not returned as −inf."""
    _, scheduler, model, samples = _setup("vp")
    with pytest.raises(SamplingError, match="did not converge within max_nfe = 5 evaluations"):
        log_likelihood(model, scheduler, samples[:2], max_nfe=5, show_progress=False)
    with pytest.raises(SamplingError, match="did not converge within max_nfe = 5"):
        encode(model, scheduler, samples[:2], method="RK45", max_nfe=5, show_progress=False)
    with pytest.raises(SamplingError, match="not finite in torch.float32 .* dtype=torch.float64"):
        log_likelihood(model, scheduler, samples[:2].float() * 1e30, show_progress=False)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_grid_methods_decode(method):
    """Before: `decode` (and `round_trip`) with a fixed-grid method raised torchdiffeq's `RuntimeError: upper bound
    and lower bound inconsistent with step sign` (a negative step size on the decreasing time span)."""
    _, scheduler, model, samples = _setup("vp")
    out = round_trip(model, scheduler, samples[:4], method=method, num_steps=200, show_progress=False)
    assert float(out.error.max()) < 0.05


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["dopri5", "RK45"])
def test_half_precision_samples_are_integrated_in_float32_with_a_warning(half, method):
    """Before: bfloat16 samples were integrated in bfloat16 (bits/dim off by up to 0.8, no word) and float16 ones
    stopped the solve (dopri5: NaN time; RK45: no answer). Now the solve runs in float32 and says so."""
    _, scheduler, model, samples = _setup("vp")
    samples = samples[:4].clamp(-1, 1).to(half)
    kwargs = dict(divergence="hutchinson", num_probes=2, method=method, data_range=(-1.0, 1.0), show_progress=False)
    with pytest.warns(UserWarning, match=f"`samples` are {half}, too coarse .* integrating in torch.float32"):
        out = log_likelihood(model, scheduler, samples, generator=torch.Generator().manual_seed(0), **kwargs)
    # The same as the float32 solve of the same (rounded) points, the same probes.
    reference = log_likelihood(
        model, scheduler, samples.float(), generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert out.bits_per_dim.dtype == out.latent.dtype == torch.float32
    torch.testing.assert_close(out.bits_per_dim, reference.bits_per_dim, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="integrating in torch.float32"):
        assert encode(model, scheduler, samples, show_progress=False).sample.dtype == torch.float32


def test_exact_divergence_holds_one_gradient_at_a_time(monkeypatch):
    """Before: every per-dimension gradient (batch × D each) stayed alive until the sum, batch × D² in all (140 MB
    for a batch of 2 at 64 × 64). Now each is dropped once its diagonal entry is read."""
    import weakref

    from score_diffusers import likelihood

    _, scheduler, model, samples = _setup("vp")
    input_grad, gradients, alive = likelihood._input_grad, [], []

    def tracked(output, x, retain):
        alive.append(sum(gradient() is not None for gradient in gradients))
        gradient = input_grad(output, x, retain)
        gradients.append(weakref.ref(gradient))
        return gradient

    monkeypatch.setattr(likelihood, "_input_grad", tracked)
    out = _exact(model, scheduler, samples[:3], method="euler", num_steps=2)
    assert len(alive) == 2 * DIM and max(alive) == 0
    monkeypatch.setattr(likelihood, "_input_grad", input_grad)
    torch.testing.assert_close(out.log_likelihood, _exact(model, scheduler, samples[:3], method="euler", num_steps=2)
                               .log_likelihood, rtol=0, atol=0)


def test_exact_divergence_warns_of_its_cost_in_many_dimensions(monkeypatch):
    from score_diffusers import likelihood

    _, scheduler, model, samples = _setup("vp")
    monkeypatch.setattr(likelihood, "EXACT_DIVERGENCE_WARN_DIM", DIM - 1)
    with pytest.warns(UserWarning, match=f"D = {DIM} backward passes .* per evaluation"):
        _exact(model, scheduler, samples[:2], method="euler", num_steps=1)


_TINY_UNET = dict(
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
    norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
)


def _tiny_unet():
    return UNet2DModel(**_TINY_UNET).eval()


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 1, 16, 16), r"`samples` of shape \(2, 1, 16, 16\) do not fit the model, which takes \(batch, 1, 8, 8\)"),
        ((2, 3, 8, 8), r"of shape \(2, 3, 8, 8\) do not fit the model, which takes \(batch, 1, 8, 8\)"),
        ((2, 8, 8), r"of shape \(2, 8, 8\) do not fit .*; they have no channel dimension: add it with `samples\[:, None\]`"),
        ((0, 1, 8, 8), r"`samples` is an empty batch \(shape \(0, 1, 8, 8\)\)"),
    ],
    ids=["other-size", "other-channels", "no-channels", "empty"],
)
def test_samples_the_unet_does_not_take_are_refused(shape, match):
    """Before: another size was accepted (a density the unet was not trained for), a channel-less batch raised a
    RuntimeError from inside the model, and an empty batch was told to add a batch dimension."""
    scheduler = ProbabilityFlowScheduler.from_config(DDPMScheduler(num_train_timesteps=100).config)
    with pytest.raises(ValueError, match=match):
        log_likelihood(_tiny_unet(), scheduler, torch.zeros(shape), show_progress=False)
    with pytest.raises(ValueError, match=match.replace("samples", "latents")):
        decode(_tiny_unet(), scheduler, torch.zeros(shape), show_progress=False)


@pytest.mark.parametrize("function", [encode, decode, round_trip])
def test_likelihood_only_arguments_to_encode_and_decode_are_clear_errors(function):
    """Before: `encode(..., divergence="exact")` raised a TypeError from an internal helper."""
    _, scheduler, model, samples = _setup("vp")
    name = "decode" if function is decode else "encode"
    with pytest.raises(ValueError, match=rf"`{name}` got unknown arguments 'divergence' .*only of `log_likelihood`"):
        function(model, scheduler, samples, divergence="exact", show_progress=False)
    with pytest.raises(ValueError, match=rf"`{name}` got unknown arguments 'tolerance'; it takes 'rtol', 'atol'"):
        function(model, scheduler, samples, tolerance=1e-3, show_progress=False)


# ---- dequantisation conventions and class labels -------------------------------------------------------------------


def _bin_centred_mixture(levels=(100, 130, 160), dim=2):
    """Narrow components at the centres of 8-bit bins in [−1, 1] (the peaks a model of dequantised 8-bit images
    learns), and the 8-bit data themselves: level k at −1 + 2k/255."""
    centres = torch.tensor([-1 + 2 * (k + 0.5) / 256 for k in levels], dtype=torch.float64)
    data = torch.tensor([-1 + 2 * k / 255 for k in levels], dtype=torch.float64)
    return GaussianMixture(torch.cartesian_prod(*[centres] * dim), 1e-3), torch.cartesian_prod(*[data] * dim)


def _exact_bits(mixture, convention, data):
    """−log₂ P_ε(k)/D for 8-bit data at −1 + 2k/255: the mass of bin [k, k + 1)/256 (in [−1, 1]) under p_ε."""
    levels = torch.round((data + 1) / 2 * 255)
    lower, upper = -1 + 2 * levels / 256, -1 + 2 * (levels + 1) / 256
    alpha, sigma = convention.coefficients(torch.tensor(convention.sampling_eps, dtype=torch.float64))
    std = torch.sqrt(alpha**2 * mixture.stds**2 + sigma**2)[:, None]
    means = alpha * mixture.means
    normal = torch.distributions.Normal(0.0, 1.0)
    mass = normal.cdf((upper[:, None] - means) / std) - normal.cdf((lower[:, None] - means) / std)
    return -torch.log2((mixture.weights * mass.prod(-1)).sum(-1)) / data.shape[1]


def test_dequantisation_bounds_hold_and_truncated_normal_and_importance_weights_tighten_them():
    """On 8-bit data whose model peaks at bin centres: every convention bounds −log₂ P(k)/D from above in
    expectation over the draws (mean gap ≥ 0 within 3 standard errors); one truncated-normal draw scatters around
    the exact figure far less than one uniform draw, and K = 20 importance-weighted draws less again."""
    from score_diffusers import dequantized_log_likelihood

    mixture, data = _bin_centred_mixture()
    convention = ModelConvention(VPSDE(), "continuous", "score", 1000)
    model = ExactScoreModel(mixture, convention)
    points = data.repeat(4, 1)
    exact = _exact_bits(mixture, convention, points)
    settings = dict(data_range=(-1.0, 1.0), divergence="exact", rtol=1e-6, atol=1e-6, dtype=torch.float64,
                    show_progress=False)

    def gap(**kwargs):
        result = dequantized_log_likelihood(model, convention, points, generator=torch.Generator().manual_seed(1),
                                            **settings, **kwargs)
        return result, (result.bits_per_dim - exact).double()

    (uniform, uniform_gap), (truncated, truncated_gap), (weighted, weighted_gap) = (
        gap(dequantization="uniform"), gap(dequantization="truncated_normal"),
        gap(dequantization="uniform", num_samples=20))
    assert uniform.dequantization == "uniform"
    assert truncated.dequantization.startswith("truncated_normal(std=")
    assert weighted.dequantization == "importance_weighted(K=20, uniform)"
    for values in (uniform_gap, truncated_gap, weighted_gap):
        assert float(values.mean()) > -3 * float(values.std()) / math.sqrt(len(values)) - 1e-4
    assert float(truncated_gap.std()) < 0.1 * float(uniform_gap.std())
    assert float(weighted_gap.std()) < 0.5 * float(uniform_gap.std())
    # K = 1 is log_likelihood's own figure.
    single = log_likelihood(model, convention, points, dequantize="truncated_normal",
                            generator=torch.Generator().manual_seed(1), **settings)
    torch.testing.assert_close(single.bits_per_dim, truncated.bits_per_dim)


def test_truncated_normal_dequantisation_stays_in_its_bin_with_the_right_density():
    from score_diffusers.likelihood import _dequantize

    levels = torch.full((20000, 1), 0.0)
    points, log_q = _dequantize(levels, (0.0, 1.0), torch.Generator().manual_seed(0), "truncated_normal", 0.3)
    offsets = points.double() * 256 - 0.5  # in bins, around the centre of level 0
    assert float(offsets.min()) >= -0.5 and float(offsets.max()) < 0.5
    normal = torch.distributions.Normal(0.0, 0.3)
    mass = normal.cdf(torch.tensor(0.5)) - normal.cdf(torch.tensor(-0.5))
    torch.testing.assert_close(log_q, (normal.log_prob(offsets.flatten()) - torch.log(mass)).to(log_q.dtype),
                               atol=1e-4, rtol=0)
    # The truncated std: σ²(1 − 2aφ(a)/(2Φ(a) − 1)) at a = ½/σ.
    a = torch.tensor(0.5 / 0.3)
    factor = 1 - 2 * a * torch.exp(normal.log_prob(a * 0.3)) * 0.3 / mass
    assert abs(float(offsets.std()) - 0.3 * float(factor.sqrt())) < 0.01


class _TwoClassExactModel:
    """The exact score of mixture 0 or mixture 1, picked per sample by `class_labels`."""

    def __init__(self, convention):
        self.models = [ExactScoreModel(GaussianMixture(torch.full((1, 3), -1.0), 0.5), convention),
                       ExactScoreModel(GaussianMixture(torch.full((1, 3), 1.0), 0.5), convention)]

    def __call__(self, x, timestep, class_labels):
        outputs = torch.stack([model(x, timestep) for model in self.models])
        return outputs[class_labels, torch.arange(len(x))]


def test_class_conditional_likelihood_uses_each_samples_label_in_every_chunk():
    convention = ModelConvention(VESDE(0.01, 10.0), "continuous", "score", 1000)
    model = _TwoClassExactModel(convention)
    x = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, 0.5, 1.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1])
    settings = dict(divergence="exact", rtol=1e-6, atol=1e-6, show_progress=False)
    whole = log_likelihood(model, convention, x, class_labels=labels, **settings)
    chunked = log_likelihood(model, convention, x, class_labels=labels, batch_size=1, **settings)
    torch.testing.assert_close(whole.log_likelihood, chunked.log_likelihood, atol=1e-4, rtol=0)
    swapped = log_likelihood(model, convention, x, class_labels=1 - labels, **settings)
    assert bool((whole.log_likelihood > swapped.log_likelihood + 1).all())
    with pytest.raises(ValueError, match="class_labels"):
        log_likelihood(model, convention, x, class_labels=torch.tensor([0, 1]), **settings)
    with pytest.raises(ValueError, match="class_labels"):
        log_likelihood(model, convention, x, class_labels=torch.tensor([0.5, 1.0, 0.0]), **settings)
