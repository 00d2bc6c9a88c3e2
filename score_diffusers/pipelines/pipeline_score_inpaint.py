"""Inpainting with a score model: fill the masked pixels of an image, keeping the others."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from ..operators import MaskOperator
from .image_processing import ImageInput, images_to_tensor
from .pipeline_score_guided import OutputType
from .pipeline_score_inverse import (
    DEFAULT_NUM_PARTICLES,
    DEFAULT_PARTICLE_BATCH_SIZE,
    InverseMethod,
    InverseProblemPipelineOutput,
    ScoreInverseProblemPipeline,
)


class ScoreInpaintPipeline(ScoreInverseProblemPipeline):
    r"""Inpainting: sample the pixels under `mask_image` given the rest of `image`, with a score model.

    Diffusers' inpainting convention: in `mask_image`, white (1) is generated and black (0) is kept. The mask has
    one channel (applied to every channel) or the image's; one mask for the batch or one per image. It is the
    inverse problem y = m ⊙ x with σ_y = 0 (`MaskOperator`), solved by the methods of
    [`ScoreInverseProblemPipeline`]; with `"smc"` and `"replacement"` the kept pixels come back as they were.
    Loads what [`ScoreGuidedPipeline`] loads.
    """

    def _prepare_mask(self, mask_image: ImageInput, image: torch.Tensor) -> MaskOperator:
        mask = images_to_tensor(mask_image, "mask_image")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "`mask_image` must be binary: white (1 or 255) where pixels are generated, black (0) where they are "
                "kept; threshold it first (e.g. `mask > 0.5`)."
            )
        if mask.shape[0] not in (1, image.shape[0]) or mask.shape[1] not in (1, image.shape[1]) or \
                tuple(mask.shape[2:]) != tuple(image.shape[2:]):
            raise ValueError(
                f"`mask_image` of shape {tuple(mask.shape)} (batch, channels, height, width) does not fit `image` of "
                f"shape {tuple(image.shape)}: it needs the image's height and width, 1 or {image.shape[1]} channels, "
                f"and 1 or {image.shape[0]} masks."
            )
        return MaskOperator((1 - mask).to(image.device))

    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        method: InverseMethod = "smc",
        num_inference_steps: int = 50,
        num_particles: int = DEFAULT_NUM_PARTICLES,
        particle_batch_size: int = DEFAULT_PARTICLE_BATCH_SIZE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 0.0,
        output_type: OutputType = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> InverseProblemPipelineOutput | tuple:
        r"""Inpaint images.

        Args:
            image (`PIL.Image.Image`, list of them, `np.ndarray` of shape `(batch, height, width, channels)` or
                `torch.Tensor` of shape `(batch, channels, height, width)`): the images, values in [0, 1], of the
                unet's channels and size; only the kept pixels are read.
            mask_image (same types): 1 (white) where to generate, 0 (black) where to keep; 1 or the image's
                channels; one for all images or one per image.
            method, num_inference_steps, num_particles, particle_batch_size, generator, class_labels,
                guidance_scale, output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs:
                as for [`ScoreInverseProblemPipeline.__call__`]; the batch is the number of images.

        Returns:
            [`InverseProblemPipelineOutput`] with `images`, `nfe` and, for `"smc"`, `effective_sample_size`.
        """
        samples = self._images_to_samples(image, "image")
        operator = self._prepare_mask(mask_image, samples)
        return self._solve(operator.forward(samples), operator, 0.0, method, num_inference_steps, num_particles,
                           particle_batch_size, generator, class_labels, guidance_scale, output_type, return_dict,
                           callback_on_step_end, callback_on_step_end_tensor_inputs)
