"""Per-image reproducibility: with one generator per image, every scheduler of the registry, at its default settings,
gives an image the same result alone as inside a batch (the promise the pipeline's and the CLI's `generator` make), at
the scheduler level and through `ScoreGuidedPipeline`."""

from __future__ import annotations

import pytest
import torch
from helpers import DATA_DIM, per_sample_generators, tiny_unet

from score_diffusers import ScoreGuidedPipeline
from score_diffusers.schedulers import SCHEDULERS, build_scheduler
from score_diffusers.testing import ExactScoreModel, GaussianMixture, prior_sample, run_loop

# The model config of each SDE, the rest at the schedulers' defaults; annealed Langevin is VE only.
SDE_CONFIGS = {"ve": {}, "vp": {"sde_type": "vp"}}
CASES = [
    (name, sde)
    for name in SCHEDULERS
    for sde in SDE_CONFIGS
    if sde in SCHEDULERS[name].scheduler_class._supported_sde_types
]
# Image 0 alone and in a batch go through the same float32 operations; only the mixture's batched matrix products
# may round differently.
TOLERANCE = 1e-6


def first_image(scheduler_for, mixture: GaussianMixture, seeds: list[int], num_inference_steps: int) -> torch.Tensor:
    """Image 0 of a batch drawn with one generator per image (seeded `seeds`), x_T included."""
    scheduler = scheduler_for()
    generators = per_sample_generators(seeds)
    x_T = prior_sample(scheduler, (len(seeds), DATA_DIM), generators)
    return run_loop(scheduler, ExactScoreModel(mixture, scheduler), x_T, num_inference_steps, generators)[0]


@pytest.mark.parametrize("name, sde", CASES, ids=[f"{name}-{sde}" for name, sde in CASES])
def test_an_image_is_the_same_alone_and_in_a_batch(name: str, sde: str, mixture: GaussianMixture):
    recipe = SCHEDULERS[name]

    def scheduler_for():
        return build_scheduler(name, SDE_CONFIGS[sde])

    alone = first_image(scheduler_for, mixture, [0], recipe.num_inference_steps)
    in_batch = first_image(scheduler_for, mixture, [0, 1, 2], recipe.num_inference_steps)
    torch.testing.assert_close(in_batch, alone, rtol=0, atol=TOLERANCE)


def test_the_check_sees_a_batch_dependent_step(mixture: GaussianMixture):
    """The same check fails for a corrector whose step is averaged over the batch."""

    def scheduler_for():
        return build_scheduler("pc", {"corrector_norm": "batch"})

    alone = first_image(scheduler_for, mixture, [0], 20)
    in_batch = first_image(scheduler_for, mixture, [0, 1, 2], 20)
    assert float((in_batch - alone).abs().max()) > 100 * TOLERANCE


# ---- through the pipeline ------------------------------------------------------------------------------------------

# A tiny UNet stands for the model: a σ-fed score model for VE, a DDPM checkpoint's ε model (its ᾱ table, index
# timesteps) for VP. A few steps suffice: a step that depends on the batch shows at the first corrector step.
PIPELINE_SDE_CONFIGS = {
    "ve": {"timestep_type": "sigma"},
    "vp": {"sde_type": "vp", "beta_schedule": "linear", "prediction_type": "epsilon", "timestep_type": "discrete",
           "num_train_timesteps": 100},
}
PIPELINE_STEPS = 4
# The UNet's convolutions over a batch of 3 and of 1 may round differently in float32.
PIPELINE_TOLERANCE = 1e-5


def first_pipeline_image(pipe: ScoreGuidedPipeline, seeds: list[int]) -> torch.Tensor:
    """Image 0, unclamped, of a batch drawn with one generator per image (seeded `seeds`)."""
    output = pipe(batch_size=len(seeds), num_inference_steps=PIPELINE_STEPS, generator=per_sample_generators(seeds),
                  output_type="latent")
    return output.images[0]


@pytest.mark.parametrize("name, sde", CASES, ids=[f"{name}-{sde}" for name, sde in CASES])
def test_an_image_is_the_same_alone_and_in_a_batch_through_the_pipeline(name: str, sde: str):
    pipe = ScoreGuidedPipeline(unet=tiny_unet(), scheduler=build_scheduler(name, PIPELINE_SDE_CONFIGS[sde]))
    pipe.set_progress_bar_config(disable=True)
    alone = first_pipeline_image(pipe, [0])
    in_batch = first_pipeline_image(pipe, [0, 1, 2])
    scale = 1 + float(alone.abs().max())
    torch.testing.assert_close(in_batch, alone, rtol=0, atol=PIPELINE_TOLERANCE * scale)


def test_the_pipeline_check_sees_a_batch_dependent_step():
    pipe = ScoreGuidedPipeline(
        unet=tiny_unet(), scheduler=build_scheduler("pc", {**PIPELINE_SDE_CONFIGS["ve"], "corrector_norm": "batch"})
    )
    pipe.set_progress_bar_config(disable=True)
    alone = first_pipeline_image(pipe, [0])
    in_batch = first_pipeline_image(pipe, [0, 1, 2])
    assert float((in_batch - alone).abs().max()) > 100 * PIPELINE_TOLERANCE * (1 + float(alone.abs().max()))
