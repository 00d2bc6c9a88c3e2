"""A small time-conditional image classifier q_φ(y | x_t, t) for classifier guidance.

Guidance needs ∇ₓ log q_φ(y | x_t, t) on noisy inputs, so the classifier is trained on x_t at every noise level and
told the noise level in the same convention as the score model it guides (Dhariwal & Nichol, 2021,
https://arxiv.org/abs/2105.05233; Song et al., 2021, https://arxiv.org/abs/2011.13456, §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.utils import BaseOutput
from torch import nn

from ..checks import check_choice, check_positive_int

TimeEmbeddingType = Literal["positional", "fourier"]
TIME_EMBEDDING_TYPES: tuple[str, ...] = ("positional", "fourier")
# Scale of the random Fourier frequencies on log σ, as in Diffusers' UNet2DModel and NCSN++.
_FOURIER_SCALE = 16.0


@dataclass
class NoiseConditionalClassifierOutput(BaseOutput):
    """Output of `NoiseConditionalClassifier`.

    Args:
        logits (`torch.Tensor` of shape `(batch, num_classes)`): unnormalised log-probabilities log q_φ(y | x_t, t) + c.
    """

    logits: torch.Tensor


class NoiseConditionalClassifier(ModelMixin, ConfigMixin):
    """A time-conditional convolutional classifier: residual blocks (Diffusers' `ResnetBlock2D`, which add the time
    embedding) with stride-2 downsampling between widths, global average pooling and a linear head.

    The timestep is embedded the way Diffusers' `UNet2DModel` embeds it, so the classifier is called with exactly
    the timestep its score model receives:

    - ``"positional"``: sinusoidal embedding of the timestep itself (DDPM index timesteps, fractional allowed);
    - ``"fourier"``: random Fourier features of log σ (σ timesteps, as NCSN++ / `UNet2DModel(time_embedding_type=
      "fourier")`); σ must be > 0.

    `from_unet` copies these choices and the image size from a `UNet2DModel`.

    Args:
        sample_size (`int`, defaults to 32): height and width of the input images.
        in_channels (`int`, defaults to 3): channels of the input images.
        num_classes (`int`, defaults to 10): number of classes.
        block_out_channels (`tuple[int, ...]`, defaults to `(32, 64, 128)`): width of each resolution level; the
            resolution halves between levels.
        layers_per_block (`int`, defaults to 1): residual blocks per level.
        time_embedding_type (`str`, defaults to `"positional"`): `"positional"` or `"fourier"` (see above).
        flip_sin_to_cos (`bool`, defaults to `True`), freq_shift (`int`, defaults to 0): options of the positional
            embedding, as in `UNet2DModel`.
        norm_num_groups (`int`, defaults to 8): groups of the group normalisations.
        dropout (`float`, defaults to 0.0): dropout inside the residual blocks.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 1,
        time_embedding_type: TimeEmbeddingType = "positional",
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        norm_num_groups: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_choice("time_embedding_type", time_embedding_type, TIME_EMBEDDING_TYPES)
        for argument, value in (
            ("sample_size", sample_size),
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("layers_per_block", layers_per_block),
        ):
            check_positive_int(argument, value)
        if not block_out_channels or any(width % norm_num_groups for width in block_out_channels):
            raise ValueError(
                f"`block_out_channels` must be non-empty and divisible by `norm_num_groups`={norm_num_groups}; "
                f"got {tuple(block_out_channels)}."
            )
        base_width = block_out_channels[0]
        time_embed_dim = 4 * base_width
        if time_embedding_type == "fourier":
            self.time_proj = GaussianFourierProjection(embedding_size=base_width, scale=_FOURIER_SCALE)
            time_input_dim = 2 * base_width
        else:
            self.time_proj = Timesteps(base_width, flip_sin_to_cos, freq_shift)
            time_input_dim = base_width
        self.time_embedding = TimestepEmbedding(time_input_dim, time_embed_dim)

        self.conv_in = nn.Conv2d(in_channels, base_width, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        width = base_width
        for level, out_width in enumerate(block_out_channels):
            for _ in range(layers_per_block):
                self.blocks.append(
                    ResnetBlock2D(
                        in_channels=width,
                        out_channels=out_width,
                        temb_channels=time_embed_dim,
                        groups=norm_num_groups,
                        dropout=dropout,
                    )
                )
                width = out_width
            if level < len(block_out_channels) - 1:
                self.blocks.append(nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1))
        self.norm_out = nn.GroupNorm(norm_num_groups, width)
        self.act = nn.SiLU()
        self.head = nn.Linear(width, num_classes)

    @classmethod
    def from_unet(cls, unet: ModelMixin, num_classes: int, **kwargs) -> NoiseConditionalClassifier:
        """A classifier for the images and timestep convention of a Diffusers `UNet2DModel`.

        Args:
            unet (`UNet2DModel`): the score / ε model to be guided; its `sample_size`, `in_channels`,
                `time_embedding_type`, `flip_sin_to_cos` and `freq_shift` are copied.
            num_classes (`int`): number of classes.
            **kwargs: any other config value of this class (widths, depth, ...).
        """
        config = unet.config
        sample_size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        inherited = {
            "sample_size": sample_size,
            "in_channels": config.in_channels,
            "time_embedding_type": config.get("time_embedding_type", "positional"),
            "flip_sin_to_cos": config.get("flip_sin_to_cos", True),
            "freq_shift": config.get("freq_shift", 0),
        }
        return cls(num_classes=num_classes, **{**inherited, **kwargs})

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, return_dict: bool = True
    ) -> NoiseConditionalClassifierOutput | tuple[torch.Tensor]:
        """Class logits of noisy images.

        Args:
            sample (`torch.Tensor` of shape `(batch, in_channels, sample_size, sample_size)`): noisy images x_t.
            timestep (`torch.Tensor` of shape `()` or `(batch,)`, or `float`): the noise level in the score model's
                convention (a DDPM index for `"positional"`, σ > 0 for `"fourier"`). Pass fractional values as
                float tensors.
            return_dict (`bool`, defaults to `True`): return a `NoiseConditionalClassifierOutput` rather than a tuple.

        Returns:
            `NoiseConditionalClassifierOutput` with `logits` of shape `(batch, num_classes)`, or the tuple `(logits,)`.
        """
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32)
        timestep = timestep.expand(sample.shape[0]) if timestep.ndim == 0 else timestep
        time_features = self.time_proj(timestep).to(dtype=sample.dtype)
        temb = self.time_embedding(time_features)

        hidden = self.conv_in(sample)
        for block in self.blocks:
            hidden = block(hidden, temb) if isinstance(block, ResnetBlock2D) else block(hidden)
        pooled = self.act(self.norm_out(hidden)).mean(dim=(2, 3))
        logits = self.head(pooled)
        if not return_dict:
            return (logits,)
        return NoiseConditionalClassifierOutput(logits=logits)
