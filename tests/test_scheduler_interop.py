"""Interoperability with Diffusers: configs of `DDPMScheduler` and `ScoreSdeVeScheduler`, their sampling loops,
Diffusers' own `DDPMPipeline`, and swaps between this package's schedulers."""

from __future__ import annotations

import inspect

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import DATA_DIM, IMAGE_SHAPE, make_generator, prior_sample, tiny_unet
from diffusers import DDPMPipeline, DDPMScheduler, ScoreSdeVeScheduler
from diffusers.utils.torch_utils import randn_tensor

from score_diffusers import (
    AnnealedLangevinScheduler,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    SDEDPMSolverScheduler,
)
from score_diffusers.testing import ExactScoreModel, GaussianMixture

DDPM_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
DDPM_COMPATIBLE = (PredictorCorrectorScheduler, ProbabilityFlowScheduler)


def foreign_config(scheduler, source: str, tmp_path: Path) -> dict[str, Any]:
    """A Diffusers scheduler's config held in memory (no `_class_name`) or read back from a saved folder (with it)."""
    if source == "in_memory":
        config = dict(scheduler.config)
    else:
        scheduler.save_pretrained(tmp_path / "scheduler")
        config = type(scheduler).load_config(tmp_path, subfolder="scheduler")
    assert ("_class_name" in config) == (source == "saved_folder")
    return config


def grid_alphas_cumprod(scheduler) -> torch.Tensor:
    """ᾱ of the scheduler's SDE on the training grid t_i = i/(N − 1)."""
    num_train_timesteps = scheduler.config.num_train_timesteps
    grid = torch.arange(num_train_timesteps, dtype=torch.float64) / (num_train_timesteps - 1)
    return scheduler.sde.mean_coeff(grid) ** 2


# ---- DDPMScheduler configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler_class", DDPM_COMPATIBLE)
@pytest.mark.parametrize("beta_schedule", DDPM_SCHEDULES)
@pytest.mark.parametrize("source", ["in_memory", "saved_folder"])
def test_from_ddpm_config(scheduler_class, beta_schedule: str, source: str, tmp_path: Path):
    config = foreign_config(DDPMScheduler(num_train_timesteps=500, beta_schedule=beta_schedule), source, tmp_path)
    scheduler = scheduler_class.from_config(config)
    assert scheduler.config.sde_type == "vp"
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.timestep_type == "discrete"
    assert scheduler.config.num_train_timesteps == 500
    reference = DDPMScheduler.from_config(config).alphas_cumprod.double()
    torch.testing.assert_close(grid_alphas_cumprod(scheduler), reference, rtol=1e-6, atol=1e-12)
    scheduler.set_timesteps(10)
    assert (float(scheduler.timesteps[0]), float(scheduler.timesteps[-1])) == (499.0, 0.0)


@pytest.mark.parametrize(
    "scheduler_class, uniform_grid",
    [(PredictorCorrectorScheduler, {}), (ProbabilityFlowScheduler, {"time_spacing": "uniform"})],
    ids=["pc", "pf_uniform"],
)
def test_uniform_grid_of_n_equal_n_train_is_ddpm_timesteps(scheduler_class, uniform_grid: dict[str, Any]):
    """With n = N uniform time points the model sees exactly DDPM's integer timesteps (corrector and Heun
    evaluations repeat them)."""
    scheduler = scheduler_class.from_config(DDPMScheduler(num_train_timesteps=300).config, **uniform_grid)
    scheduler.set_timesteps(300)
    expected = torch.arange(299, -1, -1, dtype=torch.float32)
    torch.testing.assert_close(scheduler.timesteps.unique_consecutive(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("scheduler_class", DDPM_COMPATIBLE)
def test_from_pretrained_of_a_ddpm_scheduler_folder(scheduler_class, tmp_path: Path):
    DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(tmp_path / "scheduler")
    scheduler = scheduler_class.from_pretrained(tmp_path, subfolder="scheduler")
    assert (scheduler.config.sde_type, scheduler.config.timestep_type) == ("vp", "discrete")
    torch.testing.assert_close(
        grid_alphas_cumprod(scheduler), DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    )


def test_ddpm_add_noise_matches(tmp_path: Path):
    ddpm = DDPMScheduler(beta_schedule="scaled_linear")
    scheduler = PredictorCorrectorScheduler.from_config(ddpm.config)
    generator = make_generator(0)
    original = torch.randn(5, *IMAGE_SHAPE, generator=generator)
    noise = torch.randn(original.shape, generator=generator)
    timesteps = torch.tensor([0, 1, 250, 998, 999])
    expected = ddpm.add_noise(original, noise, timesteps)
    torch.testing.assert_close(scheduler.add_noise(original, noise, timesteps), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "beta_schedule, num_train_timesteps, tolerance",
    [("linear", 1000, 1e-4), ("scaled_linear", 200, 1e-3), ("squaredcos_cap_v2", 200, 1e-3)],
)
def test_ancestral_predictor_is_ddpm_step(
    mixture: GaussianMixture, beta_schedule: str, num_train_timesteps: int, tolerance: float
):
    """predictor="ancestral", no corrector, n = N: DDPMScheduler(clip_sample=False).step sample for sample.

    Both draw x_T first, then one N(0, I) draw per step after the model call and none at the last step, so one
    seed gives both the same noise. Mid-run the two float32 formulas agree to `tolerance` relative to |x| + 1 (DDPM goes
    through x̂₀ = (x − √(1 − ᾱ)ε)/√ᾱ, which is large early on); the final samples agree to `tolerance` absolutely.
    """
    ddpm = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, clip_sample=False)
    scheduler = PredictorCorrectorScheduler.from_config(ddpm.config, predictor="ancestral", corrector="none")
    ddpm.set_timesteps(num_train_timesteps)
    scheduler.set_timesteps(num_train_timesteps)
    torch.testing.assert_close(scheduler.timesteps, ddpm.timesteps.float(), rtol=0, atol=0)
    # Our timesteps are DDPM's, so one exact ε model answers both loops.
    model = ExactScoreModel(mixture, scheduler)
    ddpm_generator, generator = make_generator(1), make_generator(1)
    ddpm_sample = randn_tensor((8, DATA_DIM), generator=ddpm_generator)
    sample = prior_sample(scheduler, (8, DATA_DIM), generator)
    for ddpm_timestep, timestep in zip(ddpm.timesteps, scheduler.timesteps, strict=True):
        ddpm_sample = ddpm.step(model(ddpm_sample, ddpm_timestep), ddpm_timestep, ddpm_sample, generator=ddpm_generator)
        ddpm_sample = ddpm_sample.prev_sample
        sample = scheduler.step(model(sample, timestep), timestep, sample, generator=generator).prev_sample
        torch.testing.assert_close(sample, ddpm_sample, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(sample, ddpm_sample, rtol=0, atol=tolerance)
    assert float(sample.abs().max()) > 1.0  # the samples reached the data, not a collapsed zero


@pytest.mark.parametrize(
    "scheduler_class, overrides",
    [(scheduler_class, {}) for scheduler_class in DDPM_COMPATIBLE]
    + [(ProbabilityFlowScheduler, {"s_churn": 10.0}), (ProbabilityFlowScheduler, {"solver": "dpmpp_3m"})]
    + [(ProbabilityFlowScheduler, {"solver": "unipc"})]
    + [(SDEDPMSolverScheduler, {})],
    ids=[scheduler_class.__name__ for scheduler_class in DDPM_COMPATIBLE]
    + ["ProbabilityFlowScheduler-churn", "ProbabilityFlowScheduler-dpmpp_3m", "ProbabilityFlowScheduler-unipc"]
    + ["SDEDPMSolverScheduler"],
)
def test_runs_unchanged_inside_ddpm_pipeline(scheduler_class, overrides: dict[str, Any]):
    """Diffusers' own DDPMPipeline with our scheduler: one UNet call per timestep, the result of the plain loop (the
    pipeline's generator reaches `step`, so the churn's noise is reproduced too)."""
    unet = tiny_unet()
    scheduler = scheduler_class.from_config(DDPMScheduler(num_train_timesteps=100).config, **overrides)
    pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    calls = []
    unet.register_forward_hook(lambda module, args, output: calls.append(args[1]))
    num_inference_steps = 5
    with torch.no_grad():
        images = pipeline(
            batch_size=2, num_inference_steps=num_inference_steps, generator=make_generator(3), output_type="np"
        ).images
        assert images.shape == (2, 8, 8, 1)
        assert len(calls) == len(scheduler.timesteps)
        for called_with, timestep in zip(calls, scheduler.timesteps, strict=True):
            assert float(called_with) == float(timestep)

        # The same loop written out: DDPMPipeline draws N(0, I) and ignores init_noise_sigma (1 for VP anyway).
        generator = make_generator(3)
        sample = randn_tensor((2, 1, 8, 8), generator=generator)
        scheduler.set_timesteps(num_inference_steps)
        for timestep in scheduler.timesteps:
            sample = scheduler.step(unet(sample, timestep).sample, timestep, sample, generator=generator).prev_sample
    expected = (sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(torch.from_numpy(images), torch.from_numpy(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheduler_class", DDPM_COMPATIBLE)
def test_ddpm_v_prediction_is_refused(scheduler_class):
    with pytest.raises(ValueError, match="prediction_type"):
        scheduler_class.from_config(DDPMScheduler(prediction_type="v_prediction").config)


# ---- ScoreSdeVeScheduler --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["in_memory", "saved_folder"])
def test_from_score_sde_ve_config(source: str, tmp_path: Path):
    reference = ScoreSdeVeScheduler(sigma_min=0.02, sigma_max=60.0, snr=0.12, correct_steps=2, sampling_eps=1e-4)
    scheduler = PredictorCorrectorScheduler.from_config(foreign_config(reference, source, tmp_path))
    expected = {
        "sde_type": "ve",
        "sigma_min": 0.02,
        "sigma_max": 60.0,
        "snr": 0.12,
        "correct_steps": 2,
        "sampling_eps": 1e-4,
        "predictor": "reverse_diffusion",
        "corrector": "langevin",
        "corrector_norm": "batch",
        "prediction_type": "score",
        "timestep_type": "sigma",
    }
    assert {key: scheduler.config[key] for key in expected} == expected
    assert scheduler.init_noise_sigma == reference.init_noise_sigma


def test_reproduces_score_sde_ve_pc_sampling(mixture: GaussianMixture):
    """ScoreSdeVePipeline's loop against ours, same seed: the final denoised means agree to 1e-3 in float32."""
    num_inference_steps, shape = 100, (3, *IMAGE_SHAPE)
    reference = ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0, snr=0.16, correct_steps=2)
    scheduler = PredictorCorrectorScheduler.from_config(reference.config)

    # ScoreSdeVePipeline.__call__, with the exact score fed the noise level σ as the NCSN++ UNet is.
    generator = make_generator(5)
    sample = randn_tensor(shape, generator=generator) * reference.init_noise_sigma
    reference.set_timesteps(num_inference_steps)
    reference.set_sigmas(num_inference_steps)
    for i, t in enumerate(reference.timesteps):
        sigma_t = reference.sigmas[i] * torch.ones(shape[0])
        for _ in range(reference.config.correct_steps):
            score = mixture.score(sample, 1.0, sigma_t).float()
            sample = reference.step_correct(score, sample, generator=generator).prev_sample
        score = mixture.score(sample, 1.0, sigma_t).float()
        output = reference.step_pred(score, t, sample, generator=generator)
        sample, reference_mean = output.prev_sample, output.prev_sample_mean

    generator = make_generator(5)
    model = ExactScoreModel(mixture, scheduler)
    sample = prior_sample(scheduler, shape, generator)
    scheduler.set_timesteps(num_inference_steps)
    assert len(scheduler.timesteps) == num_inference_steps * 3
    for timestep in scheduler.timesteps:
        output = scheduler.step(model(sample, timestep), timestep, sample, generator=generator)
        sample = output.prev_sample
    assert reference_mean.dtype == output.prev_sample_mean.dtype == torch.float32
    assert float((output.prev_sample_mean - reference_mean).abs().max()) <= 1e-3
    assert float(reference_mean.abs().max()) > 1.0


# ---- swapping between the package's schedulers ---------------------------------------------------------------

SHARED_KEYS = ("sde_type", "sigma_min", "sigma_max", "sampling_eps", "prediction_type", "timestep_type")


@pytest.mark.parametrize(
    "source, target, source_kwargs",
    [
        (PredictorCorrectorScheduler, ProbabilityFlowScheduler, {"predictor": "ancestral", "sigma_max": 30.0}),
        (ProbabilityFlowScheduler, PredictorCorrectorScheduler, {"solver": "euler", "time_spacing": "uniform"}),
        (ProbabilityFlowScheduler, PredictorCorrectorScheduler, {"sde_type": "subvp", "timestep_type": "discrete"}),
    ],
)
def test_swap_between_score_schedulers(source, target, source_kwargs: dict[str, Any]):
    source_scheduler = source(sampling_eps=2e-3, prediction_type="epsilon", **source_kwargs)
    swapped = target.from_config(source_scheduler.config)
    assert isinstance(swapped, target)
    # Keys only the source uses stay in the config, hidden (no `__init__` argument of the target), as Diffusers keeps
    # them in a swap between compatible schedulers: swapping back restores the source.
    sibling_only = set(source_scheduler.config) - set(target().config)
    assert sibling_only and not sibling_only & set(inspect.signature(target.__init__).parameters)
    back = source.from_config(swapped.config)
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == {
        k: v for k, v in source_scheduler.config.items() if not k.startswith("_")
    }
    for key in SHARED_KEYS:
        assert swapped.config[key] == source_scheduler.config[key], key
    swapped.set_timesteps(3)
    assert float(swapped.timesteps[0]) == pytest.approx(float(swapped.timestep_for_time(1.0)), rel=1e-6)


def test_annealed_langevin_from_a_ve_config():
    source = PredictorCorrectorScheduler(sigma_min=0.05, sigma_max=20.0)
    scheduler = AnnealedLangevinScheduler.from_config(source.config)
    assert (scheduler.config.sigma_min, scheduler.config.sigma_max) == (0.05, 20.0)
    assert "sde_type" not in inspect.signature(AnnealedLangevinScheduler.__init__).parameters


@pytest.mark.parametrize(
    "config",
    [
        PredictorCorrectorScheduler(sde_type="vp").config,
        ProbabilityFlowScheduler(sde_type="subvp").config,
        DDPMScheduler().config,
    ],
    ids=["vp", "subvp", "ddpm"],
)
def test_annealed_langevin_refuses_variance_preserving_configs(config):
    with pytest.raises(ValueError, match="sde_type"):
        AnnealedLangevinScheduler.from_config(config)
