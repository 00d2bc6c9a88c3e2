"""The SDE core against its closed forms (the design reference's §1), a simulated forward process, torch.distributions and
Diffusers' own DDPM tables."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_generator
from diffusers import DDPMScheduler

from score_diffusers import SDE, VESDE, VPSDE, SubVPSDE

SIGMA_MIN, SIGMA_MAX = 0.01, 50.0
BETA_MIN, BETA_MAX = 0.1, 20.0
DDPM_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# Time points inside (0, 1] where the closed forms are compared.
CHECK_TIMES = torch.tensor([1e-5, 1e-3, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=torch.float64)


def ddpm_table_sde(beta_schedule: str, num_train_timesteps: int = 1000) -> tuple[VPSDE, DDPMScheduler]:
    ddpm = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
    return VPSDE(alphas_cumprod=ddpm.alphas_cumprod), ddpm


def all_sdes() -> dict[str, SDE]:
    return {
        "ve": VESDE(SIGMA_MIN, SIGMA_MAX),
        "vp": VPSDE(BETA_MIN, BETA_MAX),
        "subvp": SubVPSDE(BETA_MIN, BETA_MAX),
        "vp_ddpm_table": ddpm_table_sde("linear")[0],
        "subvp_ddpm_table": SubVPSDE(alphas_cumprod=DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod),
    }


@pytest.fixture(params=list(all_sdes()))
def sde(request: pytest.FixtureRequest) -> SDE:
    return all_sdes()[request.param]


# ---- closed forms ---------------------------------------------------------------------------------------------


def test_ve_closed_form():
    sde = VESDE(SIGMA_MIN, SIGMA_MAX)
    t = CHECK_TIMES
    sigma = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
    torch.testing.assert_close(sde.marginal_std(t), sigma, rtol=1e-12, atol=0)
    g = sigma * math.sqrt(2 * math.log(SIGMA_MAX / SIGMA_MIN))
    torch.testing.assert_close(sde.diffusion(t), g, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.mean_coeff(t), torch.ones_like(t))
    torch.testing.assert_close(sde.drift_coeff(t), torch.zeros_like(t))
    assert sde.prior_std == SIGMA_MAX


@pytest.mark.parametrize("sde_class", [VPSDE, SubVPSDE])
def test_vp_family_closed_form(sde_class: type[SDE]):
    sde = sde_class(BETA_MIN, BETA_MAX)
    t = CHECK_TIMES
    log_alpha = -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
    alpha_squared = torch.exp(2 * log_alpha)
    if sde_class is VPSDE:
        sigma, g_squared = torch.sqrt(1 - alpha_squared), beta
    else:
        sigma, g_squared = 1 - alpha_squared, beta * (1 - alpha_squared**2)
    torch.testing.assert_close(sde.log_mean_coeff(t), log_alpha, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.beta(t), beta, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.drift_coeff(t), -0.5 * beta, rtol=1e-12, atol=0)
    # 1 − α² loses digits at t = 1e-5 even in float64; the implementation's expm1 is the accurate one.
    torch.testing.assert_close(sde.marginal_std(t), sigma, rtol=1e-6, atol=0)
    torch.testing.assert_close(sde.diffusion(t) ** 2, g_squared, rtol=1e-6, atol=0)
    assert sde.prior_std == 1.0


def test_marginals_solve_the_moment_equations(sde: SDE):
    """dα/dt = f(t)α and dσ²/dt = 2f(t)σ² + g(t)²: α, σ, f and g describe one and the same SDE."""
    t = torch.tensor([0.05, 0.3, 0.555, 0.8], dtype=torch.float64)
    h = 1e-6
    d_alpha = (sde.mean_coeff(t + h) - sde.mean_coeff(t - h)) / (2 * h)
    d_variance = (sde.marginal_std(t + h) ** 2 - sde.marginal_std(t - h) ** 2) / (2 * h)
    f, g = sde.drift_coeff(t), sde.diffusion(t)
    torch.testing.assert_close(d_alpha, f * sde.mean_coeff(t), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(d_variance, 2 * f * sde.marginal_std(t) ** 2 + g**2, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("sde_class", [VPSDE, SubVPSDE])
@pytest.mark.parametrize("t", [1e-5, 1e-3])
def test_marginal_std_is_accurate_near_zero_in_float32(sde_class: type[SDE], t: float):
    sde = sde_class(BETA_MIN, BETA_MAX)
    exact = sde.marginal_std(torch.tensor(t, dtype=torch.float64))
    float32 = sde.marginal_std(torch.tensor(t, dtype=torch.float32))
    assert float32.dtype == torch.float32
    assert abs(float(float32) / float(exact) - 1) < 1e-5
    # The naive 1 − exp(2 log α) is what this guards against: it is percent-level wrong here in float32.
    naive_variance = 1 - torch.exp(2 * sde.log_mean_coeff(torch.tensor(t, dtype=torch.float32)))
    naive = naive_variance.sqrt() if sde_class is VPSDE else naive_variance
    if t == 1e-5:
        assert abs(float(naive) / float(exact) - 1) > 1e-3


# ---- the forward process --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_class", [VESDE, VPSDE, SubVPSDE])
def test_marginals_match_simulated_forward_sde(sde_class: type[SDE]):
    """Euler–Maruyama on dx = f x dt + g dw from Gaussian data reproduces the closed-form mean and variance."""
    sde = sde_class()
    num_samples, num_steps = 10_000, 1_000
    data_mean, data_std = 1.5, 0.5
    generator = make_generator(1)
    x = data_mean + data_std * torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)
    checkpoints = {250: None, 500: None, 1000: None}
    dt = sde.T / num_steps
    for step in range(num_steps):
        t = step * dt
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + sde.drift(x, t) * dt + sde.diffusion(t) * math.sqrt(dt) * noise
        if step + 1 in checkpoints:
            checkpoints[step + 1] = x.clone()
    for step, x_t in checkpoints.items():
        t = torch.tensor(step * dt, dtype=torch.float64)
        alpha, sigma = sde.mean_coeff(t), sde.marginal_std(t)
        # The simulation starts at t = 0 with σ(0) = σ_min for VE; the closed form keeps σ(t)² (as score_sde does).
        noise_variance = sigma**2 - sde.marginal_std(torch.zeros_like(t)) ** 2
        expected_mean = float(alpha) * data_mean
        expected_variance = float(alpha**2 * data_std**2 + noise_variance)
        standard_error = math.sqrt(expected_variance / x_t.numel())
        assert abs(float(x_t.mean()) - expected_mean) < 5 * standard_error
        assert abs(float(x_t.var()) / expected_variance - 1) < 0.04


def test_perturb_and_marginal_prob(sde: SDE):
    generator = make_generator(2)
    x0 = torch.randn(3, 2, 5, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    alpha, sigma = sde.mean_coeff(t)[:, None, None], sde.marginal_std(t)[:, None, None]
    torch.testing.assert_close(sde.perturb(x0, t, noise), alpha * x0 + sigma * noise)
    mean, std = sde.marginal_prob(x0, t)
    torch.testing.assert_close(mean, alpha * x0)
    torch.testing.assert_close(std, sigma.flatten())


def test_reverse_drifts(sde: SDE):
    generator = make_generator(3)
    x = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    score = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    f, g = float(sde.drift_coeff(t)), float(sde.diffusion(t))
    torch.testing.assert_close(sde.reverse_drift(x, t, score), f * x - g**2 * score)
    torch.testing.assert_close(sde.reverse_drift(x, t, score, probability_flow=True), f * x - 0.5 * g**2 * score)


def test_transition_coeffs_compose_the_marginals(sde: SDE):
    """x_t = a·x_s + b·z applied to x_s = α_s x_0 + σ_s z' gives x_t's marginal: a α_s = α_t, a²σ_s² + b² = σ_t²."""
    s, t = torch.tensor([0.2, 0.6], dtype=torch.float64), torch.tensor([0.3, 0.95], dtype=torch.float64)
    alpha_s, sigma_s, alpha_t, sigma_t = sde.mean_coeff(s), sde.marginal_std(s), sde.mean_coeff(t), sde.marginal_std(t)
    a, b = sde.transition_coeffs(alpha_t, sigma_t, alpha_s, sigma_s)
    torch.testing.assert_close(a * alpha_s, alpha_t)
    torch.testing.assert_close(a**2 * sigma_s**2 + b**2, sigma_t**2)


def test_ddpm_table_transitions_are_ddpm_betas():
    sde, ddpm = ddpm_table_sde("linear")
    grid = torch.arange(ddpm.config.num_train_timesteps, dtype=torch.float64) / (ddpm.config.num_train_timesteps - 1)
    alpha, sigma = sde.mean_coeff(grid), sde.marginal_std(grid)
    _, b = sde.transition_coeffs(alpha[1:], sigma[1:], alpha[:-1], sigma[:-1])
    torch.testing.assert_close(b**2, ddpm.betas[1:].double(), rtol=0, atol=4e-7)  # ᾱ is a float32 table


# ---- the prior --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3), (2, 1, 4, 4)])
def test_prior_logp_matches_torch_distributions(sde: SDE, shape: tuple[int, ...]):
    z = sde.prior_sampling(shape, generator=make_generator(4), dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).reshape(shape[0], -1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected)


def test_prior_sampling_has_the_prior_std(sde: SDE):
    z = sde.prior_sampling((4000, 8), generator=make_generator(5), dtype=torch.float64)
    assert z.shape == (4000, 8) and z.dtype == torch.float64
    assert abs(float(z.std()) / sde.prior_std - 1) < 0.02
    assert abs(float(z.mean())) < 0.03 * sde.prior_std


# ---- time ↔ noise level ---------------------------------------------------------------------------------------


def test_time_from_noise_to_signal_inverts_noise_to_signal(sde: SDE):
    t = torch.tensor([1e-3, 0.01, 0.25, 0.5, 0.77, 1.0], dtype=torch.float64)
    ratio = sde.noise_to_signal(t)
    assert bool((ratio.diff() > 0).all()), "σ_t/α_t must increase with t"
    torch.testing.assert_close(sde.time_from_noise_to_signal(ratio), t, rtol=1e-9, atol=1e-12)


def test_ve_noise_to_signal_is_sigma():
    sde = VESDE(SIGMA_MIN, SIGMA_MAX)
    torch.testing.assert_close(sde.noise_to_signal(CHECK_TIMES), sde.marginal_std(CHECK_TIMES))


# ---- DDPM tables ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta_schedule", DDPM_SCHEDULES)
def test_vpsde_from_ddpm_table_reproduces_alphas_cumprod(beta_schedule: str):
    sde, ddpm = ddpm_table_sde(beta_schedule)
    num_train_timesteps = ddpm.config.num_train_timesteps
    grid = torch.arange(num_train_timesteps, dtype=torch.float64) / (num_train_timesteps - 1)
    alphas_cumprod = ddpm.alphas_cumprod.double()
    torch.testing.assert_close(sde.mean_coeff(grid) ** 2, alphas_cumprod, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(sde.marginal_std(grid), (1 - alphas_cumprod).sqrt(), rtol=1e-5, atol=1e-9)
    # Between grid points log ᾱ is linear in t, so the midpoint holds the geometric mean of its neighbours.
    midpoints = (grid[:-1] + grid[1:]) / 2
    geometric_mean = (alphas_cumprod[:-1] * alphas_cumprod[1:]).sqrt()
    torch.testing.assert_close(sde.mean_coeff(midpoints) ** 2, geometric_mean, rtol=1e-6, atol=1e-12)


def test_continuous_linear_vp_is_ddpm_linear_in_the_limit():
    """β_min = N·β_start, β_max = N·β_end: the continuous ᾱ at t = (i + 1)/N tracks DDPM's linear table."""
    num_train_timesteps = 1000
    ddpm = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=1e-4, beta_end=0.02)
    sde = VPSDE(beta_min=num_train_timesteps * 1e-4, beta_max=num_train_timesteps * 0.02)
    t = (torch.arange(num_train_timesteps, dtype=torch.float64) + 1) / num_train_timesteps
    assert (sde.beta_min, sde.beta_max) == pytest.approx((BETA_MIN, BETA_MAX))
    torch.testing.assert_close(sde.mean_coeff(t) ** 2, ddpm.alphas_cumprod.double(), rtol=0, atol=2e-3)


# ---- dtypes and shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept(sde: SDE, dtype: torch.dtype):
    t = torch.tensor([0.25, 0.75], dtype=dtype)
    x = torch.randn(2, 1, 3, 3, generator=make_generator(6), dtype=dtype)
    values = (sde.mean_coeff(t), sde.marginal_std(t), sde.diffusion(t), sde.drift(x, t), sde.reverse_drift(x, t, x))
    for value in values:
        assert value.dtype == dtype
        assert bool(torch.isfinite(value).all())
    assert sde.perturb(x, t, x).shape == x.shape


def test_float64_resolves_what_float32_cannot():
    """float64 evaluation keeps σ_t at t = 1e-9 (VP) to full precision; the result is not rounded through float32."""
    sde = VPSDE(BETA_MIN, BETA_MAX)
    t = torch.tensor(1e-9, dtype=torch.float64)
    expected = math.sqrt(-math.expm1(2 * (-0.25 * 1e-18 * (BETA_MAX - BETA_MIN) - 0.5 * 1e-9 * BETA_MIN)))
    assert float(sde.marginal_std(t)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "build",
    [
        lambda: VESDE(sigma_min=0.0),
        lambda: VESDE(sigma_min=2.0, sigma_max=1.0),
        lambda: VPSDE(beta_min=2.0, beta_max=1.0),
    ],
)
def test_invalid_parameters_raise(build):
    with pytest.raises(ValueError, match="sigma_min|beta_min"):
        build()


def test_invalid_alphas_cumprod_raises():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        VPSDE(alphas_cumprod=torch.tensor([0.5, 0.9]))
