#!/usr/bin/env python
"""Train a noise-conditional score network (NCSN / NCSNv2) by denoising score matching over geometric noise levels.

Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution" (2019),
https://arxiv.org/abs/1907.05600, and "Improved Techniques for Training Score-Based Generative Models" (2020),
https://arxiv.org/abs/2006.09011.

The network is Diffusers' `UNet2DModel` with `time_embedding_type="fourier"`: it embeds log σ and divides its output
by σ, so it returns the score s_θ(x, σ) itself and stock `UNet2DModel.from_pretrained` loads it. The loss is
λ(σ)·‖s_θ(x̃, σ) + z/σ‖² with λ(σ) = σ², i.e. ‖σ·s_θ + z‖², with σ drawn uniformly from the levels. The output
folder is a `ScoreGuidedPipeline` with an `AnnealedLangevinScheduler` on the same levels, at the scheduler's defaults:
consistent annealed sampling, one step per level, the step size derived from the levels it samples.

    accelerate launch training/train_ncsn.py --output_dir ncsn-digits
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate.logging import get_logger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from score_diffusers import AnnealedLangevinScheduler, ModelConvention, ScoreGuidedPipeline
from score_diffusers.checks import check_number
from training import arguments
from training.checkpoints import save_outputs
from training.data import ImageBatchDataset, max_pairwise_distance, prepare_training_data
from training.hub import finish, write_pipeline_card
from training.loop import LossFunction, TrainingResult, make_accelerator, train
from training.samples import SAMPLE_GRID_NAME, pipeline_grid_fn, save_sample_grid
from training.unet import add_unet_arguments, build_unet

logger = get_logger(__name__, log_level="INFO")
# NCSNv2 technique 2: neighbouring levels overlap so that this much mass of N(0, σ_{i−1}²I) lies within ±3 std of
# the shell of N(0, σ_i²I).
_LEVEL_OVERLAP = 0.5
# Relative step ratio γ is searched in (1, _MAX_GAMMA].
_MAX_GAMMA = 10.0
_BISECTION_ITERATIONS = 100


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.build_parser(__doc__.split("\n\n")[0])
    add_unet_arguments(parser)
    ncsn = parser.add_argument_group("noise levels and annealed Langevin sampling")
    ncsn.add_argument("--sigma_min", type=float, default=0.01, help="Smallest noise level σ_L.")
    ncsn.add_argument(
        "--sigma_max",
        type=float,
        default=None,
        help="Largest noise level σ_1 (default: the largest pairwise distance between training images, NCSNv2 §3.1).",
    )
    ncsn.add_argument(
        "--num_noise_levels",
        type=int,
        default=None,
        help="Number L of geometric levels (default: NCSNv2 technique 2 for the data's dimension).",
    )
    ncsn.add_argument("--steps_per_level", type=int, default=1, help="Langevin steps T per level when sampling.")
    ncsn.add_argument(
        "--step_size",
        type=float,
        default=None,
        help="Step size ε of the saved AnnealedLangevinScheduler (drift ε σ_i²/(2σ_L²) times the score). Default: "
        "unset, so the scheduler derives it from the levels it samples (consistent: the ancestral step; "
        "--no-consistent: NCSNv2 technique 4 for T and the level ratio).",
    )
    ncsn.add_argument(
        "--consistent",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Sample with consistent annealed sampling (Jolicoeur-Martineau et al., 2021); --no-consistent for "
        "NCSN's annealed Langevin dynamics.",
    )
    ncsn.add_argument(
        "--final_denoising",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="End sampling with the Tweedie denoising step (NCSNv2).",
    )
    parser.set_defaults(**arguments.SCORE_MODEL_DEFAULTS)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; a bad value raises `ValueError`."""
    args = arguments.parse_args(parser, argv)
    check_number("--sigma_min", args.sigma_min, 0.0, math.inf, low_open=True, high_open=True)
    check_number("--sigma_max", args.sigma_max, 0.0, math.inf, low_open=True, high_open=True, allow_none=True,
                 none_means="for the data's largest pairwise distance")
    sigma_max = math.inf if args.sigma_max is None else args.sigma_max
    if not 0 < args.sigma_min < sigma_max:
        raise ValueError(f"need 0 < --sigma_min < --sigma_max; got {args.sigma_min} and {args.sigma_max}.")
    if args.num_noise_levels is not None and args.num_noise_levels < 2:
        raise ValueError(f"--num_noise_levels must be >= 2; got {args.num_noise_levels}.")
    if args.steps_per_level < 1 or (args.step_size is not None and args.step_size <= 0):
        raise ValueError("--steps_per_level must be >= 1 and --step_size > 0.")
    return args


# ---- NCSNv2's choice of the noise levels (its technique 4, the step size, is the scheduler's) ---------------------


def _standard_normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def level_ratio_for_dimension(dimension: int) -> float:
    """γ = σ_{i−1}/σ_i with Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = 0.5 (NCSNv2 technique 2), by bisection."""
    low, high = 1.0, _MAX_GAMMA
    root = math.sqrt(2 * dimension)
    for _ in range(_BISECTION_ITERATIONS):
        gamma = 0.5 * (low + high)
        overlap = _standard_normal_cdf(root * (gamma - 1) + 3 * gamma) - _standard_normal_cdf(
            root * (gamma - 1) - 3 * gamma
        )
        low, high = (gamma, high) if overlap > _LEVEL_OVERLAP else (low, gamma)
    return 0.5 * (low + high)


def num_levels_for(sigma_max: float, sigma_min: float, dimension: int) -> int:
    """L such that geometric levels from σ_max to σ_min have NCSNv2's ratio γ for this dimension."""
    return max(2, math.ceil(math.log(sigma_max / sigma_min) / math.log(level_ratio_for_dimension(dimension))) + 1)


def build_scheduler(args: argparse.Namespace, data: ImageBatchDataset) -> AnnealedLangevinScheduler:
    """An `AnnealedLangevinScheduler` on the training levels, with NCSNv2's levels and the scheduler's sampler
    defaults where arguments are unset."""
    dimension = data.num_channels * data.resolution**2
    sigma_max = args.sigma_max or max_pairwise_distance(data)
    num_levels = args.num_noise_levels or num_levels_for(sigma_max, args.sigma_min, dimension)
    scheduler = AnnealedLangevinScheduler(
        num_train_timesteps=num_levels,
        sigma_min=args.sigma_min,
        sigma_max=sigma_max,
        steps_per_level=args.steps_per_level,
        step_size=args.step_size,
        consistent=args.consistent,
        final_denoising=args.final_denoising,
        prediction_type="score",
        timestep_type="sigma",
    )
    # The sample grids run on the training levels: a --step_size that consistent sampling cannot take there is
    # refused now, not after training.
    scheduler.set_timesteps(num_levels)
    return scheduler


# ---- loss -----------------------------------------------------------------------------------------------------------


def make_loss(convention: ModelConvention, device: torch.device) -> LossFunction:
    """Denoising score matching with λ(σ) = σ² over the convention's `num_train_timesteps` training levels."""
    num_levels = convention.num_train_timesteps
    level_times = torch.linspace(convention.sde.T, 0, num_levels, device=device)

    def loss_fn(unet: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
        x0 = batch["images"]
        level = torch.randint(0, num_levels, (x0.shape[0],), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noisy = convention.perturb(x0, level_times[level], noise)
        score = unet(noisy.sample, noisy.timestep).sample
        # σ²‖s + z/σ‖² = ‖σs + z‖², averaged over dimensions.
        return (noisy.sigma * score + noisy.noise).square().mean(), {}

    return loss_fn


# ---- main -----------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> TrainingResult:
    parser = build_parser()
    with arguments.usage_errors(parser):
        args = parse_args(parser, argv)
        data = prepare_training_data(args, args.block_out_channels)
        scheduler = build_scheduler(args, data)
        accelerator = make_accelerator(args, "train_ncsn", data)
    levels = scheduler.config.num_train_timesteps
    sampler = "consistent annealed sampling" if scheduler.config.consistent else "annealed Langevin dynamics"
    logger.info(
        f"{levels} noise levels from σ_max={scheduler.config.sigma_max:.4g} to σ_min={scheduler.config.sigma_min:.4g}; "
        f"{sampler}, step size {scheduler.step_size_for_levels(levels):.3g} on the {levels} levels"
    )
    torch.manual_seed(args.seed)
    unet = build_unet(args, data, time_embedding_type="fourier")
    grid_fn = pipeline_grid_fn(scheduler, num_inference_steps=levels, seed=args.seed)
    result = train(args, accelerator, unet, data, make_loss(scheduler.convention, accelerator.device), grid_fn)

    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        save_outputs(output_dir, ScoreGuidedPipeline(unet=result.model, scheduler=scheduler).save_pretrained)
    save_sample_grid(accelerator, grid_fn, result.model, args, output_dir / SAMPLE_GRID_NAME)

    def write_card() -> Path:
        return write_pipeline_card(
            args,
            output_dir,
            title="NCSN score model",
            method=f"NCSN / NCSNv2 denoising score matching over geometric noise levels, sampled with {sampler}",
            objective=f"denoising score matching, λ(σ) = σ², σ uniform over {levels} geometric levels",
            script="training/train_ncsn.py",
            tags=["ncsn", "annealed-langevin"],
            data=data,
            scheduler=scheduler,
            num_inference_steps=levels,
            steps_word="noise levels",
            result=result,
        )

    finish(accelerator, args, output_dir, write_card)
    return result


if __name__ == "__main__":
    main()
