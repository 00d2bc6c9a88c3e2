"""The `UNet2DModel` score network of the NCSN and score-SDE scripts: its flags, the resolutions it takes, and its
construction."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from diffusers import UNet2DModel

if TYPE_CHECKING:
    from .data import ImageBatchDataset


def add_unet_arguments(parser: argparse.ArgumentParser, default_channels: Sequence[int] = (32, 64, 64)) -> None:
    """Size of the `UNet2DModel` score network."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--block_out_channels",
        type=int,
        nargs="+",
        default=list(default_channels),
        help="U-Net width per resolution level; the resolution halves between levels.",
    )
    model.add_argument("--layers_per_block", type=int, default=1, help="ResNet layers per U-Net level.")
    model.add_argument(
        "--attention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Self-attention at the U-Net's lowest resolution.",
    )


def downsampling_factor(block_out_channels: Sequence[int]) -> int:
    """How much a U-Net with these levels shrinks its input: 2 per level after the first."""
    return 2 ** (len(block_out_channels) - 1)


def check_resolution(resolution: int, block_out_channels: Sequence[int]) -> None:
    """Raise a `ValueError` unless the U-Net's levels can halve `resolution` down to their lowest one."""
    factor = downsampling_factor(block_out_channels)
    if resolution % factor:
        raise ValueError(
            f"resolution {resolution} is not divisible by the U-Net's downsampling factor {factor} "
            f"({len(block_out_channels)} levels in --block_out_channels); pick a multiple of {factor} or fewer levels."
        )


def build_unet(
    args: argparse.Namespace, data: ImageBatchDataset, time_embedding_type: str, num_train_timesteps: int | None = None
) -> UNet2DModel:
    """A `UNet2DModel` for the data's size and channels; attention (optional) at the lowest resolution.

    `time_embedding_type="fourier"` embeds log σ and divides the output by σ (the NCSN++ parameterisation, so the
    output is a score); `"positional"` is DDPM's sinusoidal embedding of the timestep.
    """
    levels = len(args.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if args.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=data.resolution,
        in_channels=data.num_channels,
        out_channels=data.num_channels,
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        time_embedding_type=time_embedding_type,
        norm_num_groups=min(32, math.gcd(*args.block_out_channels)),
        attention_head_dim=None,
        num_train_timesteps=num_train_timesteps,
    )
