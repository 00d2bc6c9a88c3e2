"""The adapter that lets a classifier trained on clean images guide sampling: it reads Tweedie's denoised estimate.

Guidance has one classifier protocol, `classifier(sample, timestep) -> logits` (a tensor, or an output with
`.logits`). A classifier with `takes_denoised_input = True` is handed x̂₀ = (x_t + σ_t²·score)/α_t instead of x_t,
with the score held constant, so its gradient reaches x_t as (1/α_t)·∇_x̂₀ and no unet backward pass is needed.
"""

from __future__ import annotations

import torch


class DenoisedInputClassifier(torch.nn.Module):
    """A classifier of clean images (a `transformers` image-classification model, or any module called with
    `pixel_values=`) used for guidance on the denoised estimate x̂₀, in the unet's data space ([−1, 1], which
    processors normalising with mean = std = 0.5 produce).

    Args:
        classifier (`torch.nn.Module`): called `classifier(pixel_values=x̂₀)`, returning logits or an output with
            `.logits`.
    """

    takes_denoised_input = True

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    @staticmethod
    def reads_pixel_values(classifier: torch.nn.Module) -> bool:
        """Whether `classifier` takes images as `pixel_values=` (a `transformers` vision model) rather than being
        called `(x_t, timestep)`."""
        return getattr(classifier, "main_input_name", None) == "pixel_values"

    @property
    def device(self) -> torch.device:
        """The wrapped classifier's device (Diffusers' pipeline machinery reads it)."""
        return next(self.classifier.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.classifier.parameters()).dtype

    @property
    def config(self):
        """The wrapped classifier's config (where the number of classes is declared)."""
        return getattr(self.classifier, "config", None)

    def forward(self, denoised: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the classes for `denoised` of shape `(batch, channels, height, width)`; `timestep` is unused."""
        output = self.classifier(pixel_values=denoised.to(self.dtype))
        return getattr(output, "logits", output)


def as_guidance_classifier(classifier: torch.nn.Module) -> torch.nn.Module:
    """`classifier` as the guidance protocol sees it: a `pixel_values` classifier wrapped in
    `DenoisedInputClassifier`, any other classifier (a noise-conditional one) as it is."""
    return DenoisedInputClassifier(classifier) if DenoisedInputClassifier.reads_pixel_values(classifier) else classifier
