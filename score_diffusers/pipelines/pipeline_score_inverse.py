"""Linear inverse problems y = A x + σ_y·z with a score model of p(x): replacement, measurement guidance and twisted
sequential Monte Carlo (the math in `score_diffusers.sampling.inverse`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..checks import check_choice, check_int, check_number
from ..models.denoised_input import as_guidance_classifier
from ..operators import LinearOperator
from ..sampling import inverse
from .pipeline_score_guided import OutputType, ScoreGuidedPipeline

InverseMethod = Literal["smc", "replacement", "guidance"]
INVERSE_METHODS: tuple[str, ...] = ("smc", "replacement", "guidance")
DEFAULT_NUM_PARTICLES = 16
# Particles per unet call in "smc": bounds the activation memory whatever `num_particles` × batch is.
DEFAULT_PARTICLE_BATCH_SIZE = 64


@dataclass
class InverseProblemPipelineOutput(BaseOutput):
    """Output of the inverse-problem and inpainting pipelines.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): as `ImagePipelineOutput.images`.
        nfe (`int`): model evaluations spent on each image.
        effective_sample_size (`torch.Tensor` of shape `(steps, batch)`, *optional*): `"smc"` only: the effective
            sample size of each image's particles after every step (before resampling), between 1 and
            `num_particles`.
    """

    images: Any
    nfe: int
    effective_sample_size: torch.Tensor | None = None


class ScoreInverseProblemPipeline(ScoreGuidedPipeline):
    r"""Sample p(x | y) for a linear measurement y = A x + σ_y·z of an image x, with a score model of p(x).

    Loads what [`ScoreGuidedPipeline`] loads (its saves, stock `DDPMPipeline` folders) and builds from its
    components: `ScoreInverseProblemPipeline(**pipe.components)`. The measurement `y` lives in the unet's data space
    (images mapped to [−1, 1]); `A` is an operator of `score_diffusers.operators` (`MaskOperator`,
    `grayscale_operator()` for colorization, `AveragePoolOperator`, `MatrixOperator`, or your own `forward` /
    `transpose`). Three methods (`method=`):

    - `"smc"` (the default): twisted sequential Monte Carlo with `num_particles` particles per image, the only one
      whose samples converge to p(x | y) as particles grow. It runs its own kernel (the ancestral step, on
      `num_inference_steps` noise levels uniform in log σ̄), since its weights need each step's Gaussian transition
      in closed form; the pipeline's scheduler supplies the model convention. Costs `num_inference_steps` ×
      `num_particles` evaluations per image, run `particle_batch_size` at a time.
    - `"replacement"`: score_sde's projection onto the noised measurement after every step of the pipeline's
      scheduler (any of them); treats y as noiseless; biased.
    - `"guidance"`: ΠGDM's measurement guidance α_t·∇ₓ log N(y; A x̂₀(x_t), σ_y²I + r_t²AAᵀ) through the unet's
      x̂₀, with the pipeline's scheduler; one unet backward per evaluation; biased.

    With σ_y = 0, `"smc"` and `"replacement"` return images whose measurement is y (for a mask: the kept pixels).
    Classifier guidance (`class_labels`, `guidance_scale`) combines with `"replacement"` and `"guidance"`.
    """

    # ---- input checks --------------------------------------------------------------------------------------------

    def _prepare_measurement(self, measurement: torch.Tensor, operator: LinearOperator, noise_std: float
                             ) -> torch.Tensor:
        if not isinstance(operator, LinearOperator):
            raise ValueError(
                "`operator` must be a `score_diffusers.operators.LinearOperator` (MaskOperator, ChannelMixOperator, "
                f"AveragePoolOperator, MatrixOperator or a subclass with `forward`/`transpose`); got "
                f"{type(operator).__name__}."
            )
        check_number("noise_std", noise_std, 0.0, float("inf"), high_open=True)
        if not isinstance(measurement, torch.Tensor) or measurement.ndim < 2 or measurement.shape[0] == 0:
            raise ValueError("`measurement` must be a tensor of shape (batch, *measurement_dims).")
        if not bool(torch.isfinite(measurement).all()):
            raise ValueError("`measurement` holds NaN or infinite values.")
        shape = (measurement.shape[0], self.unet.config.in_channels, *self._sample_size())
        operator.check_sample(shape, "the unet's samples")
        expected = tuple(operator.forward(torch.zeros(shape)).shape)
        if tuple(measurement.shape) != expected:
            raise ValueError(
                f"`measurement` must have the shape {expected} that `operator` gives for this batch; got "
                f"{tuple(measurement.shape)}."
            )
        measurement = measurement.to(device=self._execution_device, dtype=self._sample_dtype())
        return operator.range_projection(measurement)

    # ---- the three methods ---------------------------------------------------------------------------------------

    def _measurement_guided_output(
        self, model_input: torch.Tensor, timestep: torch.Tensor, alpha: float, sigma: float, labels, guidance_scale,
        classifier, measurement: torch.Tensor, operator: LinearOperator, noise_variance: float,
        prior_variance: torch.Tensor,
    ) -> torch.Tensor:
        """The unet's output with α_t·∇ₓ log N(y; A x̂₀(x), σ_y²I + r²AAᵀ) added to its score (through the unet),
        and the classifier term where asked."""
        convention = self.scheduler.convention
        model_timestep = timestep.expand(model_input.shape[0]) if timestep.ndim == 0 else timestep
        unet_kwargs = {"class_labels": labels} if self.unet.config.get("num_class_embeds") is not None else {}
        with torch.enable_grad():
            x = model_input.detach().requires_grad_(True)
            output = self.unet(x, model_timestep, **unet_kwargs)
            output = output.sample if hasattr(output, "sample") else output
            estimate = convention.denoised(x, convention.score_from_output(output, sigma), alpha, sigma)
            variance = inverse.denoised_error_variance(sigma / alpha, prior_variance).to(x.device, x.dtype)
            log_likelihood = inverse.measurement_log_likelihood(estimate, measurement, operator, noise_variance,
                                                                variance)
            (gradient,) = torch.autograd.grad(log_likelihood.sum(), x)
        output = output.detach()
        # ΠGDM's weight α_t (√ᾱ_t for VP, 1 for VE): through x̂₀ = (x + σ²s)/α the model's Jacobian enters divided by
        # α_t, and near T its errors, not p(y | x_t), would set the term (a DDPM at 800 steps turned NaN).
        score_term = alpha * gradient
        if guidance_scale > 0:
            score_term = score_term + guidance_scale * self._classifier_log_prob_grad(
                classifier, model_input, model_timestep, labels, output, alpha, sigma)
        return output + convention.output_from_score(score_term.to(output.dtype), sigma)

    def _smc(self, measurement, operator, noise_std, labels, num_steps, num_particles, particle_batch_size,
             generator) -> inverse.SMCOutput:
        convention = self.scheduler.convention
        class_conditional = self.unet.config.get("num_class_embeds") is not None
        particle_labels = None if labels is None else labels.repeat_interleave(num_particles)
        progress = self.progress_bar(total=num_steps)

        @torch.no_grad()
        def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            _, sigma = convention.coefficients(t)
            timestep = convention.timestep(t).to(device=x.device, dtype=torch.float32)
            scores = []
            for start in range(0, x.shape[0], particle_batch_size):
                chunk = x[start:start + particle_batch_size]
                kwargs = {"class_labels": particle_labels[start:start + len(chunk)]} if class_conditional else {}
                output = self.unet(chunk, timestep.expand(len(chunk)), **kwargs)
                output = output.sample if hasattr(output, "sample") else output
                scores.append(convention.score_from_output(output, float(sigma)))
            progress.update(1)
            return torch.cat(scores)

        sample_shape = (self.unet.config.in_channels, *self._sample_size())
        result = inverse.twisted_smc(score_fn, convention, measurement, operator, sample_shape, noise_std,
                                     num_particles, num_steps, generator)
        progress.close()
        return result

    # ---- sampling ------------------------------------------------------------------------------------------------

    def _solve(
        self,
        measurement: torch.Tensor,
        operator: LinearOperator,
        noise_std: float,
        method: str,
        num_inference_steps: int,
        num_particles: int,
        particle_batch_size: int,
        generator,
        class_labels,
        guidance_scale: float,
        output_type: str,
        return_dict: bool,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs,
    ) -> InverseProblemPipelineOutput | tuple:
        check_choice("method", method, INVERSE_METHODS)
        check_int("num_inference_steps", num_inference_steps, 1)
        check_int("num_particles", num_particles, 1)
        check_int("particle_batch_size", particle_batch_size, 1)
        measurement = self._prepare_measurement(measurement, operator, noise_std)
        batch_size = measurement.shape[0]
        tensor_inputs = self._check_call_arguments(batch_size, output_type, generator, callback_on_step_end,
                                                   callback_on_step_end_tensor_inputs)
        device = self._execution_device
        labels = self._prepare_class_labels(class_labels, guidance_scale, batch_size, device)
        ess = None
        if method == "smc":
            if guidance_scale > 0:
                raise ValueError(
                    "`method='smc'` samples p(x | y) exactly and takes no classifier guidance (`guidance_scale` must "
                    "be 0); use `method='replacement'` or `'guidance'` to combine both."
                )
            if callback_on_step_end is not None:
                raise ValueError("`method='smc'` runs its own particle loop and takes no `callback_on_step_end`.")
            result = self._smc(measurement, operator, noise_std, labels, num_inference_steps, num_particles,
                               particle_batch_size, generator)
            sample, nfe, ess = result.sample, result.nfe, result.effective_sample_size
        else:
            sample, nfe = self._scheduler_method(measurement, operator, noise_std, method, num_inference_steps,
                                                 generator, labels, guidance_scale, callback_on_step_end,
                                                 tensor_inputs)
        image = self._to_images(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image, nfe, ess)
        return InverseProblemPipelineOutput(images=image, nfe=nfe, effective_sample_size=ess)

    def _scheduler_method(self, measurement, operator, noise_std, method, num_inference_steps, generator, labels,
                          guidance_scale, callback_on_step_end, tensor_inputs) -> tuple[torch.Tensor, int]:
        """Replacement or guidance on the pipeline's scheduler; returns the sample and its evaluations per image."""
        device = self._execution_device
        batch_size = measurement.shape[0]
        classifier = None if self.classifier is None else as_guidance_classifier(self.classifier)
        sample = self._initial_noise(batch_size, generator, device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        after_step = None
        if method == "replacement":
            grid = self.scheduler.grid

            def after_step(sample: torch.Tensor, entry: int) -> torch.Tensor:
                noise = self._standard_normal(batch_size, generator, device)
                target = inverse.noised_measurement(measurement, operator, float(grid.next_alphas[entry]),
                                                    float(grid.next_sigmas[entry]), noise)
                return inverse.project_onto_measurement(sample, target, operator)

            def model_output_fn(model_input, timestep, alpha, sigma):
                return self._model_output(model_input, timestep, alpha, sigma, labels, guidance_scale, classifier)
        else:
            prior_variance = inverse.prior_variance(measurement, operator)

            def model_output_fn(model_input, timestep, alpha, sigma):
                return self._measurement_guided_output(model_input, timestep, alpha, sigma, labels, guidance_scale,
                                                       classifier, measurement, operator, noise_std**2,
                                                       prior_variance)

        sample = self._sampling_loop(sample, model_output_fn, generator, callback_on_step_end, tensor_inputs,
                                     after_step)
        return sample, len(self.scheduler.timesteps)

    def __call__(
        self,
        measurement: torch.Tensor,
        operator: LinearOperator,
        noise_std: float = 0.0,
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
        r"""Sample images x given measurements y = A x + σ_y·z.

        Args:
            measurement (`torch.Tensor` of shape `(batch, *measurement_dims)`): y, one per image, in the unet's data
                space ([−1, 1] images), of the shape `operator` gives.
            operator (`LinearOperator`): A.
            noise_std (`float`, defaults to 0): σ_y ≥ 0, in the same units as y.
            method (`str`, defaults to `"smc"`): `"smc"`, `"replacement"` or `"guidance"` (see the class docstring).
            num_inference_steps (`int`, defaults to 50): `"smc"`: steps of the particle chain; otherwise the
                scheduler's `num_inference_steps`.
            num_particles (`int`, defaults to 16): `"smc"` only: particles per image.
            particle_batch_size (`int`, defaults to 64): `"smc"` only: most particles per unet call.
            generator (`torch.Generator` or a list of `batch` of them, *optional*): all randomness; a list makes
                each image reproducible on its own.
            class_labels, guidance_scale: as for [`ScoreGuidedPipeline`] (not with `"smc"`).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`, values in [0, 1].
            return_dict (`bool`, defaults to `True`): return an `InverseProblemPipelineOutput` rather than the tuple
                `(images, nfe, effective_sample_size)`.
            callback_on_step_end, callback_on_step_end_tensor_inputs: as for [`ScoreGuidedPipeline`] (not with
                `"smc"`).

        Returns:
            [`InverseProblemPipelineOutput`] with `images`, `nfe` and, for `"smc"`, `effective_sample_size`.
        """
        return self._solve(measurement, operator, noise_std, method, num_inference_steps, num_particles,
                           particle_batch_size, generator, class_labels, guidance_scale, output_type, return_dict,
                           callback_on_step_end, callback_on_step_end_tensor_inputs)
