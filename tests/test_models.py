"""EpsilonToScore against DDPMScheduler's own ᾱ table, and NoiseConditionalClassifier's config and persistence."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from score_diffusers import EpsilonToScore, NoiseConditionalClassifier

NUM_TRAIN_TIMESTEPS = 50
IMAGE_SIZE = 8


def tiny_unet(**kwargs) -> UNet2DModel:
    """A seeded 1-channel DDPM-style UNet2DModel of about 20 k parameters; `kwargs` override its config."""
    torch.manual_seed(0)
    config = dict(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return UNet2DModel(**{**config, **kwargs}).eval()


@pytest.fixture(params=["linear", "squaredcos_cap_v2"])
def ddpm_scheduler(request) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=request.param, clip_sample=False)


@pytest.fixture
def wrapped(ddpm_scheduler) -> tuple[UNet2DModel, EpsilonToScore]:
    unet = tiny_unet()
    return unet, EpsilonToScore.from_unet(unet, ddpm_scheduler)


def recorded_timesteps(unet: UNet2DModel) -> list[torch.Tensor]:
    """Record the timestep argument of every call of `unet`."""
    calls = []
    unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[1].clone()), with_kwargs=True)
    return calls


# ---- EpsilonToScore -----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_score_on_the_training_grid_is_minus_epsilon_over_sigma(ddpm_scheduler, wrapped):
    unet, model = wrapped
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for index in (0, 7, NUM_TRAIN_TIMESTEPS - 1):
        t = index / (NUM_TRAIN_TIMESTEPS - 1)
        epsilon = unet(x, torch.full((3,), index)).sample
        sigma = (1 - ddpm_scheduler.alphas_cumprod[index]).sqrt()
        score = model(x, t=t).sample
        torch.testing.assert_close(-sigma * score, epsilon, rtol=1e-5, atol=1e-5)
        # The same noise level given as σ_t/α_t instead of t.
        noise_to_signal = sigma / ddpm_scheduler.alphas_cumprod[index].sqrt()
        torch.testing.assert_close(model(x, sigma=noise_to_signal).sample, score, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_between_grid_points_the_unet_gets_a_fractional_index_and_log_alpha_bar_interpolates(ddpm_scheduler, wrapped):
    _, model = wrapped
    calls = recorded_timesteps(model.unet)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    index, fraction = 20, 0.3
    t = torch.tensor([(index + fraction) / (NUM_TRAIN_TIMESTEPS - 1)] * 2)
    score = model(x, t=t).sample
    torch.testing.assert_close(calls[-1], torch.full((2,), index + fraction), rtol=0, atol=1e-4)
    log_alpha_bar = ddpm_scheduler.alphas_cumprod.double().log()
    interpolated = log_alpha_bar[index] + fraction * (log_alpha_bar[index + 1] - log_alpha_bar[index])
    sigma = (1 - interpolated.exp()).sqrt().float()
    epsilon = model.unet(x, calls[-1]).sample
    torch.testing.assert_close(-sigma * score, epsilon, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_denoise_matches_ddpm_pred_original_sample(ddpm_scheduler, wrapped):
    unet, model = wrapped
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ddpm_scheduler.set_timesteps(NUM_TRAIN_TIMESTEPS)
    for index in (3, 30):
        epsilon = unet(x, torch.full((2,), index)).sample
        expected = ddpm_scheduler.step(epsilon, index, x).pred_original_sample
        denoised = model.denoise(x, t=index / (NUM_TRAIN_TIMESTEPS - 1))
        torch.testing.assert_close(denoised, expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_epsilon_to_score_round_trips_through_save_pretrained(tmp_path, wrapped):
    _, model = wrapped
    model.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = EpsilonToScore.from_pretrained(tmp_path)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loaded(x, t=0.4).sample, model(x, t=0.4).sample, rtol=0, atol=0)
    assert loaded.config.scheduler_config["beta_schedule"] == model.config.scheduler_config["beta_schedule"]


@pytest.mark.parametrize("kwargs", [{}, {"t": 0.5, "sigma": 1.0}])
def test_epsilon_to_score_needs_exactly_one_of_t_and_sigma(wrapped, kwargs):
    _, model = wrapped
    with pytest.raises(ValueError, match="exactly one of `t`"):
        model(torch.zeros(1, 1, 8, 8), **kwargs)


def test_epsilon_to_score_refuses_a_non_epsilon_checkpoint():
    with pytest.raises(ValueError, match="prediction_type"):
        EpsilonToScore.from_unet(tiny_unet(), DDPMScheduler(prediction_type="v_prediction"))


# ---- NoiseConditionalClassifier -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_embedding_type", "timestep"),
    [("positional", torch.tensor(12.5)), ("fourier", torch.tensor([0.05, 1.0, 30.0]))],
)
def test_classifier_logits_shape_and_safetensors_round_trip(tmp_path, time_embedding_type, timestep):
    classifier = NoiseConditionalClassifier(
        sample_size=8, in_channels=2, num_classes=5, block_out_channels=(8, 16), norm_num_groups=4,
        time_embedding_type=time_embedding_type,
    ).eval()
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    output = classifier(x, timestep)
    assert output.logits.shape == (3, 5)
    (logits,) = classifier(x, timestep, return_dict=False)
    torch.testing.assert_close(logits, output.logits)

    classifier.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = NoiseConditionalClassifier.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(x, timestep).logits, output.logits, rtol=0, atol=0)


def test_classifier_noise_level_changes_logits():
    classifier = NoiseConditionalClassifier(sample_size=8, in_channels=1, num_classes=3, block_out_channels=(8,),
                                            norm_num_groups=4).eval()
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(classifier(x, 0).logits, classifier(x, 40).logits)


def test_classifier_from_unet_copies_image_size_and_time_convention():
    unet = tiny_unet(time_embedding_type="fourier", sample_size=(8, 8), in_channels=2, out_channels=2)
    classifier = NoiseConditionalClassifier.from_unet(unet, num_classes=4, block_out_channels=(8, 16),
                                                      norm_num_groups=4)
    assert classifier.config.sample_size == 8
    assert classifier.config.in_channels == 2
    assert classifier.config.time_embedding_type == "fourier"
    assert classifier.config.num_classes == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time_embedding_type": "learned"}, "time_embedding_type"),
        ({"block_out_channels": (8, 10)}, "block_out_channels"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_classifier_rejects_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseConditionalClassifier(**{"block_out_channels": (8, 16), "norm_num_groups": 4, **kwargs})
