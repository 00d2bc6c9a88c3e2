"""Resumable checkpoints: `checkpoint-<step>` folders of `accelerator.save_state` (plus the EMA weights and a
manifest), written atomically, pruned to `--checkpoints_total_limit`, checked complete and found again by
`--resume_from_checkpoint`; and the run's outputs, each written beside its place and moved onto it once complete."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel

from score_diffusers.checks import check_int
from score_diffusers.files import move_into_place, remove_path

logger = get_logger(__name__, log_level="INFO")

CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
EMA_SUBFOLDER = "ema"
# Written last into a checkpoint: the size of every file in it and the run's arguments, so that a resume can tell a
# complete checkpoint from a truncated copy, and its own arguments from the run's.
MANIFEST_NAME = "checkpoint.json"
# What `accelerator.save_state` always writes, for checkpoints from before the manifest.
_STATE_FILES = ("optimizer.bin", "scheduler.bin")
# The final pipeline's index, moved into place after every component it names.
_INDEX_NAME = "model_index.json"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    """The folder of the checkpoint at `step` in `output_dir`: `checkpoint-<step>`."""
    return output_dir / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(path: str | Path) -> int:
    """The step of a `checkpoint-<step>` folder; a `ValueError` for any other name."""
    match = _CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"--resume_from_checkpoint {str(path)!r} is not named {CHECKPOINT_PREFIX}<step>.")
    return int(match.group(1))


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Completed checkpoints in `output_dir` as `(step, path)`, oldest first (in-progress temporary folders
    excluded)."""
    found = []
    if Path(output_dir).is_dir():
        for path in Path(output_dir).iterdir():
            match = _CHECKPOINT_PATTERN.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    return sorted(found)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of checkpoint `path` (`{"step", "files": {name: bytes}, "config"}`), None if it has none."""
    manifest = path / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        saved = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from (a file missing or of another size than was written), or None."""
    if not path.is_dir():
        return "it is not a folder"
    manifest = read_manifest(path)
    if manifest is None:
        # Written before manifests: the files every `accelerator.save_state` writes.
        if not any(path.glob("model*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
            return "it holds no model weights"
        missing = [name for name in _STATE_FILES if not (path / name).is_file()]
        return f"{missing[0]} is missing" if missing else None
    files = manifest.get("files")
    if not isinstance(files, dict):
        return f"its {MANIFEST_NAME} is unreadable"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes where {size} were written"
    return None


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from, and the newer ones passed over as incomplete (path, why)."""

    step: int
    path: Path
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_resume_checkpoint(args: argparse.Namespace) -> ResumePoint | None:
    """The checkpoint `--resume_from_checkpoint` names: for "latest" the newest complete one in `--output_dir` (None
    if there is none at all); a `ValueError` for a named checkpoint that is incomplete, or when every one is."""
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        skipped = []
        for step, path in reversed(list_checkpoints(args.output_dir)):
            problem = checkpoint_problem(path)
            if problem is None:
                return ResumePoint(step, path, skipped)
            skipped.append((path, problem))
        if skipped:
            reasons = "; ".join(f"{path.name}: {problem}" for path, problem in skipped)
            raise ValueError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {args.output_dir} ({reasons}). Remove "
                "them to start a new run."
            )
        return None
    path = Path(args.resume_from_checkpoint)
    step = checkpoint_step(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint {str(path)!r} is incomplete or corrupt: {problem}. Name an earlier checkpoint, "
            "or \"latest\" for the newest complete one."
        )
    return ResumePoint(step, path)


def resolve_resume_checkpoint(args: argparse.Namespace) -> tuple[int, Path] | None:
    """The checkpoint `--resume_from_checkpoint` names (the newest complete one for "latest"), or None to start
    fresh; the incomplete ones passed over are logged."""
    found = find_resume_checkpoint(args)
    if found is None:
        if args.resume_from_checkpoint == "latest":
            logger.info(f"No checkpoint in {args.output_dir}; starting a new run.")
        return None
    for path, problem in found.skipped:
        logger.warning(f"Skipping incomplete checkpoint {path}: {problem}.")
    return found.step, found.path


def _write_manifest(folder: Path, step: int, config: dict[str, Any] | None) -> None:
    files = {str(file.relative_to(folder)): file.stat().st_size for file in sorted(folder.rglob("*")) if file.is_file()}
    (folder / MANIFEST_NAME).write_text(json.dumps({"step": step, "files": files, "config": config}, indent=1))


def save_checkpoint(
    accelerator: Accelerator,
    ema: EMAModel | None,
    output_dir: Path,
    step: int,
    limit: int | None,
    config: dict[str, Any] | None = None,
    previous_step: int | None = None,
):
    """`accelerator.save_state` into a temporary folder, with a manifest of its files and the run's `config`,
    renamed to `checkpoint-<step>` once complete.

    A save that is interrupted leaves only the temporary folder, which resumption ignores, so the last good
    checkpoint is never replaced by a partial one. Then `prune_checkpoints(output_dir, step, limit, previous_step)`
    removes the checkpoints of other runs and those beyond `limit` (>= 1, or None to keep all), never the one just
    written.
    """
    if limit is not None:
        # A limit below 1 would leave no room for the checkpoint just written.
        check_int("checkpoints_total_limit", limit, 1)
    final = checkpoint_dir(output_dir, step)
    partial = output_dir / f".{final.name}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process and ema is not None:
        ema.save_pretrained(str(partial / EMA_SUBFOLDER))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_manifest(partial, step, config)
        move_into_place(partial, final)
        logger.info(f"Saved {final}")
        prune_checkpoints(output_dir, step, limit, previous_step)
    accelerator.wait_for_everyone()


def prune_checkpoints(output_dir: Path, step: int, limit: int | None, previous_step: int | None = None) -> None:
    """Remove the checkpoints in `output_dir` that the one just written at `step` supersedes, by the run that wrote
    them and in the order it wrote them, not by step alone.

    A run's checkpoints are the one it resumed from and those it wrote since: `previous_step` is the last of them
    before `step` (0 for a new run; None when not known, and then only those past `step` are judged). The others
    past `previous_step` are from a run this one does not continue (the newer ones were incomplete, an earlier one was
    named, or the run started afresh in a used folder): they are removed with a warning, or
    `--resume_from_checkpoint latest`, which takes the highest complete step, would go back to that run. Of the
    older ones, the `limit - 1` newest complete ones are kept beside the new one (every one for a `limit` of None)
    and the rest removed; incomplete ones (`checkpoint_problem`) do not count and are removed.
    """
    older = []
    for found_step, path in list_checkpoints(output_dir):
        if found_step > step or (previous_step is not None and previous_step < found_step < step):
            logger.warning(f"Removed {path}: it is from a run that the one now at step {step} does not continue.")
            remove_path(path)
        elif found_step < step:
            older.append(path)
    if limit is None:
        return
    kept = 1
    for path in reversed(older):
        problem = checkpoint_problem(path)
        if problem is None and kept < limit:
            kept += 1
            continue
        logger.info(f"Removed {path}: " + (f"incomplete, {problem}." if problem else f"beyond the last {limit}."))
        remove_path(path)


def load_ema(path: Path, ema: EMAModel, model_cls: type, device) -> None:
    """Restore `ema` from the EMA weights saved with checkpoint `path`."""
    saved = EMAModel.from_pretrained(str(path / EMA_SUBFOLDER), model_cls)
    ema.load_state_dict(saved.state_dict())
    ema.to(device)


# ---- outputs ------------------------------------------------------------------------------------------------------


def save_outputs(output_dir: Path, save: Callable[[Path], None]) -> None:
    """`save(folder)` into a hidden staging folder in `output_dir`, then each entry moved into `output_dir`.

    A file replaces the old one in one rename; a folder (a pipeline component) is renamed aside, the new one renamed
    in, the old one removed, so a kill leaves the old or the new component, never a half-written one (at worst the
    old one aside, as `.<name>.stale`). `model_index.json` comes last, once every component it names is in place.
    """
    staging = output_dir / ".outputs.partial"
    remove_path(staging)
    save(staging)
    for entry in sorted(staging.iterdir(), key=lambda entry: (entry.name == _INDEX_NAME, entry.name)):
        move_into_place(entry, output_dir / entry.name)
    staging.rmdir()
