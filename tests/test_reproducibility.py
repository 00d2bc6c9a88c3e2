"""Per-image reproducibility: with one generator per image, every scheduler of the registry, at its default settings,
gives an image the same result alone as inside a batch (the promise the pipeline's and the CLI's `generator` make)."""

from __future__ import annotations

import pytest
import torch
from helpers import DATA_DIM, per_sample_generators

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
