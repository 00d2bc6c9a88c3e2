"""The training data: images in [−1, 1] (and labels) from a Hub dataset, an image folder or the bundled digits, and
the batches of each process.

The order of the data is a function of (seed, epoch) only, so a run resumed from a checkpoint replays the batches
of the uninterrupted run. Bad data (no readable images, a missing split or column, fewer examples than a batch)
raise `ValueError` before training starts.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .unet import check_resolution

# The digits' own size; the default three-level U-Net sees 2×2 at its bottom.
DIGITS_DEFAULT_RESOLUTION = 8
# σ_max from the largest pairwise distance looks at this many images at most (O(n²) distances).
MAX_IMAGES_FOR_PAIRWISE_DISTANCE = 4096
# PIL modes read as 8-bit levels (as the pipelines read them); 16-bit and float images ("I;16", "I", "F") would be
# clipped to 255 by the conversion to "L", so they are refused rather than read wrong.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")
# Modes read as one channel.
_GRAYSCALE_MODES = ("1", "L")
# Images read at a time by `check_images` (their encoded bytes, not all of a large data set at once).
_CHECK_BATCH = 256
# Bad images named in the error, at most.
_MAX_NAMED = 5
# Errors PIL raises for a file that is not an image, is truncated or is corrupt.
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


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
        self.num_channels = 1 if first.mode in _GRAYSCALE_MODES else 3
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
        try:
            rows = self.dataset[list(indices)]
            images = [self._to_tensor(image) for image in rows[self.image_column]]
        except _IMAGE_ERRORS as error:
            # `check_images` decoded every image before training: this one has changed since.
            raise ValueError(
                f"{self.description}: an image of examples {list(indices)} cannot be read ({error})."
            ) from error
        batch = {"images": torch.stack(images)}
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
        try:
            loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir)
        except (OSError, ConnectionError, ValueError) as error:  # not found, offline and not cached, empty, no builder
            raise ValueError(f"--dataset_name {args.dataset_name!r} cannot be loaded ({type(error).__name__}: {error})."
                             ) from None
    else:
        source = f"image folder {args.train_data_dir}"
        try:
            loaded = datasets.load_dataset("imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir)
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"--train_data_dir {args.train_data_dir!r} holds no readable images ({error}).") from None
    chosen_split = "test" if split == "test" and "test" in loaded else "train"
    if chosen_split not in loaded:
        raise ValueError(f"{source} has no 'train' split; it has {list(loaded)}.")
    dataset = loaded[chosen_split]
    if args.image_column not in dataset.column_names:
        raise ValueError(
            f"{source} has no column {args.image_column!r} (--image_column); it has {dataset.column_names}."
        )
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{source} has no examples in its {chosen_split!r} split.")
    check_images(dataset, args.image_column, source)
    return HFImageDataset(dataset, args, f"{source} ({chosen_split} split)")


def check_images(dataset, column: str, source: str) -> None:
    """Raise a `ValueError` naming the first bad images of `dataset[column]`: files that are not images, truncated
    or corrupt ones, and images that are not 8-bit (`EIGHT_BIT_MODES`). Every image is decoded once in full before
    any training, as a batch will decode it (PIL's `verify` alone passes a truncated JPEG: it reads no pixels)."""
    import datasets

    undecoded = dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    unreadable, not_eight_bit = [], []
    items = (item for batch in undecoded.iter(batch_size=_CHECK_BATCH) for item in batch[column])
    for index, item in enumerate(items):
        name = item.get("path") or f"example {index}"
        try:
            with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as image:
                mode = image.mode
                image.load()
        except _IMAGE_ERRORS as error:
            unreadable.append(f"{name} ({type(error).__name__}: {error})")
            continue
        if mode not in EIGHT_BIT_MODES:
            not_eight_bit.append(f"{name} (mode {mode!r})")
    problems = []
    if unreadable:
        problems.append(f"{len(unreadable)} cannot be read as images: {'; '.join(unreadable[:_MAX_NAMED])}")
    if not_eight_bit:
        problems.append(
            f"{len(not_eight_bit)} are not 8-bit images (modes {', '.join(EIGHT_BIT_MODES)}): "
            f"{'; '.join(not_eight_bit[:_MAX_NAMED])}; convert them to 8 bits"
        )
    if problems:
        raise ValueError(f"{source}: of {len(dataset)} images, " + ", and ".join(problems) + ".")


def prepare_training_data(args: argparse.Namespace, block_out_channels: Sequence[int] | None) -> ImageBatchDataset:
    """`load_image_data` (with `--max_train_samples` applied to the digits too), checked against the resolution
    of a U-Net with `block_out_channels` levels."""
    data = load_image_data(args)
    if args.max_train_samples is not None and isinstance(data, TensorImageDataset):
        keep = slice(0, args.max_train_samples)
        data = TensorImageDataset(
            data.images[keep], None if data.labels is None else data.labels[keep], data.description
        )
    if block_out_channels:
        check_resolution(data.resolution, block_out_channels)
    return data


def check_batch_size(num_samples: int, batch_size: int, num_processes: int) -> None:
    """Raise a `ValueError` unless the data fill at least one global batch of `batch_size · num_processes`."""
    if num_samples < batch_size * num_processes:
        raise ValueError(
            f"the data has {num_samples} examples, fewer than one global batch "
            f"({batch_size} per process × {num_processes} processes); lower --train_batch_size."
        )


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
        check_batch_size(num_samples, batch_size, num_processes)
        self.batches_per_epoch = num_samples // (batch_size * num_processes)

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
