"""The one reference loop: Diffusers' plain sampling loop (one model evaluation per entry of `timesteps`), with any
callable model."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def noise(
    shape: Sequence[int],
    generator: torch.Generator | list[torch.Generator] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of `shape` on the CPU, drawn as Diffusers' `randn_tensor` draws it: from one generator,
    or one sample per generator of a list."""
    if isinstance(generator, list):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in generator])
    return torch.randn(tuple(shape), generator=generator, dtype=dtype)


def prior_sample(
    scheduler,
    shape: Sequence[int],
    generator: torch.Generator | list[torch.Generator] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x_T as the plain Diffusers loop draws it: standard normal noise times `init_noise_sigma`."""
    return noise(shape, generator, dtype) * scheduler.init_noise_sigma


def run_loop(
    scheduler,
    model,
    sample: torch.Tensor,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """The plain Diffusers sampling loop from a given x_T `sample`, with a callable
    `model(x, timestep) -> tensor`; returns the final sample."""
    scheduler.set_timesteps(num_inference_steps)
    for timestep in scheduler.timesteps:
        model_output = model(scheduler.scale_model_input(sample, timestep), timestep)
        sample = scheduler.step(model_output, timestep, sample, generator=generator).prev_sample
    return sample


def run_sampler(
    scheduler,
    model,
    shape: Sequence[int],
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`run_loop` from the prior, x_T = standard normal noise × `scheduler.init_noise_sigma`."""
    return run_loop(scheduler, model, prior_sample(scheduler, shape, generator, dtype), num_inference_steps, generator)
