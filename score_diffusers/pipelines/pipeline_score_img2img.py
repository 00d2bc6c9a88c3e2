"""SDEdit image-to-image with a score model (Meng et al., 2022, https://arxiv.org/abs/2108.01073): noise a guide image
part of the way through the forward SDE and solve the reverse process back."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from ..checks import check_number
from ..models.denoised_input import as_guidance_classifier
from .image_processing import ImageInput
from .pipeline_score_guided import OutputType, ScoreGuidedPipeline


class ScoreImg2ImgPipeline(ScoreGuidedPipeline):
    r"""SDEdit: edit `image` by noising it to time t = `strength`·T of the SDE and sampling back to the data.

    Diffusers' image-to-image convention: of the scheduler's `num_inference_steps` time points, the last
    ⌊`num_inference_steps`·`strength`⌋ are run (`scheduler.set_begin_index` at the first of them, entry k), from
    x = α_k·x₀ + σ_k·z at that entry's grid point. `strength=1` is unconditional sampling from the prior (the image
    is not read: at T the prior stands in for p_T, as in every sampler here); small strengths stay close to the
    image. With an exact score, samples of p₀ edited at any strength are again samples of p₀. Works with every
    scheduler of the package and with classifier guidance, and loads what [`ScoreGuidedPipeline`] loads.
    """

    def _begin_entry(self, num_inference_steps: int, strength: float) -> int:
        """The entry of `scheduler.timesteps` where a run of strength `strength` starts."""
        steps_run = min(int(num_inference_steps * strength), num_inference_steps)
        if steps_run == 0:
            raise ValueError(
                f"`strength`={strength} runs no step of `num_inference_steps`={num_inference_steps} (it runs "
                "⌊num_inference_steps × strength⌋); raise either."
            )
        return (num_inference_steps - steps_run) * self.scheduler.order

    def __call__(
        self,
        image: ImageInput,
        strength: float = 0.8,
        num_inference_steps: int = 50,
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
    ) -> ImagePipelineOutput | tuple:
        r"""Edit images.

        Args:
            image (`PIL.Image.Image`, list of them, `np.ndarray` of shape `(batch, height, width, channels)` or
                `torch.Tensor` of shape `(batch, channels, height, width)`): the guides, values in [0, 1], of the
                unet's channels and size.
            strength (`float`, defaults to 0.8): in (0, 1]: how far into the forward SDE the guide is noised (the
                fraction of the steps that run).
            num_inference_steps (`int`, defaults to 50): the scheduler's `num_inference_steps` for a full run.
            generator, class_labels, guidance_scale, output_type, return_dict, callback_on_step_end,
                callback_on_step_end_tensor_inputs: as for [`ScoreGuidedPipeline.__call__`]; the batch is the
                number of images.

        Returns:
            [`~pipelines.ImagePipelineOutput`] with `images`, or the tuple `(images,)`.
        """
        check_number("strength", strength, 0.0, 1.0, low_open=True)
        guide = self._images_to_samples(image, "image")
        batch_size = guide.shape[0]
        tensor_inputs = self._check_call_arguments(batch_size, output_type, generator, callback_on_step_end,
                                                   callback_on_step_end_tensor_inputs)
        device = self._execution_device
        labels = self._prepare_class_labels(class_labels, guidance_scale, batch_size, device)
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        begin = self._begin_entry(num_inference_steps, strength)
        noise = self._standard_normal(batch_size, generator, device)
        if begin == 0:
            sample = noise * scheduler.init_noise_sigma
        else:
            scheduler.set_begin_index(begin)
            time = scheduler.grid.times[begin]
            sample = scheduler.convention.perturb(guide.to(noise.dtype), time, noise).sample.to(noise.dtype)
        classifier = None if self.classifier is None else as_guidance_classifier(self.classifier)

        def model_output_fn(model_input, timestep, alpha, sigma):
            return self._model_output(model_input, timestep, alpha, sigma, labels, guidance_scale, classifier)

        sample = self._sampling_loop(sample, model_output_fn, generator, callback_on_step_end, tensor_inputs)
        images = self._to_images(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
