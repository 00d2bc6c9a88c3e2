"""The arguments every training script takes, with the flag names of Diffusers' training examples, and their checks.

Checks raise `ValueError`; a script runs them (and its data and scheduler set-up) inside `usage_errors(parser)`,
which reports a bad argument as argparse does, `<prog>: error: <message>` on stderr with exit status 2, before any
training starts.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .checkpoints import checkpoint_step
from .data import DIGITS_DEFAULT_RESOLUTION
from .unet import check_resolution

# Defaults of the two score-model scripts: 130 epochs are about 3,000 steps of 64 on the 1,438 training digits, which
# gives clean NCSN samples in about 7 minutes on 2 CPU cores; EMA weights, a short warm-up.
SCORE_MODEL_DEFAULTS = {"num_epochs": 130, "use_ema": True, "learning_rate": 1e-3, "lr_warmup_steps": 50}
# Arguments that must be >= 1 when given.
_POSITIVE_ARGUMENTS = (
    "train_batch_size",
    "gradient_accumulation_steps",
    "checkpointing_steps",
    "num_grid_images",
    "max_train_steps",
    "num_epochs",
    "resolution",
    "save_images_steps",
    "checkpoints_total_limit",
    "max_train_samples",
)


def build_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every script takes, with the flag names of Diffusers' training examples."""
    parser = argparse.ArgumentParser(description=description)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A dataset on the Hub (or a local dataset folder) loaded with `datasets.load_dataset`. With neither this "
        "nor --train_data_dir, scikit-learn's bundled handwritten digits are used (offline).",
    )
    data.add_argument("--dataset_config_name", type=str, default=None, help="The config of --dataset_name, if any.")
    data.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="A local folder of images, read with the `imagefolder` builder of `datasets` (sub-folders become labels). "
        "Images are resized on their shorter side and center-cropped to --resolution.",
    )
    data.add_argument("--cache_dir", type=str, default=None, help="Where `datasets` caches downloaded data.")
    data.add_argument("--image_column", type=str, default="image", help="The dataset column holding the images.")
    data.add_argument("--label_column", type=str, default="label", help="The dataset column holding class labels.")
    data.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Training height and width. Defaults to the data's own size "
        f"({DIGITS_DEFAULT_RESOLUTION} for the digits); must be divisible by the U-Net's downsampling factor.",
    )
    data.add_argument(
        "--random_flip", action="store_true", help="Flip training images horizontally at random (not for digits)."
    )
    data.add_argument(
        "--max_train_samples", type=int, default=None, help="Keep only this many training examples (for quick runs)."
    )
    data.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="Worker processes for data loading (0: main process)."
    )

    run = parser.add_argument_group("training")
    run.add_argument("--output_dir", type=str, required=True, help="Where the model, checkpoints, logs and card go.")
    run.add_argument("--seed", type=int, default=0, help="Seed of the data order, the training noise and the model.")
    run.add_argument("--train_batch_size", type=int, default=64, help="Batch size per process.")
    run.add_argument("--num_epochs", type=int, default=None, help="Training epochs (ignored if --max_train_steps).")
    run.add_argument("--max_train_steps", type=int, default=None, help="Total optimizer steps; overrides --num_epochs.")
    run.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="Micro-batches accumulated per optimizer step."
    )
    run.add_argument("--learning_rate", type=float, default=5e-4, help="Peak learning rate of AdamW.")
    run.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant_with_warmup",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
        help="Learning-rate schedule (Diffusers' `get_scheduler`).",
    )
    run.add_argument("--lr_warmup_steps", type=int, default=100, help="Warm-up steps of the learning-rate schedule.")
    run.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW β1.")
    run.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW β2.")
    run.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay.")
    run.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW ε.")
    run.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables clipping).")
    run.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Mixed precision; defaults to the value given to `accelerate launch` / `accelerate config`.",
    )
    run.add_argument(
        "--use_ema",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Keep an EMA of the weights (with warm-up); it is what gets saved and sampled.",
    )
    run.add_argument("--ema_max_decay", type=float, default=0.999, help="Largest EMA decay.")
    run.add_argument("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up inverse multiplicative factor.")
    run.add_argument("--ema_power", type=float, default=3 / 4, help="EMA warm-up exponent.")

    io = parser.add_argument_group("checkpoints, logging and samples")
    io.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every this many steps."
    )
    io.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=None,
        help="Keep at most this many checkpoints, >= 1 (oldest go; default: keep all).",
    )
    io.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='Resume from a `checkpoint-N` folder, or "latest" for the newest one in --output_dir.',
    )
    io.add_argument(
        "--logger",
        type=str,
        default="tensorboard",
        choices=["tensorboard", "none"],
        help="Where scalars are logged (TensorBoard files under <output_dir>/<logging_dir>).",
    )
    io.add_argument("--logging_dir", type=str, default="logs", help="TensorBoard folder, relative to --output_dir.")
    io.add_argument(
        "--save_images_steps",
        type=int,
        default=None,
        help="Write a sample grid to <output_dir>/samples/ every this many steps (default: at each checkpoint).",
    )
    io.add_argument("--num_grid_images", type=int, default=64, help="Images in each sample grid.")

    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the final output folder to the Hub.")
    hub.add_argument("--hub_model_id", type=str, default=None, help="Repository id (default: the output folder name).")
    hub.add_argument("--hub_token", type=str, default=None, help="Hub token (default: the logged-in one).")
    hub.add_argument("--hub_private_repo", action="store_true", help="Create the repository as private.")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Raise a `ValueError` for a bad value or combination of the arguments of `build_parser`."""
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("give at most one of --dataset_name and --train_data_dir.")
    if args.train_data_dir is not None and not Path(args.train_data_dir).is_dir():
        raise ValueError(f"--train_data_dir {args.train_data_dir!r} does not exist or is not a folder.")
    for name in _POSITIVE_ARGUMENTS:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1; got {value}.")
    if args.resolution is not None and getattr(args, "block_out_channels", None):
        check_resolution(args.resolution, args.block_out_channels)
    if args.resume_from_checkpoint not in (None, "latest"):
        if not Path(args.resume_from_checkpoint).is_dir():
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a checkpoint folder.")
        checkpoint_step(args.resume_from_checkpoint)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv` (argparse exits on an unknown flag or value) and `check_args` the result."""
    args = parser.parse_args(argv)
    check_args(args)
    return args


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Report a `ValueError` raised inside as argparse reports a bad flag: `<prog>: error: <message>` on stderr and
    exit status 2."""
    try:
        yield
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def config_for_logging(args: argparse.Namespace) -> dict[str, Any]:
    """The run configuration with TensorBoard-friendly values (no secrets)."""
    config = {}
    for key, value in vars(args).items():
        if key == "hub_token":
            continue
        config[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return config
