"""The `score-diffusers` command: sample images, compute likelihoods, convert DDPM checkpoints, inpaint and edit.

    score-diffusers sample PIPELINE [--scheduler NAME] [--steps N] [--num_images N] [--output_dir DIR] [--npz PATH] ...
    score-diffusers sample PIPELINE --adaptive [RTOL] ...        (the adaptive-step reverse-SDE solver)
    score-diffusers likelihood IMAGE_FOLDER --pipeline PIPELINE [--divergence exact|hutchinson] [--csv PATH] ...
    score-diffusers convert DDPM_FOLDER OUTPUT_FOLDER [--scheduler NAME] [--overwrite]
    score-diffusers inpaint PIPELINE IMAGE ... --mask MASK [--method smc|replacement|guidance] --output_dir DIR ...
    score-diffusers edit PIPELINE IMAGE ... [--strength S] --output_dir DIR ...

PIPELINE is a local `ScoreGuidedPipeline` or stock `DDPMPipeline` folder, or a Hub id (`owner/name`). Every
`--scheduler` name maps to one score scheduler built with `X.from_config(<the pipeline's scheduler config>,
**overrides)` (the registry `score_diffusers.schedulers.SCHEDULERS`). Bad input (a missing folder, an unknown
scheduler, a folder that is not a pipeline, options the pipeline refuses, an output path that cannot be written,
checked before any sampling) ends with exit status 2 and a one-line message on stderr; a failure while running
(`SamplingError`: NaN mid-sampling, a solve that does not converge) with exit status 1 and what happened.

`sample` and `likelihood` split their batches across the processes of `accelerate launch` or `torchrun` (see
`score_diffusers.distributed`): the outputs do not depend on the number of processes.

`main(argv)` runs in-process and returns the exit status; `python -m score_diffusers` runs it too.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging as diffusers_logging

from .checks import SamplingError
from .distributed import Processes, batches
from .export import export_code
from .files import remove_path, written_atomically
from .image_grid import GRID_MIN_WIDTH, image_grid
from .likelihood import DIVERGENCES, LOG_SIGMA_METHODS, METHODS, PROBES
from .models import NoiseConditionalClassifier
from .pipelines import ScoreGuidedPipeline, ScoreImg2ImgPipeline, ScoreInpaintPipeline
from .pipelines.pipeline_score_inverse import DEFAULT_NUM_PARTICLES, INVERSE_METHODS
from .sampling.adaptive import DEFAULT_RTOL
from .schedulers import DEFAULT_SCHEDULERS, SCHEDULERS

PROG = "score-diffusers"
EXIT_OK = 0
# A failure while running (SamplingError), not bad input.
EXIT_FAILURE = 1
# argparse's own status for usage errors; every bad-input error of this command uses it too.
EXIT_USAGE = 2
KEEP = "keep"
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# PIL mode that gives an image the unet's number of channels.
PIL_MODES: dict[int, str] = {1: "L", 3: "RGB"}
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
# What is not an existing path is tried on the Hub only when it reads like a repository id, "owner/name".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CLIError(Exception):
    """Bad input, reported as `score-diffusers: error: <message>` with exit status 2."""


# ---- the scheduler names --------------------------------------------------------------------------------------------

# `--scheduler` names: the registry's, plus KEEP for the pipeline's own scheduler.
SCHEDULER_CHOICES: tuple[str, ...] = (KEEP, *SCHEDULERS)


def scheduler_help() -> str:
    """The `--help` epilog that lists every scheduler name with its summary (an alias as "same as <name>")."""
    width = max(map(len, SCHEDULER_CHOICES))
    first_names: dict[int, str] = {}
    defaults = ", ".join(f"{sde.upper()} models get {name}" for sde, name in DEFAULT_SCHEDULERS.items())
    lines = [
        "schedulers (--scheduler NAME):",
        f"  {KEEP:<{width}}  the pipeline's own; a Diffusers scheduler is swapped ({defaults})",
    ]
    for name, recipe in SCHEDULERS.items():
        if id(recipe) in first_names:
            summary = f"same as {first_names[id(recipe)]}"
        else:
            summary = recipe.summary
            first_names[id(recipe)] = name
        lines.append(f"  {name:<{width}}  {summary}")
    return "\n".join(lines)


# ---- loading ---------------------------------------------------------------------------------------------------------


def _existing_folder(path: str, what: str) -> Path:
    """`path` as a `Path` if it is a folder; a `CLIError` naming `what` otherwise."""
    folder = Path(path)
    if not folder.exists():
        raise CLIError(f"no such {what}: {path}")
    if not folder.is_dir():
        raise CLIError(f"{path} is not a folder (expected a {what})")
    return folder


def _model_source(path: str, what: str, marker: str) -> str:
    """`path` if it is a local folder holding `marker` or reads like a Hub id; a `CLIError` otherwise."""
    if not Path(path).exists() and _HUB_ID.match(path):
        return path
    folder = _existing_folder(path, what)
    if not (folder / marker).is_file():
        raise CLIError(f"{path} is not a {what}: it has no {marker}")
    return path


def load_classifier(path: str) -> torch.nn.Module:
    """A `NoiseConditionalClassifier` folder or a `transformers` image-classification model (local or Hub)."""
    source = _model_source(path, "classifier folder", "config.json")
    config = NoiseConditionalClassifier.load_config(source)
    if config.get("_class_name") == NoiseConditionalClassifier.__name__:
        return NoiseConditionalClassifier.from_pretrained(source).eval()
    # transformers is imported only where a transformers model is loaded.
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(source).eval()


@contextmanager
def _loading_progress_bar(enabled: bool) -> Iterator[None]:
    """Show or hide Diffusers' "Loading pipeline components" bar (a global switch) for the duration."""
    was_enabled = diffusers_logging.is_progress_bar_enabled()
    (diffusers_logging.enable_progress_bar if enabled else diffusers_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (diffusers_logging.enable_progress_bar if was_enabled else diffusers_logging.disable_progress_bar)()


def load_pipeline(
    path: str,
    scheduler_name: str = KEEP,
    classifier: str | None = None,
    device: str | None = None,
    show_progress: bool = True,
    pipeline_class: type[ScoreGuidedPipeline] = ScoreGuidedPipeline,
) -> ScoreGuidedPipeline:
    """A `pipeline_class` (`ScoreGuidedPipeline` or one of its subclasses) from a local pipeline folder or a Hub id,
    with the scheduler `scheduler_name` of `SCHEDULERS`, an optional classifier folder, on `device` (CUDA when
    available by default)."""
    if scheduler_name not in SCHEDULER_CHOICES:
        raise CLIError(f"unknown scheduler {scheduler_name!r}; choose one of {', '.join(SCHEDULER_CHOICES)}")
    target_device = _device(device)
    source = _model_source(path, "pipeline folder", "model_index.json")
    components: dict[str, Any] = {}
    if classifier is not None:
        components["classifier"] = load_classifier(classifier)
    try:
        if scheduler_name != KEEP:
            # `load_config` reads any scheduler's JSON (DDPMScheduler, ScoreSdeVeScheduler or ours); it checks no class.
            recipe = SCHEDULERS[scheduler_name]
            config = recipe.scheduler_class.load_config(source, subfolder="scheduler")
            components["scheduler"] = recipe.build(config)
        with _loading_progress_bar(show_progress):
            pipe = pipeline_class.from_pretrained(source, **components)
    except OSError as error:
        hub = "" if Path(path).exists() else " (not a local folder, so it was looked up on the Hub)"
        raise CLIError(f"could not load the pipeline {path}{hub}: {_one_line(error)}") from error
    pipe.set_progress_bar_config(disable=not show_progress)
    return pipe.to(target_device)


def _device(name: str | None) -> torch.device:
    """The torch device called `name`; CUDA when available and `name` is `None`, else CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CLIError(f"unknown device {name!r}: {_one_line(error)}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"device {name!r} asked for, but CUDA is not available")
    return device


def _resolution(unet_config: Any) -> tuple[int, int]:
    """(height, width) of the unet's samples."""
    size = unet_config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)


def image_files(folder: str) -> list[Path]:
    """The image files directly inside `folder`, sorted by name; a `CLIError` if there are none."""
    files = sorted(p for p in _existing_folder(folder, "image folder").iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CLIError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def load_images(
    files: Sequence[Path], channels: int, resolution: tuple[int, int], resize: bool, mode: str | None = None,
    resample: PIL.Image.Resampling = PIL.Image.Resampling.LANCZOS,
) -> list[PIL.Image.Image]:
    """Read `files` with PIL in the mode of `channels` (or `mode`); a size other than `resolution` (height, width)
    is an error unless `resize`, which resizes with `resample` (Lanczos by default)."""
    if mode is None and channels not in PIL_MODES:
        raise CLIError(f"the unet takes {channels} channels; images can be read as 1 (grey) or 3 (RGB) channels only")
    mode = mode or PIL_MODES[channels]
    height, width = resolution
    images = []
    for path in files:
        if not path.is_file():
            raise CLIError(f"no image file {path}")
        try:
            with PIL.Image.open(path) as opened:
                image = opened.convert(mode)
        except OSError as error:
            raise CLIError(f"cannot read the image {path}: {_one_line(error)}") from error
        if image.size != (width, height):
            if not resize:
                raise CLIError(
                    f"{path.name} is {image.width}x{image.height} but the unet takes {width}x{height} images; "
                    "pass --resize to resize them"
                )
            image = image.resize((width, height), resample)
        images.append(image)
    return images


# ---- writing ---------------------------------------------------------------------------------------------------------

# Linux `renameat2` arguments (<fcntl.h>, <linux/fs.h>): paths relative to the working folder, swap the two paths.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# What `renameat2` sets where the kernel, libc or filesystem has no atomic exchange: then the two-rename fallback runs.
_NO_EXCHANGE_ERRNOS = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})


def writable_folder(path: str | Path, what: str) -> Path:
    """`path` as a folder this process can write into, created with its parents if missing; a `CLIError` naming
    `what` otherwise. Commands call it before any sampling, so an unwritable output never throws the work away."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"cannot write {what} {path}: it exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A file created and deleted at once: the one test of writing that holds for every user and filesystem.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise CLIError(f"cannot write {what} {path}: {_one_line(error)}") from error
    return folder


def writable_image_path(path: str | Path, what: str) -> Path:
    """`path` as an image file PIL can write (its suffix names a format PIL saves) in a writable folder, checked
    before any sampling; a `CLIError` naming `what` otherwise."""
    file = Path(path)
    if file.is_dir():
        raise CLIError(f"cannot write {what} {path}: it is a folder")
    PIL.Image.init()
    image_format = PIL.Image.registered_extensions().get(file.suffix.lower())
    if image_format not in PIL.Image.SAVE:
        raise CLIError(f"cannot write {what} {path}: its suffix names no image format PIL writes (e.g. .png)")
    writable_folder(file.parent, f"the folder of {what}")
    return file


def _staging_prefix(output: Path) -> str:
    """The start of the names of the staging folders `save_atomically` writes beside `output`."""
    return f".{output.name}.partial-"


def _backup(output: Path) -> Path:
    """Where `save_atomically` moves the old `output` aside when the filesystem cannot swap two folders at once."""
    return output.with_name(f".{output.name}.backup")


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(..., RENAME_EXCHANGE)`); False, with nothing
    changed, where the system or the filesystem has no such step."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE_ERRNOS:
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def recover_interrupted_save(output: Path) -> list[str]:
    """Put right what a killed `save_atomically` into `output` left beside it; returns one line per thing done.

    A backup with no `output` is the old `output`, moved aside just before the kill: it is renamed back. A backup
    beside `output` is the old folder a finished replacement was deleting, and staging folders are saves that never
    became `output` (or, after an exchange, the old folder being deleted): they are deleted. Two commands saving into
    the same `output` at once are not supported: one may delete the other's staging folder, which then fails.
    """
    done = []
    backup = _backup(output)
    if backup.is_dir():
        if not output.exists() and not output.is_symlink():
            backup.rename(output)
            done.append(f"restored {output} from {backup.name}, left by a save that was killed while replacing it")
        else:
            remove_path(backup)
            done.append(f"deleted {backup.name}, the old {output.name} that a killed save had already replaced")
    if output.parent.is_dir():
        for leftover in sorted(output.parent.iterdir()):
            if leftover.name.startswith(_staging_prefix(output)) and leftover.is_dir():
                shutil.rmtree(leftover)
                done.append(f"deleted {leftover.name}, left beside {output.name} by a killed save")
    return done


def save_atomically(pipe: ScoreGuidedPipeline, output: Path, with_code: bool = False) -> None:
    """`pipe.save_pretrained` (and, `with_code`, `export_code`) into a staging folder beside `output`, then put in its
    place: a failed save leaves an existing `output` as it was.

    An existing `output` is replaced in one atomic exchange where the filesystem has one (Linux, on ext4, XFS, Btrfs,
    tmpfs and most others): at every instant `output` is the whole old folder or the whole new one, and a kill leaves
    at most a hidden staging folder beside it. Elsewhere the old `output` is renamed to a backup first and the staging
    folder to `output` next; a kill between the two leaves no `output` but the whole old folder as `.NAME.backup`.
    `recover_interrupted_save` (which `convert` runs first) puts either right. Nothing is flushed to disk (no fsync):
    a power cut, unlike a kill, may still lose the new folder's files.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name rather than `tempfile.mkdtemp`, whose folders are private (0700) and would stay so.
    staging = output.parent / f"{_staging_prefix(output)}{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        pipe.save_pretrained(staging)
        if with_code:
            export_code(staging)
        if not output.exists():
            staging.rename(output)
            return
        if _exchange(staging, output):
            # `output` is the new folder; `staging` now holds the old one.
            remove_path(staging)
            return
        backup = _backup(output)
        output.rename(backup)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        staging.rename(output)
    except BaseException:
        backup.rename(output)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    remove_path(backup)


# ---- the subcommands -------------------------------------------------------------------------------------------------


def _per_image_generators(seed: int, indices: int | Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, image i seeded with `seed + i` (for i in `indices`, or in range(`indices`)), so
    each image is reproducible on its own."""
    indices = range(indices) if isinstance(indices, int) else indices
    return [torch.Generator().manual_seed(seed + index) for index in indices]


def _write_images(images: list[PIL.Image.Image], names: Sequence[str], output_dir: Path | None,
                  grid_path: Path | None, grid_columns: int | None) -> None:
    """One PNG per image in `output_dir` (named `names`) and/or a grid at `grid_path`."""
    if output_dir is not None:
        for name, image in zip(names, images):
            image.save(output_dir / name)
        print(f"Wrote {len(images)} images to {output_dir}")
    if grid_path is not None:
        image_grid(images, grid_columns).save(grid_path)
        print(f"Wrote {grid_path}")


def _checked_outputs(args: argparse.Namespace, npz: str | None = None) -> tuple[Path | None, Path | None]:
    """`--output_dir` and `--grid`, checked (and the folder created) before any sampling, so an unwritable path
    never throws the samples away; `npz` is `sample`'s `--npz`, the one other output there is."""
    if args.grid is None and args.output_dir is None and npz is None:
        raise CLIError("nothing to write: pass --output_dir DIR, --grid PATH and/or (sample) --npz PATH")
    output_dir = None if args.output_dir is None else writable_folder(args.output_dir, "--output_dir")
    grid_path = None if args.grid is None else writable_image_path(args.grid, "--grid")
    return output_dir, grid_path


# ---- sample: many images, resumable, split across processes ----------------------------------------------------------

# The settings that decide `sample`'s images, recorded in `--output_dir` so that a rerun (resume) refuses to mix the
# images of two runs. `--num_images` may grow; the processes and the outputs (grid, npz) may change.
SAMPLE_RECORD_NAME = ".score-diffusers-sample.json"
SAMPLE_RECORD_KEYS = ("pipeline", "scheduler", "steps", "adaptive", "batch_size", "seed", "class_labels",
                      "guidance_scale", "classifier")


def _check_sample_record(args: argparse.Namespace, output_dir: Path, is_main: bool) -> None:
    """Refuse a rerun into `output_dir` with other image-deciding settings than the run that wrote it (a
    `CLIError` naming them); the main process records the settings of a new run."""
    record = {key: getattr(args, key) for key in SAMPLE_RECORD_KEYS}
    for key in ("pipeline", "classifier"):  # a local folder by where it is, however it is spelled
        if record[key] is not None and Path(record[key]).exists():
            record[key] = str(Path(record[key]).resolve())
    path = output_dir / SAMPLE_RECORD_NAME
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise CLIError(f"cannot read {path} (the record of the run that wrote {output_dir}): {error}") from error
        changed = [f"--{key} {saved.get(key)!r} then, {record[key]!r} now" for key in SAMPLE_RECORD_KEYS
                   if saved.get(key) != record[key]]
        if changed:
            raise CLIError(f"{output_dir} holds the images of a run with other settings ({'; '.join(changed)}); "
                           "resuming would mix the two: use another --output_dir, or remove it")
    elif is_main:
        with written_atomically(path) as partial:
            partial.write_text(json.dumps(record, indent=1))


@dataclass
class _SampleShare:
    """What one process of `sample` sampled, for the main process: the images it holds in memory (without
    `--output_dir`), the model evaluations of each image (`--adaptive`) and of its schedule (None if it sampled
    nothing)."""

    num_sampled: int
    images: dict[int, PIL.Image.Image]
    evaluations: list[int]
    schedule_evaluations: int | None


def _sample_name(index: int) -> str:
    """The file name of image `index` in `sample --output_dir`."""
    return f"{index:04d}.png"


def _is_readable_image(path: Path) -> bool:
    """Whether `path` is an image file that PIL reads to its end (a truncated or corrupt file is not)."""
    try:
        with PIL.Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):  # PIL's errors for missing, truncated and malformed files
        return False
    return True


def _writable_file(path: str | Path, what: str, suffix: str) -> Path:
    """`path` as a file named `*suffix` in a writable folder, checked before any work; a `CLIError` naming `what`
    otherwise."""
    file = Path(path)
    if file.is_dir():
        raise CLIError(f"cannot write {what} {path}: it is a folder")
    if file.suffix != suffix:
        raise CLIError(f"cannot write {what} {path}: its name must end in {suffix}")
    writable_folder(file.parent, f"the folder of {what}")
    return file


def _save_png_atomically(image: PIL.Image.Image, path: Path) -> None:
    with written_atomically(path) as partial:
        image.save(partial, format="PNG")


def _save_npz_atomically(images: Sequence[PIL.Image.Image], path: Path) -> None:
    """`images` as one uint8 array `arr_0` of shape (N, H, W, C), as guided-diffusion's reference batches hold them
    (C = 1 for grey images)."""
    arrays = [np.asarray(image, dtype=np.uint8) for image in images]
    with written_atomically(path) as partial, open(partial, "wb") as file:
        np.savez(file, arr_0=np.stack([array[..., None] if array.ndim == 2 else array for array in arrays]))


def _save_csv_atomically(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """`rows` under `header` as a CSV file, floats with all their digits (`repr`)."""
    with written_atomically(path) as partial, open(partial, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows([[repr(value) if isinstance(value, float) else value for value in row] for row in rows])


def _class_labels_for(labels: list[int] | None, indices: range, num_images: int) -> list[int] | None:
    """The `--class_labels` of the images `indices`: the one label for all, or their own of the `num_images`."""
    if labels is None or len(labels) == 1:
        return labels
    if len(labels) != num_images:
        raise CLIError(f"--class_labels has {len(labels)} labels; give one for all images or one per image "
                       f"({num_images})")
    return [labels[index] for index in indices]


def run_sample(args: argparse.Namespace) -> int:
    """`score-diffusers sample`: generate `--num_images` images in batches, split across the launched processes,
    and write them as PNGs, a grid and/or an `.npz`.

    Batch k (images k·B .. k·B + B − 1, B = `--batch_size`) runs on process k mod W; image i starts from the
    generator seeded `seed + i`, so the images do not depend on the number of processes W. With `--output_dir`,
    a batch whose PNGs are all there (and readable) is skipped: a killed run resumes where it stopped. The main
    process writes the grid and the `.npz` once every process is done.
    """
    processes = Processes.from_environment()
    num_images = args.num_images or args.batch_size
    output_dir, grid_path = _checked_outputs(args, args.npz)
    npz_path = None if args.npz is None else _writable_file(args.npz, "--npz", ".npz")
    _class_labels_for(args.class_labels, range(0), num_images)  # checked before any loading
    if args.adaptive is not None and args.scheduler != KEEP:
        raise CLIError("--adaptive chooses its own steps and takes no --scheduler (it uses only the model's "
                       "conventions); give one or the other")
    if output_dir is not None:
        _check_sample_record(args, output_dir, processes.is_main)
    device = args.device or str(processes.default_device())
    pipe = load_pipeline(args.pipeline, args.scheduler, args.classifier, device,
                         show_progress=not args.quiet and processes.is_main)

    def done(index: int) -> bool:
        return output_dir is not None and _is_readable_image(output_dir / _sample_name(index))

    sampled: dict[int, PIL.Image.Image] = {}
    num_sampled = 0
    evaluations: list[int] = []  # per image sampled, with --adaptive
    processes.join()
    for indices in processes.share(batches(num_images, args.batch_size)):
        missing = [index for index in indices if not done(index)]
        if not missing:
            continue
        # The whole batch, also where some of its PNGs are there: the same batch gives the same images.
        options = {
            "batch_size": len(indices),
            "generator": _per_image_generators(args.seed, indices),
            "class_labels": _class_labels_for(args.class_labels, indices, num_images),
            "guidance_scale": args.guidance_scale,
        }
        if args.adaptive is None:
            images = pipe(num_inference_steps=args.steps, **options).images
        else:
            output = pipe.sample_adaptive(rtol=args.adaptive, **options)
            images = output.images
            evaluations += [int(count) for index, count in zip(indices, output.nfe) if index in missing]
        num_sampled += len(missing)
        for index, image in zip(indices, images):
            if output_dir is None:
                sampled[index] = image
            elif index in missing:
                _save_png_atomically(image, output_dir / _sample_name(index))
    # With --output_dir the images stay on disk and the main process reads them back; without it they travel.
    schedule_evaluations = None if num_sampled == 0 or args.adaptive is not None else len(pipe.scheduler.timesteps)
    gathered = processes.gather(_SampleShare(num_sampled, sampled, evaluations, schedule_evaluations))
    if gathered is None:
        return EXIT_OK
    num_sampled = sum(share.num_sampled for share in gathered)
    on = f" on {processes.world_size} processes" if processes.world_size > 1 else ""
    kept = f" ({num_images - num_sampled} already in {output_dir})" if num_sampled < num_images else ""
    if args.adaptive is None:
        how = f"{type(pipe.scheduler).__name__}{on}: {args.steps} steps"
        evaluated = [share.schedule_evaluations for share in gathered if share.schedule_evaluations is not None]
        if evaluated:
            how += f", {evaluated[0]} model evaluations"
    else:
        counts = [count for share in gathered for count in share.evaluations]
        how = f"the adaptive reverse-SDE solver at rtol {args.adaptive:g}{on}"
        if counts:
            how += f": {sum(counts) / len(counts):.1f} model evaluations per image on average, at most {max(counts)}"
    print(f"Sampled {num_sampled} images{kept} with {how}.")
    if output_dir is not None:
        print(f"Wrote {num_sampled} images to {output_dir}")
    if grid_path is None and npz_path is None:
        return EXIT_OK
    if output_dir is None:
        for share in gathered:
            sampled.update(share.images)
        images = [sampled[index] for index in range(num_images)]
    else:
        images = load_images([output_dir / _sample_name(index) for index in range(num_images)],
                             pipe.unet.config.in_channels, _resolution(pipe.unet.config), resize=False)
    if grid_path is not None:
        image_grid(images, args.grid_columns).save(grid_path)
        print(f"Wrote {grid_path}")
    if npz_path is not None:
        _save_npz_atomically(images, npz_path)
        print(f"Wrote {npz_path} ({num_images} images, uint8, NHWC)")
    return EXIT_OK


def run_likelihood(args: argparse.Namespace) -> int:
    """`score-diffusers likelihood`: bits/dim of every image of a folder, and their mean.

    The images (sorted by name) are solved in chunks of `--batch_size`; chunk k runs on process k mod W, and
    image i draws its dequantisation noise and probes from the generator seeded `seed + i`. An adaptive solver
    takes one step size per chunk, so an image's bits/dim depends on the images it shares its chunk with (within
    the tolerances), but not on W: the chunks are the same with any number of processes. The processes solve
    independently (different numbers of steps are fine) and the main process gathers the rows and prints them.
    """
    processes = Processes.from_environment()
    files = image_files(args.image_folder)
    csv_path = None if args.csv is None else _writable_file(args.csv, "--csv", ".csv")
    device = args.device or str(processes.default_device())
    pipe = load_pipeline(args.pipeline, KEEP, device=device, show_progress=not args.quiet and processes.is_main)
    mine = [index for chunk in processes.share(batches(len(files), args.batch_size)) for index in chunk]
    rows: dict[int, tuple[float, float, float]] = {}  # bits/dim, its stderr, the error estimate
    nfe = 0
    processes.join()
    if mine:
        images = load_images([files[index] for index in mine], pipe.unet.config.in_channels,
                             _resolution(pipe.unet.config), args.resize)
        # This process's chunks back to back: the solve's own chunks of --batch_size are exactly them, since
        # only the last chunk of all may be shorter.
        result = pipe.log_likelihood(
            images,
            dequantize=args.dequantize,
            divergence=args.divergence,
            probe=args.probe,
            num_probes=args.num_probes,
            rtol=args.rtol,
            atol=args.atol,
            method=args.method,
            num_steps=args.num_steps,
            dtype=DTYPES[args.dtype],
            batch_size=args.batch_size,
            generator=_per_image_generators(args.seed, mine),
            show_progress=not args.quiet and processes.is_main,
        )
        bits_per_dim = result.bits_per_dim.double().cpu()
        # The Hutchinson standard error and the solver's error estimate (NaN but for ab4), from nats to bits/dim.
        nats_to_bpd = 1 / (result.latent[0].numel() * math.log(2))
        stderr = result.log_likelihood_stderr.double().cpu() * nats_to_bpd
        error_estimate = result.error_estimate.double().cpu() * nats_to_bpd
        rows = dict(zip(mine, zip(bits_per_dim.tolist(), stderr.tolist(), error_estimate.tolist())))
        nfe = result.nfe
    gathered = processes.gather((rows, nfe))
    if gathered is None:
        return EXIT_OK
    for part, _ in gathered:
        rows.update(part)
    with_stderr = args.divergence == "hutchinson" and args.num_probes > 1
    width = max(len("file"), len("mean"), *(len(path.name) for path in files))
    print(f"{'file':<{width}}  {'bits/dim':>10}" + (f"  {'± stderr':>10}" if with_stderr else ""))
    for index, path in enumerate(files):
        bpd, error, _ = rows[index]
        print(f"{path.name:<{width}}  {bpd:>10.4f}" + (f"  {error:>10.4f}" if with_stderr else ""))
    print(f"{'mean':<{width}}  {math.fsum(row[0] for row in rows.values()) / len(files):>10.4f}")
    if args.method in LOG_SIGMA_METHODS:
        print(f"Largest solver error estimate: {max(row[2] for row in rows.values()):.2g} bits/dim (the summed local "
              "error estimates: an order of magnitude, not a bound).")
    if csv_path is not None:
        _save_csv_atomically(csv_path, ["file", "bits_per_dim", "stderr", "error_estimate"],
                             [[path.name, *rows[index]] for index, path in enumerate(files)])
        print(f"Wrote {csv_path}")
    per_process = [count for _, count in gathered]
    split = f" (per process: {', '.join(map(str, per_process))})" if processes.world_size > 1 else ""
    print(f"{len(files)} images, {sum(per_process)} evaluations of the probability-flow ODE{split} "
          f"({args.divergence} divergence).")
    return EXIT_OK


def _input_images(args: argparse.Namespace, pipe: ScoreGuidedPipeline) -> tuple[list[Path], list[PIL.Image.Image]]:
    files = [Path(name) for name in args.images]
    images = load_images(files, pipe.unet.config.in_channels, _resolution(pipe.unet.config), args.resize)
    return files, images


def run_inpaint(args: argparse.Namespace) -> int:
    """`score-diffusers inpaint`: fill the white pixels of `--mask` in every image."""
    output_dir, grid_path = _checked_outputs(args)
    pipe = load_pipeline(args.pipeline, args.scheduler, args.classifier, args.device, show_progress=not args.quiet,
                         pipeline_class=ScoreInpaintPipeline)
    files, images = _input_images(args, pipe)
    (mask,) = load_images([Path(args.mask)], 1, _resolution(pipe.unet.config), args.resize, mode="L",
                          resample=PIL.Image.Resampling.NEAREST)
    result = pipe(
        images, mask, method=args.method, num_inference_steps=args.steps, num_particles=args.particles,
        generator=_per_image_generators(args.seed, len(images)), class_labels=args.class_labels,
        guidance_scale=args.guidance_scale,
    )
    print(f"Inpainted {len(images)} images ({args.method}): {result.nfe} model evaluations per image.")
    _write_images(result.images, [f"{path.stem}.png" for path in files], output_dir, grid_path, args.grid_columns)
    return EXIT_OK


def run_edit(args: argparse.Namespace) -> int:
    """`score-diffusers edit`: SDEdit every image at `--strength`."""
    output_dir, grid_path = _checked_outputs(args)
    pipe = load_pipeline(args.pipeline, args.scheduler, args.classifier, args.device, show_progress=not args.quiet,
                         pipeline_class=ScoreImg2ImgPipeline)
    files, images = _input_images(args, pipe)
    edited = pipe(
        images, strength=args.strength, num_inference_steps=args.steps,
        generator=_per_image_generators(args.seed, len(images)), class_labels=args.class_labels,
        guidance_scale=args.guidance_scale,
    ).images
    print(f"Edited {len(images)} images at strength {args.strength:g} with {type(pipe.scheduler).__name__}.")
    _write_images(edited, [f"{path.stem}.png" for path in files], output_dir, grid_path, args.grid_columns)
    return EXIT_OK


def _check_convert_paths(source: str, output: str) -> None:
    """Refuse, before anything is written, an OUTPUT_FOLDER whose replacement would delete what it must not: the
    source checkpoint (OUTPUT_FOLDER is DDPM_FOLDER, holds it or lies inside it), the working folder or a root."""
    target = Path(output).resolve()
    if target.parent == target:
        raise CLIError(f"OUTPUT_FOLDER {output} is a filesystem root; name a folder to write the pipeline into")
    working = Path.cwd().resolve()
    if target == working or target in working.parents:
        raise CLIError(
            f"OUTPUT_FOLDER {output} is the current folder or holds it, which cannot be replaced; name a new folder"
        )
    # A Hub id is no local path and cannot overlap one.
    if not Path(source).exists():
        return
    checkpoint = Path(source).resolve()
    if target == checkpoint:
        raise CLIError(f"OUTPUT_FOLDER {output} is DDPM_FOLDER {source}; write the conversion to another folder")
    if target in checkpoint.parents:
        raise CLIError(
            f"OUTPUT_FOLDER {output} holds DDPM_FOLDER {source}: replacing it would delete the checkpoint; "
            "write the conversion to another folder"
        )
    if checkpoint in target.parents:
        raise CLIError(f"OUTPUT_FOLDER {output} is inside DDPM_FOLDER {source}; write the conversion elsewhere")


def run_convert(args: argparse.Namespace) -> int:
    """`score-diffusers convert`: a stock DDPM folder → a `ScoreGuidedPipeline` folder with a score scheduler."""
    # Normalised (".." and "." folded) but with links kept: replacing a link to a folder replaces the link.
    output = Path(os.path.abspath(args.output_folder))
    _check_convert_paths(args.ddpm_folder, args.output_folder)
    for line in recover_interrupted_save(output):
        print(f"{PROG}: note: {line}", file=sys.stderr)
    if output.exists() and not output.is_dir():
        raise CLIError(f"{output} exists and is not a folder")
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise CLIError(f"{output} already exists and is not empty; pass --overwrite to replace it")
    writable_folder(output.parent, "the folder of OUTPUT_FOLDER")
    pipe = load_pipeline(args.ddpm_folder, args.scheduler, device="cpu")
    save_atomically(pipe, output, with_code=args.with_code)
    convention = pipe.scheduler.convention
    print(
        f"Saved a ScoreGuidedPipeline with {type(pipe.scheduler).__name__} (sde_type={convention.sde_type}, "
        f"prediction_type={convention.prediction_type}, timestep_type={convention.timestep_type}) to {output}"
    )
    return EXIT_OK


# ---- the parser ------------------------------------------------------------------------------------------------------


def run_export_code(args: argparse.Namespace) -> int:
    """`export-code`: write a saved pipeline's code for stock Diffusers into its folder."""
    folder = _existing_folder(args.pipeline_folder, "pipeline folder")
    exported = export_code(folder)  # ExportError is a ValueError: exit status 2
    print(f"Wrote {', '.join(str(p.relative_to(folder)) for p in exported.files)}; load with "
          f'DiffusionPipeline.from_pretrained("{folder}", custom_pipeline="{exported.custom_pipeline}", '
          "trust_remote_code=True)")
    return EXIT_OK


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs, and shows the default of every option that has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors raise `CLIError` (one line, exit status 2) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _add_common_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """`--seed`, `--device` and `--quiet`, which `sample` and `likelihood` share."""
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--device", default=None,
                        help="torch device; CUDA when available (device LOCAL_RANK under several processes), else CPU")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_guidance_and_output_arguments(parser: argparse.ArgumentParser, output_dir_help: str) -> None:
    """Classifier guidance (`--class_labels`, `--guidance_scale`, `--classifier`), the outputs (`--output_dir`,
    `--grid`, `--grid_columns`) and the common arguments, which the image-writing subcommands share."""
    parser.add_argument("--class_labels", type=int, nargs="+", default=None, metavar="LABEL",
                        help="one class for every image or one per image (guidance or a class-conditional unet)")
    parser.add_argument("--guidance_scale", type=float, default=0.0, help="classifier-guidance weight w >= 0")
    parser.add_argument("--classifier", default=None, metavar="FOLDER",
                        help="NoiseConditionalClassifier or transformers image-classifier folder (or Hub id)")
    parser.add_argument("--grid", default=None, metavar="PATH",
                        help=f"write all images as one PNG grid here (upscaled to at least {GRID_MIN_WIDTH} px wide)")
    parser.add_argument("--grid_columns", type=_positive_int, default=None, help="grid width (default: near-square)")
    parser.add_argument("--output_dir", default=None, metavar="DIR", help=output_dir_help)
    _add_common_arguments(parser, "image i uses seed + i")


def _add_scheduler_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """`--scheduler NAME`, one of `SCHEDULERS` (default: keep the pipeline's own)."""
    parser.add_argument("--scheduler", default=KEEP, choices=SCHEDULER_CHOICES, metavar="NAME", help=help_text)


def _add_subcommand(
    subcommands: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], summary: str,
    description: str, epilog: str | None = None,
) -> argparse.ArgumentParser:
    """Register the subcommand `name`, which runs `run(args)`; its help opens with `summary`."""
    parser = subcommands.add_parser(
        name, help=summary, description=f"{summary}\n\n{description}", epilog=epilog, formatter_class=_HelpFormatter
    )
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The `score-diffusers` parser with its `sample`, `likelihood`, `convert`, `inpaint` and `edit` subcommands."""
    parser = _Parser(
        prog=PROG,
        description="Score-based sampling, exact likelihoods, DDPM checkpoint conversion, inpainting and editing for "
                    "Diffusers.",
        epilog=scheduler_help(),
        formatter_class=_HelpFormatter,
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    pipeline_help = "a local ScoreGuidedPipeline or stock DDPMPipeline folder, or a Hub id (owner/name)"

    sample = _add_subcommand(
        subcommands, "sample", run_sample, "Generate images with a score scheduler.",
        "Writes one PNG per image (--output_dir), a PNG grid (--grid) and/or an .npz (--npz). Image i starts\n"
        "from its own generator seeded with seed + i, and the images are sampled in batches of --batch_size.\n"
        "Under `accelerate launch` or `torchrun` the batches are split across the processes (batch k on process\n"
        "k mod W), so the images are the same with any number of processes; the main process writes the grid and\n"
        "the .npz at the end. With --output_dir, a rerun skips the batches whose PNGs are all there (resume).\n"
        "Guidance needs a classifier: one saved in the pipeline or --classifier.",
        epilog=scheduler_help(),
    )
    sample.add_argument("pipeline", metavar="PIPELINE", help=pipeline_help)
    _add_scheduler_argument(sample, "sampler to run (see the list below)")
    sample.add_argument("--steps", type=_positive_int, default=50, help="num_inference_steps of the scheduler")
    sample.add_argument("--adaptive", type=_positive_float, nargs="?", const=DEFAULT_RTOL, default=None,
                        metavar="RTOL", help="sample with the adaptive-step reverse-SDE solver instead of a scheduler: "
                        "each image takes the steps its local error allows at tolerance RTOL (a fraction of σ_t; "
                        f"default {DEFAULT_RTOL:g}); --steps and --scheduler do not apply")
    sample.add_argument("--num_images", type=_positive_int, default=None,
                        help="number of images (default: --batch_size, one batch)")
    sample.add_argument("--batch_size", type=_positive_int, default=16,
                        help="images sampled together, per process; the last batch may be shorter")
    sample.add_argument("--npz", default=None, metavar="PATH",
                        help="write all images as one uint8 array arr_0 (N, H, W, C) to this .npz, at the end")
    _add_guidance_and_output_arguments(
        sample, "write 0000.png, 0001.png, ... here, each renamed into place once whole; images already there are "
        "not sampled again (resume)")

    likelihood = _add_subcommand(
        subcommands, "likelihood", run_likelihood, "Bits/dim of every image in a folder under a pipeline's model.",
        "Integrates the probability-flow ODE of the pipeline's model and scheduler (score_diffusers.log_likelihood)\n"
        "and prints a table of file and bits/dim on the 8-bit scale, then the mean. Images are read with PIL in the\n"
        "unet's channels (grey or RGB); a size other than the unet's is an error unless --resize. Image i (in\n"
        "name order) draws its dequantisation and probes from seed + i. Under `accelerate launch` or `torchrun` the\n"
        "chunks of --batch_size images are split across the processes (chunk k on process k mod W) and the main\n"
        "process prints the table: the same bits/dim with any number of processes. An adaptive solver takes one\n"
        "step size per chunk, so a different --batch_size moves an image's bits/dim within the tolerances.",
    )
    likelihood.add_argument("image_folder", metavar="IMAGE_FOLDER", help="folder of images (png, jpg, ...)")
    likelihood.add_argument("--pipeline", required=True, help=pipeline_help)
    likelihood.add_argument("--divergence", choices=DIVERGENCES, default="hutchinson",
                            help="exact trace (one backward pass per dimension) or Hutchinson's estimator")
    likelihood.add_argument("--num_probes", type=_positive_int, default=1, help="Hutchinson probes per image")
    likelihood.add_argument("--probe", choices=PROBES, default="rademacher", help="Hutchinson probe distribution")
    likelihood.add_argument("--method", choices=METHODS, default="dopri5", help="ODE solver")
    likelihood.add_argument("--rtol", type=_positive_float, default=1e-5, help="relative tolerance (adaptive methods)")
    likelihood.add_argument("--atol", type=_positive_float, default=1e-5, help="absolute tolerance (adaptive methods)")
    likelihood.add_argument("--num_steps", type=_positive_int, default=None,
                            help="steps of a fixed-grid method (euler, midpoint, rk4; ab4 defaults to 6 per unit of "
                                 "log sigma)")
    likelihood.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=True,
                            help="uniform dequantisation (k + u)/256 of the 8-bit levels")
    likelihood.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="dtype of the integration")
    likelihood.add_argument("--batch_size", type=_positive_int, default=16,
                            help="images per ODE solve (a chunk), per process")
    likelihood.add_argument("--resize", action="store_true", help="resize images to the unet's resolution")
    likelihood.add_argument("--csv", default=None, metavar="PATH",
                            help="also write file, bits_per_dim, stderr and error_estimate (ab4 only) of every image "
                                 "(all digits) to this .csv")
    _add_common_arguments(likelihood, "dequantisation noise and probes of image i use seed + i")

    def add_conditional_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pipeline", metavar="PIPELINE", help=pipeline_help)
        parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files (png, jpg, ...)")
        parser.add_argument("--steps", type=_positive_int, default=50, help="num_inference_steps")
        parser.add_argument("--resize", action="store_true", help="resize images (and the mask) to the unet's size")
        _add_guidance_and_output_arguments(parser, "write each result as IMAGE's name + .png here")

    inpaint = _add_subcommand(
        subcommands, "inpaint", run_inpaint, "Fill the masked pixels of images (ScoreInpaintPipeline).",
        "MASK is one image for all: white where pixels are generated, black where they are kept (binary). The\n"
        "default method 'smc' samples the posterior with --particles particles per image (steps x particles\n"
        "evaluations); 'replacement' (score_sde's inpainter) and 'guidance' run the --scheduler.",
        epilog=scheduler_help(),
    )
    add_conditional_arguments(inpaint)
    inpaint.add_argument("--mask", required=True, metavar="MASK", help="mask image: white = generate, black = keep")
    inpaint.add_argument("--method", choices=INVERSE_METHODS, default="smc", help="inpainting method")
    inpaint.add_argument("--particles", type=_positive_int, default=DEFAULT_NUM_PARTICLES,
                         help="particles per image (method smc)")
    _add_scheduler_argument(inpaint, "scheduler of 'replacement' and 'guidance'; 'smc' reads its convention only")

    edit = _add_subcommand(
        subcommands, "edit", run_edit, "Edit images with SDEdit (ScoreImg2ImgPipeline).",
        "Each image is noised to time strength x T of the SDE and sampled back with the scheduler: small\n"
        "strengths stay close to the image, 1 ignores it.",
        epilog=scheduler_help(),
    )
    add_conditional_arguments(edit)
    edit.add_argument("--strength", type=float, default=0.8, help="in (0, 1]: how far the image is noised")
    _add_scheduler_argument(edit, "sampler to run back (see the list below)")

    convert = _add_subcommand(
        subcommands, "convert", run_convert, "Convert a stock DDPMPipeline folder into a ScoreGuidedPipeline folder.",
        "The unet is kept; the DDPMScheduler becomes the chosen score scheduler, configured from it (same alpha-bar\n"
        "table, epsilon prediction, DDPM index timesteps). The folder is written beside OUTPUT_FOLDER first and\n"
        "put in its place (an existing one is swapped out in one step where the filesystem allows), so a failed or\n"
        "killed conversion never leaves a half-written folder; what a killed one left is put right on the next run.\n"
        "OUTPUT_FOLDER may not be DDPM_FOLDER, hold it, lie inside it, or be the current folder.",
        epilog=scheduler_help(),
    )
    convert.add_argument("ddpm_folder", metavar="DDPM_FOLDER", help=pipeline_help)
    convert.add_argument("output_folder", metavar="OUTPUT_FOLDER", help="where to save the ScoreGuidedPipeline")
    _add_scheduler_argument(convert, "scheduler to save with the pipeline (see the list below)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_FOLDER")
    convert.add_argument("--with_code", action="store_true", help="also write the code for stock Diffusers (export-code)")

    export = _add_subcommand(
        subcommands, "export-code", run_export_code,
        "Write a saved pipeline's code into its folder, for Diffusers without this package.",
        "Adds pipeline_score_guided.py (the custom pipeline), score_diffusers_bundle_<hash>.py (the package modules the\n"
        "pipeline needs, flattened from its source) and <component>/<library>.py per component of this package. The\n"
        "folder then loads with DiffusionPipeline.from_pretrained(FOLDER, custom_pipeline=\"pipeline_score_guided\",\n"
        "trust_remote_code=True), which runs that code; score_diffusers loads it without running any of it.",
    )
    export.add_argument("pipeline_folder", metavar="FOLDER", help="a folder saved by ScoreGuidedPipeline or a subclass")
    return parser


def _one_line(error: BaseException) -> str:
    """The message of `error` on one line (its type when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run `score-diffusers` with `argv` (default: `sys.argv[1:]`) and return the exit status: 0 on success, 2 on
    bad input, 1 on a failure while running (the message on stderr). `--help` prints and returns 0."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_request:  # --help
            return int(exit_request.code or EXIT_OK)
        return args.run(args)
    # The package raises ValueError on bad arguments and data; OSError covers unreadable files and Hub failures.
    except (CLIError, ValueError, OSError) as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except SamplingError as error:
        print(f"{PROG}: failed: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
