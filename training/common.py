"""What the three training scripts share: Diffusers-style arguments, data, the U-Net, the Accelerate training loop
with EMA, checkpoints and resumption, sample grids, the model card and the Hub upload.

Reproducibility contract: the order of the training data is a function of (seed, epoch) and every random draw
of the loss (noise levels, Gaussian noise) comes from a generator re-seeded from (seed, step, micro-batch, process),
so a run resumed from `checkpoint-N` replays exactly the batches and noise of the uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from tqdm.auto import tqdm

from score_diffusers.image_grid import image_grid

logger = get_logger(__name__, log_level="INFO")

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_CARDS_DIR = REPO_ROOT / "hub_cards"
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
EMA_SUBFOLDER = "ema"
SAMPLE_GRID_NAME = "samples.png"
# The digits' own size; the default three-level U-Net sees 2×2 at its bottom.
DIGITS_DEFAULT_RESOLUTION = 8
# Default epochs of the score-model scripts: about 3,000 steps of 64 on the 1,438 training digits, which gives clean
# NCSN samples in about 7 minutes on 2 CPU cores.
SCORE_MODEL_DEFAULT_EPOCHS = 130
# σ_max from the largest pairwise distance looks at this many images at most (O(n²) distances).
MAX_IMAGES_FOR_PAIRWISE_DISTANCE = 4096
# Multipliers that decorrelate the per-(step, micro-batch, process) seeds of the loss generator.
_SEED_STRIDES = (1_000_003, 1_009, 7_919)


class UsageError(SystemExit):
    """A bad argument or data set, reported before training starts as `error: <message>` with exit status 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


# ---- arguments ----------------------------------------------------------------------------------------------------


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
        help=f"Training height and width. Defaults to the data's own size ({DIGITS_DEFAULT_RESOLUTION} for the digits); "
        "must be divisible by the U-Net's downsampling factor.",
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
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints (oldest go)."
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


def add_unet_arguments(parser: argparse.ArgumentParser, default_channels: Sequence[int] = (32, 64, 64)) -> None:
    """Size of the `UNet2DModel` score network."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--block_out_channels",
        type=int,
        nargs="+",
        default=list(default_channels),
        help="U-Net width per resolution level; the resolution halves between levels.",
    )
    model.add_argument("--layers_per_block", type=int, default=1, help="ResNet layers per U-Net level.")
    model.add_argument(
        "--attention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Self-attention at the U-Net's lowest resolution.",
    )


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the common arguments; anything wrong exits with a message before any work starts."""
    args = parser.parse_args(argv)
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise UsageError("give at most one of --dataset_name and --train_data_dir.")
    if args.train_data_dir is not None and not Path(args.train_data_dir).is_dir():
        raise UsageError(f"--train_data_dir {args.train_data_dir!r} does not exist or is not a folder.")
    positive = ["train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "num_grid_images"]
    positive += [
        name for name in ("max_train_steps", "num_epochs", "resolution", "save_images_steps") if getattr(args, name)
    ]
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1; got {getattr(args, name)}.")
    if getattr(args, "resolution", None) is not None and getattr(args, "block_out_channels", None):
        check_resolution(args.resolution, args.block_out_channels)
    if args.resume_from_checkpoint not in (None, "latest") and not Path(args.resume_from_checkpoint).is_dir():
        raise UsageError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a checkpoint folder.")
    if args.push_to_hub and args.hub_token is not None:
        logger.warning("--hub_token is stored in the process arguments; prefer `huggingface-cli login`.")
    return args


def downsampling_factor(block_out_channels: Sequence[int]) -> int:
    """How much a U-Net with these levels shrinks its input: 2 per level after the first."""
    return 2 ** (len(block_out_channels) - 1)


def check_resolution(resolution: int, block_out_channels: Sequence[int]) -> None:
    factor = downsampling_factor(block_out_channels)
    if resolution % factor:
        raise UsageError(
            f"resolution {resolution} is not divisible by the U-Net's downsampling factor {factor} "
            f"({len(block_out_channels)} levels in --block_out_channels); pick a multiple of {factor} or fewer levels."
        )


def config_for_logging(args: argparse.Namespace) -> dict[str, Any]:
    """The run configuration with TensorBoard-friendly values (no secrets)."""
    config = {}
    for key, value in vars(args).items():
        if key == "hub_token":
            continue
        config[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return config


# ---- data -----------------------------------------------------------------------------------------------------------


class ImageBatchDataset(torch.utils.data.Dataset):
    """Images in [−1, 1] (and labels) fetched a whole batch at a time through `__getitems__`."""

    num_channels: int
    resolution: int
    num_classes: int | None
    description: str

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def all_images(self, limit: int) -> torch.Tensor:
        """Up to `limit` images, evenly spread over the data set, as one tensor."""
        count = min(limit, len(self))
        return self.__getitems__(np.linspace(0, len(self) - 1, count).round().astype(int).tolist())["images"]


class TensorImageDataset(ImageBatchDataset):
    """An in-memory image tensor `(n, C, H, W)` with optional labels `(n,)`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, description: str):
        self.images = images
        self.labels = labels
        self.num_channels = images.shape[1]
        self.resolution = images.shape[-1]
        self.num_classes = None if labels is None else int(labels.max()) + 1
        self.description = description

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = {"images": self.images[index]}
        if self.labels is not None:
            batch["labels"] = self.labels[index]
        return batch


class HFImageDataset(ImageBatchDataset):
    """A `datasets.Dataset` of PIL images, resized (shorter side), center-cropped and scaled to [−1, 1] on access.

    Grayscale images stay 1-channel; anything else becomes RGB.
    """

    def __init__(self, dataset, args: argparse.Namespace, description: str):
        self.dataset = dataset
        self.image_column = args.image_column
        self.label_column = args.label_column if args.label_column in dataset.column_names else None
        first = dataset[0][self.image_column]
        self.num_channels = 1 if first.mode in ("L", "1", "I", "I;16", "F") else 3
        self.mode = "L" if self.num_channels == 1 else "RGB"
        self.resolution = args.resolution or min(first.size)
        if self.label_column is None:
            self.num_classes = None
        else:
            feature = dataset.features[self.label_column]
            self.num_classes = getattr(feature, "num_classes", None) or int(max(dataset[self.label_column])) + 1
        self.description = description

    def __len__(self) -> int:
        return len(self.dataset)

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        image = image.convert(self.mode)
        scale = self.resolution / min(image.size)
        width, height = (max(self.resolution, round(side * scale)) for side in image.size)
        image = image.resize((width, height), Image.BICUBIC)
        left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1
        return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = self.dataset[list(indices)]
        batch = {"images": torch.stack([self._to_tensor(image) for image in rows[self.image_column]])}
        if self.label_column is not None:
            batch["labels"] = torch.as_tensor(rows[self.label_column], dtype=torch.long)
        return batch


def load_image_data(args: argparse.Namespace, split: str = "train") -> ImageBatchDataset:
    """The training images the arguments name: a Hub dataset, an image folder, or the bundled digits.

    `split="test"` returns held-out data where the source has it (the digits' fixed test split, a dataset's `test`
    split) and otherwise the training data.
    """
    if args.dataset_name is None and args.train_data_dir is None:
        from score_diffusers.datasets import load_digits_images

        resolution = args.resolution or DIGITS_DEFAULT_RESOLUTION
        images, labels = load_digits_images(resolution=resolution, split=split if split == "test" else "train")
        return TensorImageDataset(images, labels, f"scikit-learn digits ({split} split), {resolution}×{resolution}")

    import datasets

    if args.dataset_name is not None:
        source = args.dataset_name
        loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir)
    else:
        source = f"image folder {args.train_data_dir}"
        try:
            loaded = datasets.load_dataset("imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(f"--train_data_dir {args.train_data_dir!r} holds no readable images ({error}).") from None
    chosen_split = "test" if split == "test" and "test" in loaded else "train"
    if chosen_split not in loaded:
        raise UsageError(f"{source} has no 'train' split; it has {list(loaded)}.")
    dataset = loaded[chosen_split]
    if args.image_column not in dataset.column_names:
        raise UsageError(
            f"{source} has no column {args.image_column!r} (--image_column); it has {dataset.column_names}."
        )
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    return HFImageDataset(dataset, args, f"{source} ({chosen_split} split)")


def prepare_training_data(args: argparse.Namespace, block_out_channels: Sequence[int] | None) -> ImageBatchDataset:
    """`load_image_data` plus the checks that need the data: size, resolution and batch size."""
    data = load_image_data(args)
    if args.max_train_samples is not None and isinstance(data, TensorImageDataset):
        keep = slice(0, args.max_train_samples)
        data = TensorImageDataset(
            data.images[keep], None if data.labels is None else data.labels[keep], data.description
        )
    if block_out_channels:
        check_resolution(data.resolution, block_out_channels)
    return data


class EpochBatchSampler:
    """Batches of indices for one process: each epoch is a permutation seeded by (seed, epoch), cut into global
    batches of `batch_size · num_processes`, of which this process takes its `process_index`-th slice.

    Incomplete global batches are dropped so every process runs the same number of steps.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.batches_per_epoch = num_samples // (batch_size * num_processes)
        if self.batches_per_epoch == 0:
            raise UsageError(
                f"the data has {num_samples} examples, fewer than one global batch "
                f"({batch_size} per process × {num_processes} processes); lower --train_batch_size."
            )

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """This process's batches of `epoch`, from the `start`-th on."""
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
        for batch in range(start, self.batches_per_epoch):
            first = (batch * self.num_processes + self.process_index) * self.batch_size
            yield order[first : first + self.batch_size].tolist()


def _take_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


def micro_batches(
    data: ImageBatchDataset, sampler: EpochBatchSampler, start: int, num_workers: int, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """An endless stream of micro-batches on `device`, starting at micro-batch number `start` of the run."""
    epoch, offset = divmod(start, sampler.batches_per_epoch)
    while True:
        if num_workers == 0:
            batches = (data.__getitems__(indices) for indices in sampler.epoch_batches(epoch, offset))
        else:
            batches = torch.utils.data.DataLoader(
                data,
                batch_sampler=list(sampler.epoch_batches(epoch, offset)),
                collate_fn=_take_batch,
                num_workers=num_workers,
            )
        for batch in batches:
            yield {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        epoch, offset = epoch + 1, 0


def max_pairwise_distance(data: ImageBatchDataset) -> float:
    """The largest Euclidean distance between two training images (NCSNv2's choice of σ_max), over at most
    `MAX_IMAGES_FOR_PAIRWISE_DISTANCE` images spread over the data set."""
    images = data.all_images(MAX_IMAGES_FOR_PAIRWISE_DISTANCE).flatten(1).double()
    return float(torch.cdist(images, images).max())


# ---- model ------------------------------------------------------------------------------------------------------------


def build_unet(
    args: argparse.Namespace, data: ImageBatchDataset, time_embedding_type: str, num_train_timesteps: int | None = None
) -> UNet2DModel:
    """A `UNet2DModel` for the data's size and channels; attention (optional) at the lowest resolution.

    `time_embedding_type="fourier"` embeds log σ and divides the output by σ (the NCSN++ parameterisation, so the
    output is a score); `"positional"` is DDPM's sinusoidal embedding of the timestep.
    """
    levels = len(args.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if args.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=data.resolution,
        in_channels=data.num_channels,
        out_channels=data.num_channels,
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        time_embedding_type=time_embedding_type,
        norm_num_groups=min(32, math.gcd(*args.block_out_channels)),
        attention_head_dim=None,
        num_train_timesteps=num_train_timesteps,
    )


# ---- accelerator, checkpoints and the loop -------------------------------------------------------------------------


def make_accelerator(args: argparse.Namespace, project_name: str) -> Accelerator:
    """An `Accelerator` logging to TensorBoard under the output folder, seeded per process."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    set_seed(args.seed, device_specific=True)
    if not accelerator.is_local_main_process:
        diffusers.utils.logging.set_verbosity_error()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if args.logger != "none":
            accelerator.init_trackers(project_name, config=config_for_logging(args))
    accelerator.wait_for_everyone()
    logger.info(accelerator.state, main_process_only=False)
    return accelerator


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Completed checkpoints in `output_dir` as `(step, path)`, oldest first (in-progress temporary folders excluded)."""
    found = []
    if Path(output_dir).is_dir():
        for path in Path(output_dir).iterdir():
            match = _CHECKPOINT_PATTERN.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume_checkpoint(args: argparse.Namespace) -> tuple[int, Path] | None:
    """The checkpoint `--resume_from_checkpoint` names (the newest one for "latest"), or None to start fresh."""
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(args.output_dir)
        if not checkpoints:
            logger.info(f"No checkpoint in {args.output_dir}; starting a new run.")
            return None
        return checkpoints[-1]
    path = Path(args.resume_from_checkpoint)
    match = _CHECKPOINT_PATTERN.match(path.name)
    if match is None:
        raise UsageError(f"--resume_from_checkpoint {str(path)!r} is not named {CHECKPOINT_PREFIX}<step>.")
    return int(match.group(1)), path


def save_checkpoint(accelerator: Accelerator, ema: EMAModel | None, output_dir: Path, step: int, limit: int | None):
    """`accelerator.save_state` into a temporary folder, renamed to `checkpoint-<step>` once complete.

    A save that is interrupted leaves only the temporary folder, which resumption ignores, so the last good
    checkpoint is never replaced by a partial one. Old checkpoints beyond `limit` are pruned afterwards.
    """
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    partial = output_dir / f".{final.name}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process and ema is not None:
        ema.save_pretrained(str(partial / EMA_SUBFOLDER))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            stale = output_dir / f".{final.name}.stale"
            os.replace(final, stale)
            shutil.rmtree(stale)
        os.replace(partial, final)
        if limit is not None:
            for _, old in list_checkpoints(output_dir)[:-limit]:
                shutil.rmtree(old)
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()


def loss_generator(device: torch.device, seed: int, step: int, micro_batch: int, process_index: int) -> torch.Generator:
    """The generator of one micro-batch's random draws, a pure function of where it is in the run."""
    stride_step, stride_micro, stride_process = _SEED_STRIDES
    derived = seed + stride_step * (step + 1) + stride_micro * micro_batch + stride_process * process_index
    return torch.Generator(device=device).manual_seed(derived % (2**63 - 1))


LossFunction = Callable[
    [torch.nn.Module, dict[str, torch.Tensor], torch.Generator], tuple[torch.Tensor, dict[str, float]]
]
GridFunction = Callable[[torch.nn.Module, int], list[Image.Image]]


@dataclass
class TrainingResult:
    """The trained model (EMA weights if kept), how far it got and how fast."""

    model: torch.nn.Module
    global_step: int
    images_per_second: float
    train_seconds: float
    num_processes: int
    step_seconds: list[float]


def train(
    args: argparse.Namespace,
    accelerator: Accelerator,
    model: torch.nn.Module,
    data: ImageBatchDataset,
    loss_fn: LossFunction,
    grid_fn: GridFunction | None = None,
) -> TrainingResult:
    """Train `model` on `data` with `loss_fn(model, batch, generator) -> (loss, scalars)`.

    AdamW with a Diffusers learning-rate schedule, gradient accumulation and clipping, optional EMA with warm-up,
    TensorBoard scalars, a tqdm bar, resumable atomic checkpoints and a sample grid from `grid_fn` every
    `--save_images_steps`. Returns the unwrapped model, carrying the EMA weights when `--use_ema`.
    """
    output_dir = Path(args.output_dir)
    sampler = EpochBatchSampler(
        len(data), args.train_batch_size, args.seed, accelerator.num_processes, accelerator.process_index
    )
    steps_per_epoch = max(1, sampler.batches_per_epoch // args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or (args.num_epochs or 1) * steps_per_epoch

    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    # The prepared scheduler steps once per process at each optimizer step (Accelerate's convention).
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    ema = None
    if args.use_ema:
        unwrapped = accelerator.unwrap_model(model)
        ema = EMAModel(
            unwrapped.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            foreach=True,
            model_cls=type(unwrapped),
            model_config=unwrapped.config,
        )
        ema.to(accelerator.device)

    global_step = 0
    resume = resolve_resume_checkpoint(args)
    if resume is not None:
        global_step, path = resume
        logger.info(f"Resuming from {path} (step {global_step})")
        accelerator.load_state(str(path))
        if ema is not None:
            saved_ema = EMAModel.from_pretrained(str(path / EMA_SUBFOLDER), type(accelerator.unwrap_model(model)))
            ema.load_state_dict(saved_ema.state_dict())
            ema.to(accelerator.device)

    logger.info(
        f"Training on {data.description}: {len(data)} examples, {accelerator.num_processes} process(es), "
        f"{args.train_batch_size} per process × {args.gradient_accumulation_steps} accumulation, "
        f"{max_train_steps} steps ({steps_per_epoch} per epoch)"
    )
    stream = micro_batches(
        data, sampler, global_step * args.gradient_accumulation_steps, args.dataloader_num_workers, accelerator.device
    )
    grid_every = args.save_images_steps or args.checkpointing_steps
    progress = tqdm(
        range(max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    images_seen, step_seconds, start_step = 0, [], global_step
    model.train()
    while global_step < max_train_steps:
        step_start = time.perf_counter()
        scalars: dict[str, float] = {}
        for micro in range(args.gradient_accumulation_steps):
            batch = next(stream)
            last_micro = micro == args.gradient_accumulation_steps - 1
            with contextlib.nullcontext() if last_micro else accelerator.no_sync(model):
                generator = loss_generator(accelerator.device, args.seed, global_step, micro, accelerator.process_index)
                if args.random_flip:
                    batch["images"] = random_horizontal_flip(batch["images"], generator)
                with accelerator.autocast():
                    loss, extra = loss_fn(model, batch, generator)
                accelerator.backward(loss / args.gradient_accumulation_steps)
            scalars["loss"] = scalars.get("loss", 0.0) + loss.detach().item() / args.gradient_accumulation_steps
            scalars.update(extra)
            images_seen += batch["images"].shape[0] * accelerator.num_processes
        if args.max_grad_norm > 0:
            scalars["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm))
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
            scalars["ema_decay"] = ema.cur_decay_value
        global_step += 1
        step_seconds.append(time.perf_counter() - step_start)
        scalars["lr"] = lr_scheduler.get_last_lr()[0]
        progress.update(1)
        progress.set_postfix(loss=f"{scalars['loss']:.4f}")
        accelerator.log(scalars, step=global_step)

        if global_step % args.checkpointing_steps == 0 or global_step == max_train_steps:
            save_checkpoint(accelerator, ema, output_dir, global_step, args.checkpoints_total_limit)
        if grid_fn is not None and global_step % grid_every == 0 and global_step < max_train_steps:
            with ema_weights(accelerator.unwrap_model(model), ema):
                save_sample_grid(
                    accelerator,
                    grid_fn,
                    accelerator.unwrap_model(model),
                    args,
                    output_dir / "samples" / f"step_{global_step:06d}.png",
                )
            model.train()
    progress.close()
    accelerator.wait_for_everyone()

    final = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(final.parameters())
    final.eval()
    train_seconds = sum(step_seconds)
    return TrainingResult(
        model=final,
        global_step=global_step,
        images_per_second=images_seen / train_seconds if global_step > start_step else float("nan"),
        train_seconds=train_seconds,
        num_processes=accelerator.num_processes,
        step_seconds=step_seconds,
    )


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip.reshape(-1, *([1] * (images.ndim - 1))), images.flip(-1), images)


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema: EMAModel | None) -> Iterator[None]:
    """Temporarily swap the EMA weights into `model` (no-op without EMA)."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


# ---- samples ------------------------------------------------------------------------------------------------------------


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
        grid.save(path)
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


# ---- model card and Hub ----------------------------------------------------------------------------------------------


def write_model_card(
    args: argparse.Namespace,
    output_dir: Path,
    template: str,
    title: str,
    tags: Sequence[str],
    training_config: dict[str, Any],
    pipeline_tag: str | None = "unconditional-image-generation",
    **template_kwargs: Any,
) -> Path:
    """Render `hub_cards/<template>` with `huggingface_hub.ModelCard` into `<output_dir>/README.md`."""
    from huggingface_hub import ModelCard, ModelCardData

    datasets_ = [args.dataset_name] if args.dataset_name and not Path(args.dataset_name).exists() else None
    card_data = ModelCardData(
        library_name="diffusers",
        tags=["score-based", "pytorch", "diffusers", *tags],
        pipeline_tag=pipeline_tag,
        datasets=datasets_,
    )
    repo_id = args.hub_model_id or output_dir.resolve().name
    card = ModelCard.from_template(
        card_data,
        template_path=str(HUB_CARDS_DIR / template),
        title=title,
        repo_id=repo_id,
        training_config_json=json.dumps(training_config, indent=2, default=str),
        sample_grid=SAMPLE_GRID_NAME if (output_dir / SAMPLE_GRID_NAME).exists() else None,
        **template_kwargs,
    )
    path = output_dir / "README.md"
    card.save(path)
    return path


def push_to_hub(args: argparse.Namespace, output_dir: Path) -> str:
    """Create (or reuse) the Hub repository and upload `output_dir`, checkpoints and partial saves excluded."""
    import huggingface_hub

    repo_id = huggingface_hub.create_repo(
        repo_id=args.hub_model_id or output_dir.resolve().name,
        exist_ok=True,
        private=args.hub_private_repo,
        token=args.hub_token,
    ).repo_id
    huggingface_hub.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message="End of training",
        ignore_patterns=[f"{CHECKPOINT_PREFIX}*", f".{CHECKPOINT_PREFIX}*", f"{CHECKPOINT_PREFIX}*/**"],
        token=args.hub_token,
    )
    logger.info(f"Uploaded {output_dir} to https://huggingface.co/{repo_id}")
    return repo_id


def finish(
    accelerator: Accelerator, args: argparse.Namespace, output_dir: Path, write_card: Callable[[], Path]
) -> None:
    """Write the model card, push to the Hub if asked, and close the trackers (main process writes, all wait)."""
    if accelerator.is_main_process:
        write_card()
        if args.push_to_hub:
            push_to_hub(args, output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def write_pipeline_card(
    args: argparse.Namespace,
    output_dir: Path,
    *,
    title: str,
    method: str,
    objective: str,
    script: str,
    data: ImageBatchDataset,
    scheduler,
    num_inference_steps: int,
    result: TrainingResult,
    tags: Sequence[str] = (),
    ddpm_usage: str | None = None,
) -> Path:
    """The model card of a saved `ScoreGuidedPipeline` (`hub_cards/pipeline_card.md`)."""
    scheduler_class = type(scheduler).__name__
    score_output = scheduler.config.prediction_type == "score"
    return write_model_card(
        args,
        output_dir,
        template="pipeline_card.md",
        title=title,
        tags=["diffusers:ScoreGuidedPipeline", *tags],
        training_config=config_for_logging(args),
        method=method,
        objective=objective,
        script=script,
        dataset=data.description,
        num_examples=len(data),
        channels=data.num_channels,
        resolution=data.resolution,
        model_output="returns the score ∇ₓ log p_σ(x)" if score_output else "predicts the noise ε (score = −ε/σ_t)",
        scheduler_class=scheduler_class,
        scheduler_config_json=json.dumps(dict(scheduler.config), indent=2, default=str),
        num_inference_steps=num_inference_steps,
        steps_word="noise levels" if scheduler_class == "AnnealedLangevinScheduler" else "time steps",
        num_grid_images=args.num_grid_images,
        seed=args.seed,
        steps=result.global_step,
        processes=result.num_processes,
        images_per_second=f"{result.images_per_second:.0f}",
        ddpm_usage=ddpm_usage,
    )


# ---- the forward noise process, shared by every loss -------------------------------------------------------------------


@dataclass
class NoisyBatch:
    """x_t = α_t·x₀ + σ_t·noise at times `t`, with the model timesteps of the scheduler's convention."""

    sample: torch.Tensor
    noise: torch.Tensor
    sigma: torch.Tensor  # σ_t broadcastable against `sample`
    timestep: torch.Tensor  # shape (batch,), float32, what the model receives


def noisy_batch(scheduler, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> NoisyBatch:
    """Perturb `x0` at continuous times `t` (shape `(batch,)`) through `scheduler.sde`, noise from `generator`."""
    sde = scheduler.sde
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    shape = (-1, *([1] * (x0.ndim - 1)))
    alpha = sde.mean_coeff(t).to(x0.dtype).reshape(shape)
    sigma = sde.marginal_std(t).to(x0.dtype).reshape(shape)
    timestep = scheduler.timestep_for_time(t).to(device=x0.device, dtype=torch.float32)
    return NoisyBatch(sample=alpha * x0 + sigma * noise, noise=noise, sigma=sigma, timestep=timestep)


def uniform_times(batch_size: int, eps: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """t ~ U[eps, 1] of shape `(batch_size,)`."""
    return eps + (1 - eps) * torch.rand(batch_size, generator=generator, device=device)
