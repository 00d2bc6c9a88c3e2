"""Sample grids of the model being trained: written as PNG files and logged to TensorBoard."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from PIL import Image

from score_diffusers.files import written_atomically
from score_diffusers.image_grid import image_grid

logger = get_logger(__name__, log_level="INFO")

# The final grid, beside the saved model; the model card shows it.
SAMPLE_GRID_NAME = "samples.png"

# `grid_fn(model, num_images) -> images`: samples of the model being trained.
GridFunction = Callable[[torch.nn.Module, int], list[Image.Image]]


def save_sample_grid(
    accelerator: Accelerator, grid_fn: GridFunction, model: torch.nn.Module, args: argparse.Namespace, path: Path
) -> Image.Image | None:
    """Sample `--num_grid_images` images on the main process, write them as one PNG grid, log it to TensorBoard."""
    grid = None
    if accelerator.is_main_process:
        model.eval()
        with torch.no_grad():
            images = grid_fn(model, args.num_grid_images)
        grid = image_grid(images)
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(path) as partial:
            grid.save(partial, format="PNG")
        logger.info(f"Saved sample grid {path}")
        tracker = _tensorboard_writer(accelerator)
        if tracker is not None:
            step = int(path.stem.split("_")[-1]) if path.stem.startswith("step_") else 0
            tracker.add_image("samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
    accelerator.wait_for_everyone()
    return grid


def _tensorboard_writer(accelerator: Accelerator):
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            return tracker.writer
    return None


def pipeline_grid_fn(scheduler, num_inference_steps: int, seed: int, **call_kwargs: Any) -> GridFunction:
    """A `GridFunction` sampling a `ScoreGuidedPipeline` made of the model being trained and `scheduler`."""
    from score_diffusers import ScoreGuidedPipeline

    def sample(unet: torch.nn.Module, num_images: int) -> list[Image.Image]:
        pipeline = ScoreGuidedPipeline(unet=unet, scheduler=scheduler)
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator(device=unet.device).manual_seed(seed)
        return pipeline(
            batch_size=num_images,
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type="pil",
            **call_kwargs,
        ).images

    return sample
