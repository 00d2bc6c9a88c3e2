#!/usr/bin/env python
"""Train a continuous-time score model for a VE, VP or sub-VP SDE by denoising score matching.

Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations" (2021),
https://arxiv.org/abs/2011.13456; likelihood weighting and importance sampling from Song et al., "Maximum Likelihood
Training of Score-Based Diffusion Models" (2021), https://arxiv.org/abs/2101.09258.

Loss E_t λ(t)‖s_θ(x_t, t) + z/σ_t‖², t ~ U[ε, 1], with λ = σ_t² (`--weighting score`) or λ = g(t)² (`likelihood`,
a bound on the negative log-likelihood); `--importance_sampling` draws t with density ∝ g²/σ² instead, which leaves
the objective unchanged and lowers its variance.

`--prediction_type score`: a Fourier-embedded `UNet2DModel` fed σ_t/α_t that returns the score (NCSN++ style).
`--prediction_type epsilon`: a DDPM-style `UNet2DModel` fed the DDPM timestep index t·(N − 1) that predicts ε;
for `--sde vp` the unet is a drop-in DDPM checkpoint. The output is a `ScoreGuidedPipeline` with the scheduler
`--sampler` names in the package's registry (by default `pc` for VE, `pf` for VP and sub-VP) on the same SDE.

    accelerate launch training/train_score_sde.py --sde vp --prediction_type epsilon --output_dir vp-digits
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from score_diffusers import ModelConvention, ScoreGuidedPipeline
from score_diffusers.checks import check_number
from score_diffusers.conventions import SDE_TYPES
from score_diffusers.schedulers import DEFAULT_SCHEDULERS, SCHEDULERS
from score_diffusers.schedulers import build_scheduler as build_scheduler_named
from score_diffusers.sde import SDE
from training import arguments
from training.checkpoints import save_outputs
from training.data import ImageBatchDataset, max_pairwise_distance, prepare_training_data
from training.hub import finish, write_pipeline_card
from training.loop import LossFunction, TrainingResult, make_accelerator, train, uniform_times
from training.samples import SAMPLE_GRID_NAME, pipeline_grid_fn, save_sample_grid
from training.unet import add_unet_arguments, build_unet

WEIGHTINGS = ("score", "likelihood")
# Points of the tabulated importance density g²/σ² on a log-spaced grid of t.
_IMPORTANCE_GRID_POINTS = 4097


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.build_parser(__doc__.split("\n\n")[0])
    add_unet_arguments(parser)
    sde = parser.add_argument_group("SDE and objective")
    sde.add_argument("--sde", type=str, default="ve", choices=SDE_TYPES, help="The forward SDE.")
    sde.add_argument("--sigma_min", type=float, default=0.01, help="VE: σ_min.")
    sde.add_argument(
        "--sigma_max", type=float, default=None, help="VE: σ_max (default: the largest pairwise distance in the data)."
    )
    sde.add_argument("--beta_min", type=float, default=0.1, help="VP / sub-VP: β(0).")
    sde.add_argument("--beta_max", type=float, default=20.0, help="VP / sub-VP: β(1).")
    sde.add_argument(
        "--num_train_timesteps",
        type=int,
        default=1000,
        help="N of the DDPM index scale t·(N − 1) that ε models receive (and of the saved scheduler).",
    )
    sde.add_argument("--training_eps", type=float, default=1e-5, help="Smallest training time ε (score_sde: 1e-5).")
    sde.add_argument(
        "--weighting", type=str, default="score", choices=WEIGHTINGS, help="λ(t) = σ_t² (score) or g(t)² (likelihood)."
    )
    sde.add_argument(
        "--importance_sampling",
        action="store_true",
        help="With --weighting likelihood: draw t ∝ g²/σ² (same objective, lower variance).",
    )
    sde.add_argument(
        "--prediction_type",
        type=str,
        default="score",
        choices=("score", "epsilon"),
        help="What the unet predicts; epsilon gives a DDPM-compatible checkpoint for --sde vp.",
    )
    sample = parser.add_argument_group("sampling")
    sample.add_argument(
        "--sampler",
        type=str,
        default=None,
        choices=tuple(SCHEDULERS),
        metavar="NAME",
        help="Saved scheduler, a name of the package's registry: "
        + ", ".join(SCHEDULERS)
        + ". Default: "
        + ", ".join(f"{name} for {sde.upper()}" for sde, name in DEFAULT_SCHEDULERS.items())
        + ".",
    )
    sample.add_argument(
        "--num_inference_steps", type=int, default=None,
        help="Sampler steps for the sample grids (default: the registry's for the sampler, e.g. pc 100, pf 30).",
    )
    parser.set_defaults(**arguments.SCORE_MODEL_DEFAULTS)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments and fill in the sampler's defaults; a bad value raises `ValueError`."""
    args = arguments.parse_args(parser, argv)
    if args.importance_sampling and args.weighting != "likelihood":
        raise ValueError("--importance_sampling needs --weighting likelihood.")
    if not 0 < args.training_eps < 1:
        raise ValueError(f"--training_eps must lie in (0, 1); got {args.training_eps}.")
    if args.sigma_max is not None and not 0 < args.sigma_min < args.sigma_max:
        raise ValueError(f"need 0 < --sigma_min < --sigma_max; got {args.sigma_min} and {args.sigma_max}.")
    for name in ("sigma_min", "beta_min", "beta_max"):
        check_number(f"--{name}", getattr(args, name), 0.0, math.inf, low_open=name == "sigma_min", high_open=True)
    check_number("--sigma_max", args.sigma_max, 0.0, math.inf, low_open=True, high_open=True, allow_none=True,
                 none_means="for the data's largest pairwise distance")
    if not 0 <= args.beta_min <= args.beta_max:
        raise ValueError(f"need 0 <= --beta_min <= --beta_max; got {args.beta_min} and {args.beta_max}.")
    if args.prediction_type == "epsilon" and args.num_train_timesteps < 2:
        # The ε model's timestep is t·(N − 1): with N = 1 it is 0 at every t.
        raise ValueError(
            f"--num_train_timesteps must be >= 2 for --prediction_type epsilon; got {args.num_train_timesteps}."
        )
    if args.num_inference_steps is not None and args.num_inference_steps < 1:
        raise ValueError(f"--num_inference_steps must be >= 1; got {args.num_inference_steps}.")
    args.sampler = args.sampler or DEFAULT_SCHEDULERS[args.sde]
    args.num_inference_steps = args.num_inference_steps or SCHEDULERS[args.sampler].num_inference_steps
    return args


def build_scheduler(args: argparse.Namespace, data: ImageBatchDataset | None):
    """The saved sampler: the same SDE, the unet's prediction type and timestep convention."""
    convention = {
        "num_train_timesteps": args.num_train_timesteps,
        "sde_type": args.sde,
        "sigma_min": args.sigma_min,
        "sigma_max": (args.sigma_max or max_pairwise_distance(data)) if args.sde == "ve" else 50.0,
        "beta_min": args.beta_min,
        "beta_max": args.beta_max,
        "prediction_type": args.prediction_type,
        "timestep_type": "sigma" if args.prediction_type == "score" else "discrete",
    }
    return build_scheduler_named(args.sampler, convention)


# ---- time sampling and weighting ------------------------------------------------------------------------------------


def likelihood_density(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """g(t)²/σ_t², the likelihood weight λ = g² relative to the σ²-scaled residual ‖σ s + z‖²."""
    return sde.diffusion(t) ** 2 / sde.marginal_std(t) ** 2


class ImportanceTimeSampler:
    """Draws t ∈ [ε, 1] with density q ∝ g²/σ², tabulated on a log-spaced grid (piecewise-constant q).

    Returns with each t the weight λ(t)/σ²(t) / ((1 − ε)·q(t)), so the weighted loss is an unbiased estimate of the
    same objective as uniform t with weight g²/σ²; q ∝ g²/σ² makes the weight nearly constant.
    """

    def __init__(self, sde: SDE, eps: float, device: torch.device):
        grid = torch.logspace(math.log10(eps), 0, _IMPORTANCE_GRID_POINTS, dtype=torch.float64)
        density = likelihood_density(sde, grid)
        mass = 0.5 * (density[1:] + density[:-1]) * grid.diff()
        self.grid = grid.to(device)
        self.cdf = torch.cat([torch.zeros(1, dtype=torch.float64), mass.cumsum(0) / mass.sum()]).to(device)
        self.bin_density = (mass / mass.sum() / grid.diff()).to(device)
        self.sde = sde
        self.eps = eps

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(batch_size, generator=generator, device=self.grid.device, dtype=torch.float64)
        index = (torch.searchsorted(self.cdf, u, right=True) - 1).clamp(0, self.bin_density.numel() - 1)
        fraction = (u - self.cdf[index]) / (self.cdf[index + 1] - self.cdf[index])
        t = self.grid[index] + fraction * (self.grid[index + 1] - self.grid[index])
        weight = likelihood_density(self.sde, t) / ((1 - self.eps) * self.bin_density[index])
        return t.float(), weight.float()


def make_loss(args: argparse.Namespace, convention: ModelConvention, device: torch.device) -> LossFunction:
    """Weighted denoising score matching, ‖σ_t s_θ + z‖² times λ(t)/σ_t² (and the importance weight), for a model
    with `convention`'s SDE, timesteps and prediction type."""
    sde, eps = convention.sde, args.training_eps
    importance = ImportanceTimeSampler(sde, eps, device) if args.importance_sampling else None

    def loss_fn(unet: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
        x0 = batch["images"]
        if importance is not None:
            t, weight = importance.sample(x0.shape[0], generator)
        else:
            t = uniform_times(x0.shape[0], eps, generator, x0.device)
            weight = likelihood_density(sde, t) if args.weighting == "likelihood" else torch.ones_like(t)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noisy = convention.perturb(x0, t, noise)
        output = unet(noisy.sample, noisy.timestep).sample
        # σ·s = σ·output for a score model; σ·s = −ε̂ for an ε model.
        sigma_score = noisy.sigma * output if convention.prediction_type == "score" else -output
        residual = (sigma_score + noisy.noise).square().flatten(1).mean(1)
        return (weight.to(residual.dtype) * residual).mean(), {}

    return loss_fn


# ---- main -----------------------------------------------------------------------------------------------------------


def ddpm_scheduler_arguments(args: argparse.Namespace) -> str | None:
    """`DDPMScheduler(...)` arguments matching a VP ε model (β_start = β_min/N, β_end = β_max/N), else None."""
    if args.sde != "vp" or args.prediction_type != "epsilon":
        return None
    n = args.num_train_timesteps
    return f"num_train_timesteps={n}, beta_start={args.beta_min / n:g}, beta_end={args.beta_max / n:g}"


def main(argv: Sequence[str] | None = None) -> TrainingResult:
    parser = build_parser()
    with arguments.usage_errors(parser):
        args = parse_args(parser, argv)
        data = prepare_training_data(args, args.block_out_channels)
        scheduler = build_scheduler(args, data)
        accelerator = make_accelerator(args, "train_score_sde", data)
    torch.manual_seed(args.seed)
    unet = build_unet(
        args,
        data,
        time_embedding_type="fourier" if args.prediction_type == "score" else "positional",
        num_train_timesteps=args.num_train_timesteps,
    )
    grid_fn = pipeline_grid_fn(scheduler, num_inference_steps=args.num_inference_steps, seed=args.seed)
    result = train(args, accelerator, unet, data, make_loss(args, scheduler.convention, accelerator.device), grid_fn)

    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        save_outputs(output_dir, ScoreGuidedPipeline(unet=result.model, scheduler=scheduler).save_pretrained)
    save_sample_grid(accelerator, grid_fn, result.model, args, output_dir / SAMPLE_GRID_NAME)

    weighting = "λ = σ_t²" if args.weighting == "score" else "λ = g(t)² (likelihood weighting)"
    time_sampling = (
        "t ∝ g²/σ² (importance sampling)" if args.importance_sampling else f"t ~ U[{args.training_eps:g}, 1]"
    )

    def write_card() -> Path:
        return write_pipeline_card(
            args,
            output_dir,
            title=f"{args.sde.upper()} SDE score model",
            method=f"continuous-time denoising score matching for the {args.sde.upper()} SDE",
            objective=f"denoising score matching, {weighting}, {time_sampling}, {args.prediction_type} prediction",
            script="training/train_score_sde.py",
            data=data,
            scheduler=scheduler,
            num_inference_steps=args.num_inference_steps,
            result=result,
            tags=["score-sde", f"{args.sde}-sde"],
            ddpm_usage=ddpm_scheduler_arguments(args),
        )

    finish(accelerator, args, output_dir, write_card)
    return result


if __name__ == "__main__":
    main()
