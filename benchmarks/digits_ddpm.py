"""Train, or load from its cache folder, a small DDPM on scikit-learn's digits with Diffusers' own code only.

The model is a Diffusers `UNet2DModel` trained as an ε-predictor with `DDPMScheduler.add_noise` and a plain loop
(EMA weights with warm-up), saved with Diffusers' own `DDPMPipeline.save_pretrained`. Other benchmarks reuse it:

    from benchmarks.digits_ddpm import get_digits_ddpm
    pipeline = get_digits_ddpm()          # trains once (about 5–8 minutes on 2 CPU cores), then loads

Run as a script to (re)train: `python benchmarks/digits_ddpm.py [--output-dir DIR] [--retrain]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from score_diffusers.datasets import load_digits_images

DEFAULT_OUTPUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "digits_ddpm")
# The DDPM of the train split only (`load_digits_images(split="train")`), for benchmarks that evaluate on the test split.
TRAIN_SPLIT_OUTPUT_DIR = DEFAULT_OUTPUT_DIR + "_train"
# EMA decay after warm-up; during warm-up the decay is min(DECAY, (1 + step)/(10 + step)).
EMA_DECAY = 0.999


def digits_unet(resolution: int = 16) -> UNet2DModel:
    """The benchmark's ε-network: three resolution levels, convolution only (about 0.27 M parameters)."""
    return UNet2DModel(
        sample_size=resolution,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int) -> None:
    decay = min(EMA_DECAY, (1 + step) / (10 + step))
    for ema_parameter, parameter in zip(ema.parameters(), model.parameters()):
        ema_parameter.lerp_(parameter, 1 - decay)


def train_digits_ddpm(
    output_dir: str = DEFAULT_OUTPUT_DIR,
    resolution: int = 16,
    num_train_timesteps: int = 1000,
    train_steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    seed: int = 0,
    split: str = "all",
) -> DDPMPipeline:
    """Train the DDPM on the digits of `split` (all 1,797 by default; `"train"`: the train split of
    `load_digits_images`), in [−1, 1], and save it with `DDPMPipeline.save_pretrained`.

    Loss ‖ε_θ(√ᾱ_t·x₀ + √(1 − ᾱ_t)·ε, t) − ε‖², t uniform on 0 … N − 1 (Ho et al., 2020); Adam with a cosine learning
    rate decay; the saved unet holds the EMA weights.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, _ = load_digits_images(resolution=resolution, split=split)
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    unet = digits_unet(resolution)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.Adam(unet.parameters(), lr=learning_rate)
    learning_rates = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train_steps, eta_min=learning_rate / 20)
    start = time.perf_counter()
    for step in range(train_steps):
        x0 = images[torch.randint(len(images), (batch_size,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(num_train_timesteps, (batch_size,), generator=generator)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, timesteps), timesteps).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learning_rates.step()
        _ema_update(ema, unet, step)
        if step % 500 == 0 or step == train_steps - 1:
            print(f"  ddpm step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.0f}s", flush=True)
    pipeline = DDPMPipeline(unet=ema.eval(), scheduler=scheduler)
    pipeline.save_pretrained(output_dir)
    return pipeline


def get_digits_ddpm(output_dir: str = DEFAULT_OUTPUT_DIR, retrain: bool = False, **train_kwargs) -> DDPMPipeline:
    """The digits DDPM saved in `output_dir`, trained there first if the folder holds none (or `retrain`).

    Args:
        output_dir (`str`): cache folder of the `DDPMPipeline` save.
        retrain (`bool`, defaults to `False`): train even if a save exists.
        **train_kwargs: passed to `train_digits_ddpm` (resolution, steps, ...); they only matter when training.
    """
    if retrain or not os.path.isfile(os.path.join(output_dir, "model_index.json")):
        print(f"Training the digits DDPM into {output_dir} ...", flush=True)
        return train_digits_ddpm(output_dir, **train_kwargs)
    return DDPMPipeline.from_pretrained(output_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--split", choices=("all", "train"), default="all",
                        help="digits to train on; 'train' saves to the _train cache folder by default")
    arguments = parser.parse_args()
    output_dir = arguments.output_dir
    if arguments.split == "train" and output_dir == DEFAULT_OUTPUT_DIR:
        output_dir = TRAIN_SPLIT_OUTPUT_DIR
    get_digits_ddpm(output_dir, retrain=arguments.retrain, train_steps=arguments.train_steps, split=arguments.split)
