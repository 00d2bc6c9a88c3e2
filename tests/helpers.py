"""Helpers the tests share: the exact-score test mixture's shape, seeded generators, the seeded loop, a tiny UNet.

Everything is built in place: no Hub, no GPU, no files outside pytest's temporary folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import UNet2DModel

from score_diffusers.testing import ExactScoreModel, GaussianMixture, prior_sample, run_loop

# The data of every exact-score test: K components in DATA_DIM dimensions. 16 = 1 × 4 × 4, so the same mixture also
# serves as a distribution over tiny 1-channel 4 × 4 "images".
DATA_DIM = 16
NUM_COMPONENTS = 6
IMAGE_SHAPE = (1, 4, 4)
MIXTURE_SEED = 0


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`."""
    return torch.Generator().manual_seed(seed)


def per_sample_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One generator per sample, as Diffusers' `randn_tensor` takes them."""
    return [make_generator(seed) for seed in seeds]


def make_mixture() -> GaussianMixture:
    """The fixed 6-component Gaussian mixture in 16 dimensions with unequal weights and spreads."""
    return GaussianMixture.random(NUM_COMPONENTS, DATA_DIM, generator=make_generator(MIXTURE_SEED))


def sample_with_seed(
    scheduler,
    mixture: GaussianMixture,
    shape: Sequence[int],
    num_inference_steps: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw x_T and run the whole loop with the exact model of `mixture`, all randomness from one seeded generator."""
    generator = make_generator(seed)
    initial = prior_sample(scheduler, shape, generator, dtype)
    return run_loop(scheduler, ExactScoreModel(mixture, scheduler), initial, num_inference_steps, generator)


def tiny_unet(**overrides: Any) -> UNet2DModel:
    """A seeded 1-channel 8 × 8 UNet2DModel small enough for CPU tests; `overrides` replace its config entries."""
    torch.manual_seed(0)
    config = {
        "sample_size": 8,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
    }
    return UNet2DModel(**{**config, **overrides}).eval()


def describe_config(config: dict[str, Any]) -> str:
    """A short test id for a scheduler config."""
    return "-".join(f"{value}" for value in config.values()) or "defaults"
