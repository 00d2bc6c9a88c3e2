#!/usr/bin/env python
"""Train a noise-conditional classifier q_φ(y | x_t, t) for classifier guidance of a saved score pipeline.

The classifier sees the same noise process and the same timestep convention as the pipeline's unet: the SDE and
`timestep_type` come from `--pretrained_model_name_or_path` (a `ScoreGuidedPipeline` folder or Hub id), t ~ U[ε, 1],
x_t = α_t x₀ + σ_t z, and the classifier is fed exactly the timestep the unet is fed at t (Song et al., 2021,
https://arxiv.org/abs/2011.13456, §5; Dhariwal & Nichol, 2021, https://arxiv.org/abs/2105.05233).
After training it reports the held-out accuracy at evenly spaced noise levels.

The output folder holds the classifier (`NoiseConditionalClassifier.from_pretrained(output_dir)`), or with
`--save_pipeline` the whole pipeline with the classifier attached (`ScoreGuidedPipeline.from_pretrained(output_dir)`,
classifier in `output_dir/classifier`) and a guided sample grid, one row per class.

    accelerate launch training/train_classifier.py --pretrained_model_name_or_path ncsn-digits --output_dir clf
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from score_diffusers import ModelConvention, NoiseConditionalClassifier, ScoreGuidedPipeline
from training import arguments
from training.checkpoints import save_outputs
from training.data import ImageBatchDataset, load_image_data, prepare_training_data
from training.hub import finish, write_model_card
from training.loop import LossFunction, TrainingResult, make_accelerator, train, uniform_times
from training.samples import SAMPLE_GRID_NAME, GridFunction, save_sample_grid

logger = get_logger(__name__, log_level="INFO")
ACCURACY_FILE = "accuracy_per_noise_level.json"
# Steps of the guided grid when neither --num_inference_steps nor the pipeline's scheduler names a count, for a
# scheduler trained on more than this many levels or grid points.
MAX_DEFAULT_GRID_STEPS = 100


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.build_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="The ScoreGuidedPipeline (folder or Hub id) whose noise process and timesteps the classifier learns.",
    )
    model = parser.add_argument_group("classifier")
    model.add_argument(
        "--block_out_channels", type=int, nargs="+", default=[32, 64, 64], help="Classifier width per resolution level."
    )
    model.add_argument("--layers_per_block", type=int, default=1, help="Residual blocks per level.")
    evaluation = parser.add_argument_group("evaluation and output")
    evaluation.add_argument("--num_eval_levels", type=int, default=10, help="Noise levels of the accuracy report.")
    evaluation.add_argument(
        "--save_pipeline",
        action="store_true",
        help="Save the pipeline with the classifier attached (and a guided sample grid) instead of the classifier "
        "alone.",
    )
    evaluation.add_argument("--guidance_scale", type=float, default=1.0, help="Guidance scale of the sample grid.")
    evaluation.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="Sampler steps of the guided grid (default: the pipeline's).",
    )
    parser.set_defaults(num_epochs=10, learning_rate=1e-3, lr_warmup_steps=50)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; a bad value raises `ValueError`."""
    args = arguments.parse_args(parser, argv)
    if args.num_eval_levels < 1:
        raise ValueError(f"--num_eval_levels must be >= 1; got {args.num_eval_levels}.")
    if args.num_inference_steps is not None and args.num_inference_steps < 1:
        raise ValueError(f"--num_inference_steps must be >= 1; got {args.num_inference_steps}.")
    local = Path(args.pretrained_model_name_or_path)
    if local.exists() and not (local / "model_index.json").is_file():
        raise ValueError(f"--pretrained_model_name_or_path {str(local)!r} is not a saved pipeline folder.")
    if not local.exists() and (local.is_absolute() or args.pretrained_model_name_or_path.startswith(".")):
        raise ValueError(f"--pretrained_model_name_or_path {str(local)!r} does not exist.")
    return args


def load_pipeline(args: argparse.Namespace) -> ScoreGuidedPipeline:
    """The saved pipeline; a `ValueError` if it cannot be loaded (a Hub repository that is missing or not cached
    offline)."""
    try:
        pipeline = ScoreGuidedPipeline.from_pretrained(args.pretrained_model_name_or_path)
    except OSError as error:
        raise ValueError(
            f"--pretrained_model_name_or_path {args.pretrained_model_name_or_path!r} cannot be loaded: {error}"
        ) from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def check_data_matches(data: ImageBatchDataset, unet_config, source: str) -> None:
    """The classifier is trained on the unet's images: same size and channels, and labelled."""
    size = unet_config.sample_size if isinstance(unet_config.sample_size, int) else unet_config.sample_size[0]
    if (data.resolution, data.num_channels) != (size, unet_config.in_channels):
        raise ValueError(
            f"the data are {data.num_channels}×{data.resolution}×{data.resolution} but the unet of {source} takes "
            f"{unet_config.in_channels}×{size}×{size}; set --resolution {size} or use matching data."
        )
    if data.num_classes is None:
        raise ValueError("the data have no labels (--label_column); a classifier needs them.")


def make_loss(convention: ModelConvention) -> LossFunction:
    """Cross-entropy of the labels at t ~ U[ε, 1], ε the `sampling_eps` where the pipeline's sampler stops."""
    eps = convention.sampling_eps

    def loss_fn(classifier: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
        x0, labels = batch["images"], batch["labels"]
        t = uniform_times(x0.shape[0], eps, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noisy = convention.perturb(x0, t, noise)
        logits = classifier(noisy.sample, noisy.timestep).logits
        accuracy = (logits.argmax(-1) == labels).float().mean().item()
        return F.cross_entropy(logits.float(), labels), {"train_accuracy": accuracy}

    return loss_fn


@torch.no_grad()
def accuracy_per_noise_level(
    classifier: torch.nn.Module,
    convention: ModelConvention,
    data: ImageBatchDataset,
    num_levels: int,
    seed: int,
    batch_size: int,
) -> list[dict[str, float]]:
    """Held-out accuracy at t = linspace(ε, 1, num_levels), one fixed noise draw per image."""
    device = next(classifier.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for t in torch.linspace(convention.sampling_eps, 1, num_levels).tolist():
        correct = 0
        for start in range(0, len(data), batch_size):
            batch = data.__getitems__(list(range(start, min(start + batch_size, len(data)))))
            x0, labels = batch["images"].to(device), batch["labels"].to(device)
            noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
            noisy = convention.perturb(x0, torch.full((x0.shape[0],), t, device=device), noise)
            correct += int((classifier(noisy.sample, noisy.timestep).logits.argmax(-1) == labels).sum())
        _, sigma = convention.coefficients(t)
        timestep = convention.timestep(t)
        rows.append({"t": t, "sigma": float(sigma), "timestep": float(timestep), "accuracy": correct / len(data)})
    return rows


def main(argv: Sequence[str] | None = None) -> TrainingResult:
    parser = build_parser()
    with arguments.usage_errors(parser):
        args = parse_args(parser, argv)
        pipeline = load_pipeline(args)
        if args.resolution is None:
            size = pipeline.unet.config.sample_size
            args.resolution = size if isinstance(size, int) else size[0]
        data = prepare_training_data(args, args.block_out_channels)
        check_data_matches(data, pipeline.unet.config, args.pretrained_model_name_or_path)
        accelerator = make_accelerator(args, "train_classifier", data)
    scheduler = pipeline.scheduler
    pipeline.to(accelerator.device)
    torch.manual_seed(args.seed)
    classifier = NoiseConditionalClassifier.from_unet(
        pipeline.unet,
        num_classes=data.num_classes,
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        norm_num_groups=min(32, math.gcd(*args.block_out_channels)),
    )
    result = train(args, accelerator, classifier, data, make_loss(scheduler.convention))

    output_dir = Path(args.output_dir)
    test_data = load_image_data(args, split="test")
    rows = accuracy_per_noise_level(
        result.model, scheduler.convention, test_data, args.num_eval_levels, args.seed, args.train_batch_size
    )
    logger.info("Held-out accuracy per noise level:\n" + format_accuracy_table(rows))
    accelerator.log(
        {f"eval_accuracy/level_{i}": row["accuracy"] for i, row in enumerate(rows)}, step=result.global_step
    )

    if accelerator.is_main_process:
        saved = (
            ScoreGuidedPipeline(unet=pipeline.unet, scheduler=scheduler, classifier=result.model)
            if args.save_pipeline else result.model
        )

        def save(folder: Path) -> None:
            saved.save_pretrained(folder)
            (folder / ACCURACY_FILE).write_text(json.dumps(rows, indent=2))

        save_outputs(output_dir, save)
    if args.save_pipeline:
        guided = guided_grid_fn(pipeline, result.model, scheduler, data.num_classes, args)
        save_sample_grid(accelerator, guided, result.model, args, output_dir / SAMPLE_GRID_NAME)

    def write_card() -> Path:
        return write_model_card(
            args,
            output_dir,
            template="classifier_card.md",
            title="Noise-conditional classifier for guidance",
            tags=[
                "classifier-guidance",
                "diffusers:ScoreGuidedPipeline" if args.save_pipeline else "noise-conditional",
            ],
            training_config=arguments.config_for_logging(args),
            pipeline_tag="unconditional-image-generation" if args.save_pipeline else "image-classification",
            base_pipeline=args.pretrained_model_name_or_path,
            scheduler_class=type(scheduler).__name__,
            timestep_type=scheduler.config.timestep_type,
            dataset=data.description,
            num_classes=data.num_classes,
            accuracy_table=format_accuracy_table(rows),
            save_pipeline=args.save_pipeline,
            guidance_scale=args.guidance_scale,
            num_inference_steps=grid_inference_steps(pipeline, args),
            steps=result.global_step,
        )

    finish(accelerator, args, output_dir, write_card)
    return result


def format_accuracy_table(rows: list[dict[str, float]]) -> str:
    lines = ["| t | σ_t | model timestep | accuracy |", "|---|---|---|---|"]
    lines += [f"| {r['t']:.3f} | {r['sigma']:.4g} | {r['timestep']:.4g} | {r['accuracy']:.3f} |" for r in rows]
    return "\n".join(lines)


def grid_inference_steps(pipeline: ScoreGuidedPipeline, args: argparse.Namespace) -> int:
    """The guided grid's steps: --num_inference_steps, else those the pipeline's scheduler last sampled with, else
    its training grid (annealed Langevin's L levels), at most `MAX_DEFAULT_GRID_STEPS`."""
    if args.num_inference_steps is not None:
        return args.num_inference_steps
    if pipeline.scheduler.num_inference_steps is not None:
        return pipeline.scheduler.num_inference_steps
    return min(pipeline.scheduler.convention.num_train_timesteps, MAX_DEFAULT_GRID_STEPS)


def guided_grid_fn(pipeline: ScoreGuidedPipeline, classifier, scheduler, num_classes: int, args) -> GridFunction:
    """Guided samples, the classes cycling through the grid."""

    def sample(model: torch.nn.Module, num_images: int):
        guided = ScoreGuidedPipeline(unet=pipeline.unet, scheduler=scheduler, classifier=model)
        guided.set_progress_bar_config(disable=True)
        labels = torch.arange(num_images) % num_classes
        return guided(
            batch_size=num_images,
            num_inference_steps=grid_inference_steps(pipeline, args),
            generator=torch.Generator(device=pipeline.unet.device).manual_seed(args.seed),
            class_labels=labels,
            guidance_scale=args.guidance_scale,
        ).images

    return sample


if __name__ == "__main__":
    main()
