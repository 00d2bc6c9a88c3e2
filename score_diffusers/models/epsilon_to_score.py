"""A DDPM ε-predictor seen as a continuous-time score model.

A DDPM trained on x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε predicts ε, and ∇ₓ log p_t(x) = −ε_θ(x, t)/σ_t with
σ_t = √(1 − ᾱ_t) (Song et al., 2021, https://arxiv.org/abs/2011.13456, App. B). The checkpoint only knows its
integer grid 0 … N − 1; between grid points this wrapper follows the VP SDE that the package builds from the
checkpoint's own ᾱ table (log ᾱ interpolated linearly, so any `beta_schedule` works) and feeds the unet the
matching fractional DDPM index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..conventions import ModelConvention


@dataclass
class EpsilonToScoreOutput(BaseOutput):
    """Output of `EpsilonToScore`.

    Args:
        sample (`torch.Tensor` of shape `(batch, *dims)`): the score ∇ₓ log p_t(x) (named `sample` like a unet
            output, so the wrapper drops into a sampling loop as a model).
    """

    sample: torch.Tensor


class EpsilonToScore(ModelMixin, ConfigMixin):
    """Score model s(x, t) = −ε_θ(x, (N − 1)·t)/σ_t around a Diffusers `UNet2DModel` ε-predictor.

    Time is continuous, t ∈ [0, 1], with the package's DDPM convention (`timestep_type="discrete"`): the unet
    receives the fractional index (N − 1)·t, and σ_t comes from the VP SDE on the checkpoint's ᾱ table, so at grid
    points σ_t² = 1 − ᾱ_i exactly. The noise level can be given instead as σ = σ_t/α_t (the package's `"sigma"`
    convention, EDM's σ).

    As a model in a sampling loop it pairs with a score scheduler configured from the same DDPM config with
    `prediction_type="score"` and `timestep_type="continuous"`: `model(x, t).sample` is then the score at t.

    Saved and loaded by Diffusers' `save_pretrained` / `from_pretrained` (config plus safetensors weights, the unet's
    under `unet.`).

    Args:
        unet_config (`dict`): config of the wrapped `UNet2DModel`.
        scheduler_config (`dict`): the checkpoint's `DDPMScheduler` config (ε prediction).
    """

    @register_to_config
    def __init__(self, unet_config: dict[str, Any], scheduler_config: dict[str, Any]):
        super().__init__()
        self.unet = UNet2DModel.from_config(unet_config)
        # The checkpoint's conventions: VP SDE on its ᾱ table, DDPM index ↔ t, ε ↔ score.
        self.convention = ModelConvention.from_config(
            {**DDPMScheduler.from_config(scheduler_config).config, "_class_name": "DDPMScheduler"}
        )

    @classmethod
    def from_unet(cls, unet: UNet2DModel, scheduler: DDPMScheduler | dict[str, Any]) -> EpsilonToScore:
        """Wrap a trained `unet` (its weights are copied, in float32) with its `DDPMScheduler` or that scheduler's
        config."""
        scheduler_config = scheduler.config if isinstance(scheduler, DDPMScheduler) else scheduler
        wrapper = cls(unet_config=dict(unet.config), scheduler_config=dict(scheduler_config))
        wrapper.unet.load_state_dict(unet.state_dict())
        return wrapper.to(unet.device)

    @property
    def sde(self):
        """The VP SDE of the checkpoint (`VPSDE` on its ᾱ table)."""
        return self.convention.sde

    def _time(self, t: torch.Tensor | float | None, sigma: torch.Tensor | float | None) -> torch.Tensor:
        if (t is None) == (sigma is None):
            raise ValueError("Pass exactly one of `t` (continuous time in [0, 1]) and `sigma` (σ_t/α_t > 0).")
        if t is not None:
            return torch.as_tensor(t).detach().to("cpu", torch.float64)
        return self.sde.time_from_noise_to_signal(torch.as_tensor(sigma).detach().to("cpu", torch.float64))

    def epsilon(
        self,
        sample: torch.Tensor,
        t: torch.Tensor | float | None = None,
        sigma: torch.Tensor | float | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unet's ε at continuous time `t` (or noise level `sigma`) and that time as float64 on the CPU."""
        time = self._time(t, sigma)
        index = self.convention.timestep(time).to(device=sample.device, dtype=torch.float32)
        index = index.expand(sample.shape[0]) if index.ndim == 0 else index
        return self.unet(sample, index, class_labels=class_labels).sample, time

    def forward(
        self,
        sample: torch.Tensor,
        t: torch.Tensor | float | None = None,
        sigma: torch.Tensor | float | None = None,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> EpsilonToScoreOutput | tuple[torch.Tensor]:
        """The score ∇ₓ log p_t(x) = −ε_θ(x, (N − 1)·t)/σ_t.

        Args:
            sample (`torch.Tensor` of shape `(batch, channels, height, width)`): the noisy sample x_t.
            t (`torch.Tensor` of shape `()` or `(batch,)`, or `float`): continuous time in [0, 1].
            sigma (`torch.Tensor` of shape `()` or `(batch,)`, or `float`): noise level σ_t/α_t instead of `t`.
            class_labels (`torch.Tensor` of shape `(batch,)`, *optional*): for class-conditional unets.
            return_dict (`bool`, defaults to `True`): return an `EpsilonToScoreOutput` rather than a tuple.

        Returns:
            `EpsilonToScoreOutput` whose `sample` is the score (shape of `sample`), or the tuple `(score,)`.
        """
        epsilon, time = self.epsilon(sample, t, sigma, class_labels)
        score = self.convention.score_from_output(epsilon, self.sde.marginal_std(time))
        if not return_dict:
            return (score,)
        return EpsilonToScoreOutput(sample=score)

    def denoise(
        self,
        sample: torch.Tensor,
        t: torch.Tensor | float | None = None,
        sigma: torch.Tensor | float | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tweedie's denoised estimate x̂₀ = (x_t + σ_t²·score)/α_t = (x_t − σ_t·ε_θ)/α_t.

        Args: as for `forward`.

        Returns:
            `torch.Tensor` of the shape of `sample`.
        """
        epsilon, time = self.epsilon(sample, t, sigma, class_labels)
        alpha, sigma_t = self.convention.coefficients(time)
        return self.convention.denoised(sample, self.convention.score_from_output(epsilon, sigma_t), alpha, sigma_t)
