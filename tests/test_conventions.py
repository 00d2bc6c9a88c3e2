"""The pure convention layer: closed-form time inverses, DDPM tables equal to Diffusers', config translation, the
output ↔ score ↔ ε ↔ x̂₀ maps, training perturbation, light imports, and the checks' one error style."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    ScoreSdeVeScheduler,
)
from helpers import make_generator

from score_diffusers import (
    AnnealedLangevinScheduler,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    SDEDPMSolverScheduler,
)
from score_diffusers.checks import check_number
from score_diffusers.conventions import (
    ANNEALED_LANGEVIN_DEFAULTS,
    CONVENTION_DEFAULTS,
    DDPM_TABLE_DEFAULTS,
    SCORE_SDE_VE_DEFAULTS,
    ModelConvention,
    config_source,
    ddpm_alphas_cumprod,
    sde_from_config,
)
from score_diffusers.sde import SubVPSDE, VESDE, VPSDE

DDPM_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def signature_defaults(callable_, keys) -> dict:
    parameters = inspect.signature(callable_).parameters
    return {key: parameters[key].default for key in keys if key in parameters}


# ---- closed-form inverses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sde",
    [
        VESDE(0.01, 50.0),
        VPSDE(),
        SubVPSDE(),
        VPSDE(beta_min=0.0, beta_max=20.0),
        *[VPSDE(alphas_cumprod=ddpm_alphas_cumprod(1000, 1e-4, 0.02, s)) for s in DDPM_SCHEDULES],
        SubVPSDE(alphas_cumprod=ddpm_alphas_cumprod(50, 1e-4, 0.02, "linear")),
    ],
    ids=["ve", "vp", "subvp", "vp-beta_min-0", *[f"vp-{s}" for s in DDPM_SCHEDULES], "subvp-table"],
)
def test_time_from_noise_to_signal_is_exact_on_a_fine_grid(sde):
    t = torch.linspace(1e-4, 1, 2001, dtype=torch.float64)
    torch.testing.assert_close(sde.time_from_noise_to_signal(sde.noise_to_signal(t)), t, rtol=0, atol=1e-11)


def test_no_bisection_remains():
    import score_diffusers.sde as sde_module

    source = inspect.getsource(sde_module)
    assert "bisection" not in source.lower().replace("no bisection", "")


def test_table_inverse_clamps_outside_the_table():
    sde = VPSDE(alphas_cumprod=ddpm_alphas_cumprod(100, 1e-4, 0.02, "linear"))
    ends = sde.noise_to_signal(torch.tensor([0.0, 1.0], dtype=torch.float64))
    times = sde.time_from_noise_to_signal(torch.stack([ends[0] / 2, ends[1] * 2]))
    assert times.tolist() == [0.0, 1.0]


# ---- DDPM tables and config translation ------------------------------------------------------------------------


@pytest.mark.parametrize("beta_schedule", DDPM_SCHEDULES)
def test_ddpm_tables_equal_diffusers(beta_schedule):
    expected = DDPMScheduler(num_train_timesteps=300, beta_schedule=beta_schedule).alphas_cumprod
    assert torch.equal(ddpm_alphas_cumprod(300, 1e-4, 0.02, beta_schedule), expected)
    betas = torch.linspace(1e-4, 0.03, 10).tolist()
    assert torch.equal(
        ddpm_alphas_cumprod(10, 1e-4, 0.02, "linear", betas),
        DDPMScheduler(num_train_timesteps=10, trained_betas=betas).alphas_cumprod,
    )


def test_defaults_agree_with_the_classes_that_own_them():
    assert signature_defaults(DDPMScheduler.__init__, DDPM_TABLE_DEFAULTS) == DDPM_TABLE_DEFAULTS
    assert signature_defaults(ScoreSdeVeScheduler.__init__, SCORE_SDE_VE_DEFAULTS) == SCORE_SDE_VE_DEFAULTS
    own = {k: v for k, v in ANNEALED_LANGEVIN_DEFAULTS.items() if k != "sampling_eps"}
    assert signature_defaults(AnnealedLangevinScheduler.__init__, own) == own
    for scheduler_class in (PredictorCorrectorScheduler, ProbabilityFlowScheduler):
        assert signature_defaults(scheduler_class.__init__, CONVENTION_DEFAULTS) == CONVENTION_DEFAULTS


def test_trained_betas_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match=r"trained_betas.*num_train_timesteps.*1000"):
        ProbabilityFlowScheduler.from_config(DDPMScheduler(trained_betas=[1e-3] * 10).config)


def test_zero_terminal_snr_is_refused_not_dropped():
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        ProbabilityFlowScheduler.from_config(DDPMScheduler(rescale_betas_zero_snr=True).config)


@pytest.mark.parametrize(
    "diffusers_class", [DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler]
)
def test_any_alpha_bar_scheduler_config_converts(diffusers_class):
    source = diffusers_class(num_train_timesteps=200, beta_schedule="scaled_linear")
    assert config_source(source.config) == "ddpm"
    for scheduler_class in (PredictorCorrectorScheduler, ProbabilityFlowScheduler):
        scheduler = scheduler_class.from_config(source.config)
        assert (scheduler.config.sde_type, scheduler.config.timestep_type) == ("vp", "discrete")
        alpha_bar = scheduler.sde.mean_coeff(torch.linspace(0, 1, 200, dtype=torch.float64)) ** 2
        torch.testing.assert_close(alpha_bar, source.alphas_cumprod.double(), rtol=1e-6, atol=0)


def test_convention_from_each_kind_of_config():
    ddpm = ModelConvention.from_config(DDPMScheduler(num_train_timesteps=100).config)
    assert (ddpm.sde_type, ddpm.prediction_type, ddpm.timestep_type, ddpm.num_train_timesteps) == (
        "vp", "epsilon", "discrete", 100
    )
    assert ddpm.sampling_eps == 0.0
    ve = ModelConvention.from_config(ScoreSdeVeScheduler(sigma_max=30.0).config)
    assert (ve.sde_type, ve.timestep_type, ve.sde.sigma_max) == ("ve", "sigma", 30.0)
    als = AnnealedLangevinScheduler(sigma_max=7.0, num_train_timesteps=11, timestep_type="discrete")
    assert repr(ModelConvention.from_config(als.config)) == repr(als.convention)
    # Annealed Langevin's levels end on σ_min itself, t = 0; a partial config takes its own defaults.
    assert als.sampling_eps == 0.0 and als.convention.sde_type == "ve"
    partial = ModelConvention.from_config({"steps_per_level": 5})
    assert (partial.timestep_type, partial.num_train_timesteps, partial.sampling_eps) == ("sigma", 232, 0.0)
    assert ModelConvention.from_config({"_class_name": "ScoreSdeVeScheduler", "sigma_max": 9.0}).sde.sigma_max == 9.0
    pc = PredictorCorrectorScheduler(sde_type="subvp", beta_schedule="squaredcos_cap_v2", timestep_type="sigma")
    assert repr(ModelConvention.from_config(pc.config)) == repr(pc.convention)


def test_from_config_between_own_schedulers_keeps_the_model_conventions():
    """A source left at its own defaults (σ timesteps, N = 232) keeps them in the target."""
    source = AnnealedLangevinScheduler()
    for target in (PredictorCorrectorScheduler, ProbabilityFlowScheduler):
        swapped = target.from_config(source.config)
        assert (swapped.config.timestep_type, swapped.config.num_train_timesteps) == ("sigma", 232)
    # Sampler keys the source left at its defaults take the target's own defaults, as in any Diffusers swap.
    assert SDEDPMSolverScheduler.from_config(ProbabilityFlowScheduler().config).config.time_spacing == "log_sigma"
    chosen = ProbabilityFlowScheduler(time_spacing="uniform").config
    assert SDEDPMSolverScheduler.from_config(chosen).config.time_spacing == "uniform"
    back = AnnealedLangevinScheduler.from_config(PredictorCorrectorScheduler(sigma_max=9.0).config)
    assert (back.config.timestep_type, back.config.num_train_timesteps, back.config.sigma_max) == (
        "continuous", 1000, 9.0
    )


# ---- outputs, denoising and perturbation ----------------------------------------------------------------------


@pytest.mark.parametrize("timestep_type", ["sigma", "discrete", "continuous"])
@pytest.mark.parametrize("sde_type", ["ve", "vp", "subvp"])
def test_timestep_round_trip(sde_type, timestep_type):
    convention = ModelConvention(sde_from_config({"sde_type": sde_type}), timestep_type, "score", 50)
    t = torch.linspace(1e-3, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(convention.time(convention.timestep(t)), t, rtol=0, atol=1e-11)


@pytest.mark.parametrize("sde_type", ["ve", "vp", "subvp"])
def test_noise_to_signal_range_spans_the_log_sigma_grid(sde_type):
    """(σ̄_ε, σ̄_T) are the ends of the log-σ̄ time grid, mapped back to σ̄."""
    convention = ModelConvention(sde_from_config({"sde_type": sde_type}))
    low, high = convention.noise_to_signal_range()
    grid = convention.sde.noise_to_signal(convention.time_grid(5))
    torch.testing.assert_close(grid[[-1, 0]], torch.stack([low, high]), rtol=1e-12, atol=0)
    assert 0 < float(low) < float(high)


def test_output_score_epsilon_and_denoised():
    generator = make_generator(3)
    x, score = torch.randn(5, 2, 3, generator=generator), torch.randn(5, 2, 3, generator=generator)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0])
    alpha = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.1])
    eps_model = ModelConvention(VPSDE(), prediction_type="epsilon")
    epsilon = eps_model.output_from_score(score, sigma)
    torch.testing.assert_close(epsilon, -sigma[:, None, None] * score)
    torch.testing.assert_close(eps_model.score_from_output(epsilon, sigma), score)
    assert ModelConvention(VPSDE()).output_from_score(score, sigma) is score
    denoised = ModelConvention.denoised(x, score, alpha, sigma)
    torch.testing.assert_close(denoised, (x + sigma[:, None, None] ** 2 * score) / alpha[:, None, None])
    torch.testing.assert_close(ModelConvention.denoised(x, score, 0.7, 0.5), (x + 0.25 * score) / 0.7)


def test_perturb_matches_the_marginals_and_the_model_timestep():
    convention = ModelConvention(SubVPSDE(), timestep_type="discrete", num_train_timesteps=100)
    x0, noise = torch.randn(4, 3, generator=make_generator(1)), torch.randn(4, 3, generator=make_generator(2))
    t = torch.tensor([0.0, 0.1, 0.5, 1.0])
    perturbed = convention.perturb(x0, t, noise)
    alpha, sigma = convention.coefficients(t.double())
    torch.testing.assert_close(perturbed.sample, alpha[:, None].float() * x0 + sigma[:, None].float() * noise)
    torch.testing.assert_close(perturbed.timestep, t * 99)
    with pytest.raises(ValueError, match="noise"):
        convention.perturb(x0, t, noise[:2])


def test_add_noise_refuses_timesteps_beyond_the_training_range():
    scheduler = ProbabilityFlowScheduler.from_config(DDPMScheduler(num_train_timesteps=100).config)
    x0 = torch.zeros(2, 3)
    scheduler.add_noise(x0, x0, torch.tensor([0.0, 99.0]))
    with pytest.raises(ValueError, match=r"timesteps.*\[0, 99\]"):
        scheduler.add_noise(x0, x0, torch.tensor([0.0, 150.0]))


def test_a_config_of_no_score_model_is_refused():
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler config describes no score model"):
        ModelConvention.from_config(
            {**FlowMatchEulerDiscreteScheduler().config, "_class_name": "FlowMatchEulerDiscreteScheduler"}
        )


def test_bad_convention_arguments():
    with pytest.raises(ValueError, match="timestep_type"):
        ModelConvention(VPSDE(), timestep_type="index")
    with pytest.raises(ValueError, match="sampling_eps"):
        ModelConvention(VPSDE(), sampling_eps=1.5)
    with pytest.raises(ValueError, match="sigma_max"):
        VESDE(0.01, math.inf)


# ---- one error style ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (math.nan, {"low": 0, "low_open": True}, "a number > 0"),
        (math.inf, {"low": 0, "high_open": True}, "(finite)"),
        (-1.0, {"low": 0}, "a number >= 0"),
        (1.0, {"low": 0, "high": 1, "high_open": True}, "[0, 1)"),
        ("2", {}, "a real number"),
        (True, {}, "a real number"),
    ],
)
def test_check_number_names_the_argument_and_range(value, kwargs, message):
    with pytest.raises(ValueError) as error:
        check_number("snr", value, **kwargs)
    assert str(error.value).startswith("`snr` must be ") and message in str(error.value), str(error.value)


def test_check_number_accepts_none_only_when_allowed():
    check_number("prior_snr", None, 0, low_open=True, allow_none=True)
    with pytest.raises(ValueError, match="prior_snr"):
        check_number("prior_snr", None, 0, low_open=True)


# ---- light imports --------------------------------------------------------------------------------------------


def test_pure_layers_import_neither_diffusers_nor_transformers():
    code = (
        "import sys\n"
        "import score_diffusers.sde, score_diffusers.conventions, score_diffusers.sampling, score_diffusers.testing\n"
        "from score_diffusers import ModelConvention, VESDE\n"
        "heavy = [m for m in ('diffusers', 'transformers', 'accelerate', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
