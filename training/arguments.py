"""The arguments every training script takes, with the flag names of Diffusers' training examples, and their checks.

Checks raise `ValueError`; a script runs them (and its data and scheduler set-up) inside `usage_errors(parser)`,
which reports a bad argument as argparse does, `<prog>: error: <message>` on stderr with exit status 2, before any
training starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from score_diffusers.checks import check_number

from .checkpoints import find_resume_checkpoint, list_checkpoints, read_manifest
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
# Arguments that must be integers >= 0.
_NON_NEGATIVE_ARGUMENTS = ("lr_warmup_steps", "dataloader_num_workers")
# Real-valued arguments and their ranges (low, high, low_open, high_open): NaN and infinities are refused.
_REAL_ARGUMENTS = {
    "learning_rate": (0.0, math.inf, True, True),
    "adam_beta1": (0.0, 1.0, False, True),
    "adam_beta2": (0.0, 1.0, False, True),
    "adam_weight_decay": (0.0, math.inf, False, True),
    "adam_epsilon": (0.0, math.inf, False, True),
    "max_grad_norm": (0.0, math.inf, False, True),
    "ema_max_decay": (0.0, 1.0, False, False),
    "ema_inv_gamma": (0.0, math.inf, True, True),
    "ema_power": (0.0, math.inf, True, True),
}
# The seeds NumPy (and so `accelerate.utils.set_seed`) accepts.
_MAX_SEED = 2**32 - 1
# Arguments a resumed run may change: how long it runs, where and how often it writes, what it logs, uploads and
# samples for its grids, how it loads data. Any other change would make the resumed steps those of another run (or,
# like --learning_rate, be overridden by the restored optimizer state without a word), so it is refused.
RESUMABLE_ARGUMENTS = frozenset({
    "output_dir", "resume_from_checkpoint", "max_train_steps", "num_epochs", "checkpointing_steps",
    "checkpoints_total_limit", "logger", "logging_dir", "save_images_steps", "num_grid_images", "push_to_hub",
    "hub_model_id", "hub_token", "hub_private_repo", "dataloader_num_workers", "cache_dir", "mixed_precision",
    # The saved sampler and its grids (not the training): train_ncsn's and train_score_sde's, train_classifier's.
    "steps_per_level", "step_size", "consistent", "final_denoising", "sampler", "num_inference_steps",
    "save_pipeline", "num_eval_levels",
})


# Arguments naming a local path (or, but for --train_data_dir, a Hub id): a resume compares paths however spelt.
_PATH_ARGUMENTS = ("train_data_dir", "dataset_name", "pretrained_model_name_or_path")


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
    for name in _NON_NEGATIVE_ARGUMENTS:
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0; got {getattr(args, name)}.")
    for name, (low, high, low_open, high_open) in _REAL_ARGUMENTS.items():
        check_number(f"--{name}", getattr(args, name), low, high, low_open, high_open)
    if not 0 <= args.seed <= _MAX_SEED:
        raise ValueError(f"--seed must lie in [0, {_MAX_SEED}]; got {args.seed}.")
    check_output_dir(args.output_dir)
    if args.logger != "none":
        # An absolute --logging_dir stands on its own; a relative one is inside the output folder.
        check_writable_folder("--logging_dir", str(Path(args.output_dir) / args.logging_dir))
    if args.resolution is not None and getattr(args, "block_out_channels", None):
        check_resolution(args.resolution, args.block_out_channels)
    if args.resume_from_checkpoint not in (None, "latest"):
        if not Path(args.resume_from_checkpoint).is_dir():
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a checkpoint folder.")
    earlier_checkpoints = list_checkpoints(args.output_dir) if args.resume_from_checkpoint is None else []
    if earlier_checkpoints:
        # A new run prunes the checkpoints of runs it does not continue (`prune_checkpoints`): refuse rather than
        # delete another run's good checkpoints at the first save.
        steps = ", ".join(str(step) for step, _ in earlier_checkpoints)
        raise ValueError(
            f"--output_dir {args.output_dir} holds the checkpoints of an earlier run (steps {steps}): continue it "
            "with --resume_from_checkpoint latest (or a checkpoint folder), or start this run in another "
            "--output_dir."
        )
    found = find_resume_checkpoint(args)
    if found is not None:
        check_resume_config(args, found.path)
        if args.max_train_steps is not None and found.step > args.max_train_steps:
            raise ValueError(
                f"{found.path} is at step {found.step}, past --max_train_steps {args.max_train_steps}; raise it to "
                "train on, or resume from an earlier checkpoint."
            )


def check_output_dir(output_dir: str) -> None:
    """Raise a `ValueError` unless `output_dir` is a folder this process can write in, or can be created: found
    before training, not at the first checkpoint."""
    check_writable_folder("--output_dir", output_dir)


def check_writable_folder(flag: str, folder: str) -> None:
    """Raise a `ValueError` naming `flag` unless `folder` is a folder this process can write in, or can create (its
    nearest existing ancestor is a folder it can write in); nothing is left behind."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {folder!r} exists and is not a folder.")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {folder!r} cannot be created: {str(existing)!r} is not a folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"{flag} {folder!r} is not writable: {error.strerror} in {str(existing)!r}.") from None


def check_resume_config(args: argparse.Namespace, checkpoint: Path) -> None:
    """Raise a `ValueError` if `checkpoint` was written by a run whose arguments differ from these in any but
    `RESUMABLE_ARGUMENTS` (a checkpoint without a manifest is not checked)."""
    saved = (read_manifest(checkpoint) or {}).get("config")
    if not isinstance(saved, dict):
        return
    current = config_for_logging(args)
    # Arguments the checkpoint's run had and this one lacks: another script wrote it (one this run has and the
    # checkpoint lacks may be a flag added since, and is not compared).
    foreign = sorted(set(saved) - set(current) - RESUMABLE_ARGUMENTS)
    if foreign:
        raise ValueError(
            f"--resume_from_checkpoint {str(checkpoint)!r} was written by another training script (it took "
            f"{', '.join(f'--{name}' for name in foreign)}, which this one does not); resume it with that script."
        )
    # Compared as JSON, as they were saved (NaN equals NaN; lists and tuples as `config_for_logging`'s strings).
    changed = [
        name for name in sorted(set(saved) & set(current))
        if name not in RESUMABLE_ARGUMENTS and _comparable(name, saved[name]) != _comparable(name, current[name])
    ]
    if changed:
        differences = "; ".join(f"--{name} {saved[name]} then, {current[name]} now" for name in changed)
        raise ValueError(
            f"--resume_from_checkpoint {str(checkpoint)!r} was written with other settings ({differences}). Resume "
            "with the same settings, or train into a new --output_dir."
        )


def _comparable(name: str, value: Any) -> str:
    """`value` of argument `name` as JSON, an existing local path by its absolute path: `data`, `./data/` and
    `~/x/data` are the same folder (a Hub id, which names no local path, is kept as it is, as the loaders read it)."""
    if isinstance(value, str) and name in _PATH_ARGUMENTS:
        path = Path(value).expanduser()
        if path.exists():
            value = str(path.resolve())
    return json.dumps(value)


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
        # A tuple as its list: one run's default and another's flag give the same string.
        config[key] = value if isinstance(value, (int, float, str, bool)) else str(
            list(value) if isinstance(value, tuple) else value
        )
    return config
