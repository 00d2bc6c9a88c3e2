"""Score-based sampling with classifier guidance, for score models and DDPM checkpoints alike.

Classifier guidance samples p(x | y) ∝ p(x)·q(y | x)^w by adding w·∇ₓ log q_φ(y | x_t, t) to the score at every model
evaluation (Song et al., 2021, https://arxiv.org/abs/2011.13456, §5; Dhariwal & Nichol, 2021,
https://arxiv.org/abs/2105.05233).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Literal

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm
from diffusers.utils.torch_utils import randn_tensor

from ..checks import check_choice, check_generator, check_number, check_positive_int
from ..conventions import config_source
from ..models.denoised_input import as_guidance_classifier
from .image_processing import ImageInput, images_to_tensor
from ..sampling.adaptive import DEFAULT_RTOL, adaptive_reverse_sde
from ..schedulers import ScoreSchedulerMixin, build_scheduler, default_scheduler_name
from ..schedulers.registry import scheduler_class_names

logger = logging.getLogger(__name__)

OutputType = Literal["pil", "np", "pt", "latent"]
OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt", "latent")


def as_score_scheduler(scheduler: SchedulerMixin) -> ScoreSchedulerMixin:
    """`scheduler` itself if it is a score scheduler of this package; a Diffusers ᾱ-table scheduler (`DDPMScheduler`,
    `DDIMScheduler`, `EulerDiscreteScheduler`, …) or a `ScoreSdeVeScheduler` becomes the registry's default sampler
    for its SDE (`DEFAULT_SCHEDULERS`), configured from it (same ᾱ table or σ range, prediction type and timestep
    convention). Anything else raises a `ValueError`."""
    if isinstance(scheduler, ScoreSchedulerMixin):
        return scheduler
    config = {**getattr(scheduler, "config", {}), "_class_name": type(scheduler).__name__}
    if config_source(config) == "score":
        raise ValueError(
            f"`scheduler` must be a score scheduler of score_diffusers ({scheduler_class_names()}), or a Diffusers "
            f"DDPM-family or ScoreSdeVeScheduler to convert; got {type(scheduler).__name__}."
        )
    name = default_scheduler_name(config)
    swapped = build_scheduler(name, config)
    logger.warning(
        f"ScoreGuidedPipeline: swapped the checkpoint's {type(scheduler).__name__} for {type(swapped).__name__}"
        f".from_config(...) (the {name!r} sampler; sde_type={swapped.config.sde_type!r}, "
        f"prediction_type={swapped.config.prediction_type!r}, timestep_type={swapped.config.timestep_type!r}); pass "
        "`scheduler=` to choose another score scheduler."
    )
    return swapped


@dataclass
class AdaptiveImagePipelineOutput(BaseOutput):
    """Output of `ScoreGuidedPipeline.sample_adaptive`.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): as `ImagePipelineOutput.images`.
        nfe (`torch.Tensor` of shape `(batch,)`): model evaluations spent on each image.
    """

    images: Any
    nfe: torch.Tensor


def _field(output: Any, name: str) -> torch.Tensor:
    """`output.<name>` for model outputs such as `UNet2DOutput` / `ImageClassifierOutput`, else `output` itself."""
    return getattr(output, name) if hasattr(output, name) else output


def _check_label_range(labels: torch.Tensor, num_classes: int, source: str) -> None:
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(
            f"`class_labels` must lie in [0, {num_classes - 1}] ({num_classes} classes of the {source}); "
            f"got {labels.tolist()}."
        )


class ScoreGuidedPipeline(DiffusionPipeline):
    r"""Unconditional, class-conditional and classifier-guided sampling with the score schedulers of this package.

    The loop is Diffusers' plain one: one model evaluation per entry of `scheduler.timesteps`. With a classifier
    and `guidance_scale` w > 0, each evaluation's score s = ∇ₓ log p_t(x) is replaced by

        s + w·∇ₓ log q_φ(y | x_t, t),

    the gradient taken by autograd through the classifier only (the unet runs under `no_grad`). The term is added
    at the σ_t of the scheduler's own grid entry (`scheduler.grid`), in the model's output units: an ε model's
    output gains −σ_t·w·∇ₓ log q. That is one classifier forward and backward and one conversion per evaluation.

    One classifier protocol: `classifier(x_t, timestep)` with exactly the timestep tensor (shape `(batch,)`) that
    the unet receives, returning logits (a tensor or an output with `.logits`), e.g. a
    [`NoiseConditionalClassifier`]. A classifier of clean images reads Tweedie's denoised estimate
    x̂₀ = (x_t + σ_t²·s)/α_t instead (`DenoisedInputClassifier`, which a `transformers` image-classification model, or
    any module taking `pixel_values=`, is wrapped in): x̂₀ is in the unet's data space ([−1, 1], which processors
    normalising with mean = std = 0.5 produce), and the gradient flows through the classifier and the x̂₀ formula
    only, holding s constant (∇ₓ = (1/α_t)·∇_x̂₀); differentiating through the unet as well would cost a unet
    backward per evaluation. A class-conditional unet (`num_class_embeds` in its config) receives `class_labels`
    directly.

    Data are assumed to live in [−1, 1]; images are returned as (x/2 + 1/2) clamped to [0, 1], like `DDPMPipeline`.

    `from_pretrained` loads this pipeline's own saves and stock `DDPMPipeline` folders: their `DDPMScheduler` is
    swapped for the registry's default sampler of its SDE (`ProbabilityFlowScheduler.from_config(...)` for VP; said
    in the log) unless `scheduler=` passes a score scheduler; `classifier=` adds a classifier. `save_pretrained` stores every component; a classifier persists
    when it is a `ModelMixin` (with `ConfigMixin`) or a `transformers` model.

    Args:
        unet (`torch.nn.Module`):
            Score or ε model called `unet(sample, timestep[, class_labels=...])`, returning a tensor or an output
            with `.sample`; its `config` gives `sample_size` and `in_channels` (e.g. `UNet2DModel`). Like every
            module component here it must expose `.device`.
        scheduler (`SchedulerMixin`):
            A score scheduler of this package, or a `DDPMScheduler` / `DDIMScheduler` / `ScoreSdeVeScheduler` to be
            converted (see `as_score_scheduler`).
        classifier (`torch.nn.Module`, *optional*):
            Noise-conditional classifier or `transformers` image classifier used for guidance.
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["classifier"]
    # "latents" is Diffusers' name for the loop's sample (callbacks written for its pipelines use it); "sample" is the
    # same tensor under this pipeline's name.
    _callback_tensor_inputs = ["latents", "sample", "pred_original_sample"]

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: SchedulerMixin,
        classifier: torch.nn.Module | None = None,
    ):
        super().__init__()
        for name, component in (("unet", unet), ("classifier", classifier)):
            if component is not None and not hasattr(component, "device"):
                raise ValueError(
                    f"`{name}` must expose `.device` as Diffusers' pipeline machinery expects (a `ModelMixin`, a "
                    f"`transformers` model, or a module with a `device` property); got {type(component).__name__}."
                )
        self.register_modules(unet=unet, scheduler=as_score_scheduler(scheduler), classifier=classifier)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`DiffusionPipeline.from_pretrained`; a folder that also holds its code for stock Diffusers
        (`score_diffusers.export`) gets the components named in that code built from this package's own classes, so
        no file of the folder is executed."""
        from ..export import package_components

        if isinstance(pretrained_model_name_or_path, os.PathLike):
            # Diffusers reads a `str` as a Hub id or a folder; a path object names a folder.
            pretrained_model_name_or_path = os.fspath(pretrained_model_name_or_path)
            if not os.path.isdir(pretrained_model_name_or_path):
                raise FileNotFoundError(
                    f"`pretrained_model_name_or_path` {pretrained_model_name_or_path!r} is not a folder (a saved "
                    "pipeline's, with model_index.json)."
                )
        components = package_components(cls, pretrained_model_name_or_path, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs, **components)

    # ---- input checks --------------------------------------------------------------------------------------------

    def _known_class_counts(self) -> dict[str, int]:
        """Number of classes per component that declares one in its config."""
        counts = {}
        unet_classes = self.unet.config.get("num_class_embeds")
        if unet_classes is not None:
            counts["class-conditional unet"] = unet_classes
        classifier_config = getattr(self.classifier, "config", None)
        for key in ("num_classes", "num_labels"):
            if getattr(classifier_config, key, None) is not None:
                counts["classifier"] = getattr(classifier_config, key)
                break
        return counts

    def _prepare_class_labels(
        self,
        class_labels: int | list[int] | torch.Tensor | None,
        guidance_scale: float,
        batch_size: int,
        device: torch.device,
    ) -> torch.Tensor | None:
        """Validate the conditioning arguments and return the labels as an int64 tensor of shape `(batch,)`."""
        check_number("guidance_scale", guidance_scale, 0, math.inf, high_open=True)
        class_conditional_unet = self.unet.config.get("num_class_embeds") is not None
        if guidance_scale > 0 and self.classifier is None:
            raise ValueError(
                f"`guidance_scale`={guidance_scale} needs a classifier; load one with `classifier=` or set "
                "`guidance_scale=0`."
            )
        if class_labels is None:
            if guidance_scale > 0:
                raise ValueError(f"`guidance_scale`={guidance_scale} > 0 needs `class_labels` to guide towards.")
            if class_conditional_unet:
                raise ValueError("The unet is class-conditional (`num_class_embeds`); pass `class_labels`.")
            return None
        if self.classifier is None and not class_conditional_unet:
            raise ValueError(
                "`class_labels` needs a classifier (with `guidance_scale` > 0) or a class-conditional unet "
                "(`num_class_embeds`); this pipeline has neither."
            )
        if guidance_scale == 0 and not class_conditional_unet:
            logger.warning("`class_labels` are ignored: `guidance_scale` is 0 and the unet is not class-conditional.")

        labels = torch.as_tensor(class_labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"`class_labels` must be integers (int, list of int or integer tensor); got {labels.dtype}.")
        labels = labels.to(device=device, dtype=torch.long).flatten()
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(
                f"`class_labels` must be one label or `batch_size`={batch_size} labels; got {labels.numel()}."
            )
        for source, num_classes in self._known_class_counts().items():
            _check_label_range(labels, num_classes, source)
        return labels

    # ---- guidance ------------------------------------------------------------------------------------------------

    def _classifier_log_prob_grad(
        self,
        classifier: torch.nn.Module,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        labels: torch.Tensor,
        model_output: torch.Tensor,
        alpha: float | torch.Tensor,
        sigma: float | torch.Tensor,
    ) -> torch.Tensor:
        """∇ₓ log q_φ(y | x_t, t) per sample, shape of `sample`; a denoised-input classifier reads
        x̂₀ = (x + σ_t²·s)/α_t with the score s of `model_output` held constant (∇ₓ x̂₀ = 1/α_t)."""
        with torch.enable_grad():
            x = sample.detach().requires_grad_(True)
            inputs = x
            if getattr(classifier, "takes_denoised_input", False):
                convention = self.scheduler.convention
                score = convention.score_from_output(model_output.detach(), sigma)
                inputs = convention.denoised(x, score, alpha, sigma)
            logits = _field(classifier(inputs, timestep), "logits")
            _check_label_range(labels, logits.shape[-1], "classifier's logits")
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            # Samples are independent, so the gradient of the sum is each sample's own gradient.
            selected = log_probs.gather(-1, labels[:, None]).sum()
            (gradient,) = torch.autograd.grad(selected, x)
        return gradient.to(sample.dtype)

    def _model_output(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        alpha: float | torch.Tensor,
        sigma: float | torch.Tensor,
        labels: torch.Tensor | None,
        guidance_scale: float,
        classifier: torch.nn.Module | None,
    ) -> torch.Tensor:
        """The unet's output at (`sample`, `timestep`) with the guidance term w·∇ₓ log q added to the score at the
        caller's α_t, σ_t (a float, or one per sample): the σ the step uses, so for an ε model the output gains
        −σ_t·w·∇ₓ log q, one conversion of the gradient and no time lookup."""
        model_timestep = timestep.expand(sample.shape[0]) if timestep.ndim == 0 else timestep
        unet_kwargs = {"class_labels": labels} if self.unet.config.get("num_class_embeds") is not None else {}
        with torch.no_grad():
            model_output = _field(self.unet(sample, model_timestep, **unet_kwargs), "sample")
        if guidance_scale == 0:
            return model_output
        gradient = self._classifier_log_prob_grad(classifier, sample, model_timestep, labels, model_output, alpha, sigma)
        return model_output + self.scheduler.convention.output_from_score(guidance_scale * gradient, sigma)

    # ---- sampling ------------------------------------------------------------------------------------------------

    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 0.0,
        output_type: OutputType = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        timesteps: list[float] | None = None,
        sigmas: list[float] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size (`int`, defaults to 1): number of images.
            num_inference_steps (`int`, defaults to 50): the scheduler's `num_inference_steps` (time points or noise
                levels); the model runs `len(scheduler.timesteps)` times, e.g. 2n − 1 for Heun, n·(1 + correct_steps)
                for predictor-corrector.
            generator (`torch.Generator` or list of `batch_size` of them, *optional*): source of the initial noise and
                of every sampler noise draw; a list makes each image reproducible on its own.
            latents (`torch.Tensor` of shape `(batch_size, channels, height, width)`, *optional*): the initial noise,
                standard normal, instead of a draw from `generator`; as in Diffusers' pipelines it is multiplied by
                `scheduler.init_noise_sigma` to give x_T (σ_max for VE, 1 for VP). `generator` still drives the
                sampler's own noise.
            class_labels (`int`, `list[int]` or `torch.Tensor` of shape `(batch_size,)`, *optional*): requested
                classes (one for all images, or one per image), for guidance and/or a class-conditional unet.
            guidance_scale (`float`, defaults to 0.0): w ≥ 0, the weight of ∇ₓ log q_φ(y | x_t, t).
            output_type (`str`, defaults to `"pil"`): `"pil"` (list of `PIL.Image`), `"np"` (array of shape
                `(batch, height, width, channels)`) or `"pt"` (tensor of shape `(batch, channels, height, width)`),
                values in [0, 1]; or `"latent"`: the final samples themselves, in the unet's space, unclamped.
            return_dict (`bool`, defaults to `True`): return an `ImagePipelineOutput` rather than a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called
                after every scheduler step as `callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`,
                `callback_kwargs` holding the tensors named in `callback_on_step_end_tensor_inputs`; it returns a dict
                whose `"latents"` or `"sample"` (the same tensor), if replaced, replaces the current sample. It may
                change `pipe._guidance_scale` for the steps after it, as in Diffusers' pipelines.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): among `"latents"` and `"sample"` (the
                current sample; `["sample"]` by default) and `"pred_original_sample"`.
            timesteps (`list[float]`, *optional*), sigmas (`list[float]`, *optional*): a custom grid of time points
                instead of `num_inference_steps`, as model timesteps or as noise levels σ_t/α_t, for schedulers whose
                `set_timesteps` takes them (as Diffusers' `retrieve_timesteps` passes them).

        Returns:
            [`~pipelines.ImagePipelineOutput`] with `images`, or the tuple `(images,)`.
        """
        tensor_inputs = self._check_call_arguments(batch_size, output_type, generator, callback_on_step_end,
                                                   callback_on_step_end_tensor_inputs)
        device = self._execution_device
        labels = self._prepare_class_labels(class_labels, guidance_scale, batch_size, device)
        sample = self._initial_noise(batch_size, generator, device, latents)
        self._set_timesteps(num_inference_steps, device, timesteps, sigmas)
        classifier = None if self.classifier is None else as_guidance_classifier(self.classifier)
        self._guidance_scale = guidance_scale

        def model_output_fn(model_input, timestep, alpha, sigma):
            scale = self._current_guidance_scale(classifier, labels)
            return self._model_output(model_input, timestep, alpha, sigma, labels, scale, classifier)

        sample = self._sampling_loop(sample, model_output_fn, generator, callback_on_step_end, tensor_inputs)
        image = self._to_images(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def _set_timesteps(self, num_inference_steps: int, device, timesteps=None, sigmas=None) -> None:
        """`scheduler.set_timesteps` with `num_inference_steps`, or with the custom `timesteps` or `sigmas` where
        given (they take its place, as in Diffusers' `retrieve_timesteps`); a scheduler that takes no custom grid
        raises a `ValueError` naming the argument."""
        if timesteps is None and sigmas is None:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            return
        accepted = inspect.signature(self.scheduler.set_timesteps).parameters
        for name, value in (("timesteps", timesteps), ("sigmas", sigmas)):
            if value is not None and name not in accepted:
                raise ValueError(
                    f"`{name}` needs a scheduler that takes a custom grid; {type(self.scheduler).__name__} sets its "
                    "own from `num_inference_steps`."
                )
        self.scheduler.set_timesteps(device=device, timesteps=timesteps, sigmas=sigmas)

    def _check_call_arguments(
        self, batch_size: int, output_type: str, generator, callback_on_step_end, tensor_inputs: list[str] | None
    ) -> list[str]:
        """Validate the arguments every sampling call shares; return the callback's tensor names."""
        check_positive_int("batch_size", batch_size)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        check_generator(generator, batch_size)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = tensor_inputs or ["sample"]
        for name in tensor_inputs:
            check_choice("callback_on_step_end_tensor_inputs", name, tuple(self._callback_tensor_inputs))
        return tensor_inputs

    def _sampling_loop(
        self,
        sample: torch.Tensor,
        model_output_fn: Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor],
        generator,
        callback_on_step_end,
        tensor_inputs: list[str],
        after_step: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Diffusers' loop over `scheduler.timesteps` from the scheduler's `begin_index`: one
        `model_output_fn(model_input, timestep, α, σ)` per entry (α, σ of the entry's grid point), one `step`, then
        `after_step(sample, entry)` where given (the sample then stands at `grid.next_*[entry]`) and the callback."""
        scheduler = self.scheduler
        self._num_timesteps = len(scheduler.timesteps) - scheduler.begin_index
        for step_index, timestep in enumerate(self.progress_bar(scheduler.timesteps[scheduler.begin_index:])):
            model_input = scheduler.scale_model_input(sample, timestep)
            grid, entry = scheduler.grid, scheduler.step_index
            model_output = model_output_fn(model_input, timestep, float(grid.alphas[entry]), float(grid.sigmas[entry]))
            step = scheduler.step(model_output, timestep, sample, generator=generator)
            sample = step.prev_sample
            if after_step is not None:
                sample = after_step(sample, entry)
            if callback_on_step_end is not None:
                tensors = {"latents": sample, "sample": sample, "pred_original_sample": step.pred_original_sample}
                callback_kwargs = {name: tensors[name] for name in tensor_inputs}
                callback_outputs = callback_on_step_end(self, step_index, timestep, callback_kwargs)
                replacements = [callback_outputs.get(name) for name in ("latents", "sample")]
                replacements = [tensor for tensor in replacements if tensor is not None and tensor is not sample]
                if len(replacements) == 2 and replacements[0] is not replacements[1]:
                    raise ValueError(
                        "`callback_on_step_end` returned different tensors as `latents` and `sample`, which name the "
                        "same sample; return one of them."
                    )
                if replacements:
                    sample = replacements[0]
        return sample

    def _sample_size(self) -> tuple[int, int]:
        """(height, width) of the unet's samples."""
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def _sample_dtype(self) -> torch.dtype:
        return next(self.unet.parameters(), torch.empty(0)).dtype

    def _standard_normal(self, batch_size: int, generator, device: torch.device) -> torch.Tensor:
        """Standard normal noise of the unet's sample shape and dtype (one draw per generator of a list)."""
        shape = (batch_size, self.unet.config.in_channels, *self._sample_size())
        return randn_tensor(shape, generator=generator, device=device, dtype=self._sample_dtype())

    def _initial_noise(
        self, batch_size: int, generator, device: torch.device, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_T: standard normal noise of the unet's sample shape (`latents` where given, else drawn from `generator`)
        times `init_noise_sigma`, in the unet's dtype on `device`, as Diffusers' `prepare_latents` makes it."""
        if latents is None:
            return self._standard_normal(batch_size, generator, device) * self.scheduler.init_noise_sigma
        shape = (batch_size, self.unet.config.in_channels, *self._sample_size())
        if not torch.is_tensor(latents) or tuple(latents.shape) != shape:
            got = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise ValueError(
                f"`latents` must be a tensor of shape {shape} (batch_size, the unet's channels, height, width); got "
                f"{got}."
            )
        if not latents.is_floating_point() or not bool(torch.isfinite(latents).all()):
            raise ValueError("`latents` must be a floating-point tensor of finite values (standard normal noise).")
        return latents.to(device=device, dtype=self._sample_dtype()) * self.scheduler.init_noise_sigma

    @property
    def guidance_scale(self) -> float:
        """The classifier-guidance weight of the current (or last) run; a step-end callback may change
        `_guidance_scale`."""
        return getattr(self, "_guidance_scale", 0.0)

    @property
    def num_timesteps(self) -> int:
        """Entries of `scheduler.timesteps` the current (or last) run steps through."""
        return getattr(self, "_num_timesteps", 0)

    def _current_guidance_scale(self, classifier, labels: torch.Tensor | None) -> float:
        """`_guidance_scale` as a step-end callback may have changed it, validated as at the call."""
        scale = self._guidance_scale
        check_number("guidance_scale", scale, 0, math.inf, high_open=True)
        if scale > 0 and (classifier is None or labels is None):
            raise ValueError(
                f"`guidance_scale` became {scale} during the run, but the run has no classifier and class labels to "
                "guide with; pass `classifier` and `class_labels` to the call."
            )
        return scale

    def _to_images(self, sample: torch.Tensor, output_type: str):
        """Samples in [−1, 1] as `output_type` images in [0, 1] (`"latent"`: the samples as they are)."""
        if output_type == "latent":
            return sample
        image = (sample / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return image

    @torch.no_grad()
    def sample_adaptive(
        self,
        batch_size: int = 1,
        rtol: float = DEFAULT_RTOL,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 0.0,
        output_type: OutputType = "pil",
    ) -> AdaptiveImagePipelineOutput:
        r"""Generate images with the adaptive-step reverse-SDE solver (`score_diffusers.sampling.adaptive_reverse_sde`)
        on this pipeline's model and its scheduler's convention, guidance included. The solver picks each image's
        steps, so there is no `num_inference_steps`; `rtol` sets the local error allowed, as a fraction of σ_t.

        Args:
            batch_size, generator, class_labels, guidance_scale, output_type: as for `__call__`.
            rtol (`float`, defaults to 0.2): the solver's tolerance.

        Returns:
            `AdaptiveImagePipelineOutput` with `images` and `nfe`, the model evaluations of each image.
        """
        check_positive_int("batch_size", batch_size)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        device = self._execution_device
        labels = self._prepare_class_labels(class_labels, guidance_scale, batch_size, device)
        classifier = None if self.classifier is None else as_guidance_classifier(self.classifier)
        convention = self.scheduler.convention
        # The number of evaluations is not known in advance: the bar counts them.
        progress = tqdm(unit=" evaluations", **getattr(self, "_progress_bar_config", {}))

        def score_fn(x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            alpha, sigma = convention.coefficients(t)
            timestep = convention.timestep(t).to(device=x.device, dtype=torch.float32)
            row_labels = None if labels is None else labels[rows.to(labels.device)]
            output = self._model_output(x, timestep, alpha, sigma, row_labels, guidance_scale, classifier)
            progress.update(1)
            return convention.score_from_output(output, sigma)

        x_T = self._initial_noise(batch_size, generator, device)
        result = adaptive_reverse_sde(score_fn, x_T, convention.sde, convention.sampling_eps, rtol=rtol,
                                      generator=generator)
        progress.close()
        self.maybe_free_model_hooks()
        return AdaptiveImagePipelineOutput(images=self._to_images(result.sample, output_type), nfe=result.nfe)

    # ---- likelihood ----------------------------------------------------------------------------------------------

    def _images_to_samples(self, images: ImageInput, argument: str = "images") -> torch.Tensor:
        """Images in [0, 1] (see `images_to_tensor`) → float32 samples in the unet's [−1, 1] space, shape
        `(batch, channels, height, width)`, on the execution device; the channels and size must be the unet's."""
        images = images_to_tensor(images, argument)
        if images.shape[1] != self.unet.config.in_channels:
            raise ValueError(
                f"`{argument}` must have {self.unet.config.in_channels} channels like the unet; got {images.shape[1]}."
            )
        expected = self._sample_size()
        if tuple(images.shape[2:]) != expected:
            raise ValueError(
                f"`{argument}` must be {expected[0]} × {expected[1]} (height × width) like the unet's `sample_size`; "
                f"got {images.shape[2]} × {images.shape[3]}."
            )
        return (images * 2 - 1).to(self._execution_device)

    def log_likelihood(self, images: ImageInput, **kwargs):
        """Exact log-likelihood of images under the probability-flow ODE of this pipeline's model and scheduler.

        Args:
            images (`PIL.Image.Image`, list of them, `np.ndarray` of shape `(batch, height, width, channels)` or
                `torch.Tensor` of shape `(batch, channels, height, width)`): images with values in [0, 1] (as this
                pipeline returns them); they are mapped to the unet's [−1, 1] space.
            **kwargs: passed to `score_diffusers.likelihood.log_likelihood` (probes, solver tolerances, ...).

        Returns:
            The result of `score_diffusers.likelihood.log_likelihood`, with `bits_per_dim` per image.
        """
        from ..likelihood import log_likelihood

        samples = self._images_to_samples(images)
        return log_likelihood(self.unet, self.scheduler, samples, data_range=(-1.0, 1.0), **kwargs)
