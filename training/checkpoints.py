"""Resumable checkpoints: `checkpoint-<step>` folders of `accelerator.save_state` (plus the EMA weights), written
atomically, pruned to `--checkpoints_total_limit`, and found again by `--resume_from_checkpoint`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel

from score_diffusers.checks import check_int

logger = get_logger(__name__, log_level="INFO")

CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
EMA_SUBFOLDER = "ema"


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
    return checkpoint_step(path), path


def save_checkpoint(accelerator: Accelerator, ema: EMAModel | None, output_dir: Path, step: int, limit: int | None):
    """`accelerator.save_state` into a temporary folder, renamed to `checkpoint-<step>` once complete.

    A save that is interrupted leaves only the temporary folder, which resumption ignores, so the last good
    checkpoint is never replaced by a partial one. Old checkpoints beyond `limit` (>= 1, or None to keep all) are
    pruned afterwards, never the one just written.
    """
    if limit is not None:
        # A limit below 1 would prune the checkpoint just written (`[:-limit]` of a negative limit counts forward).
        check_int("checkpoints_total_limit", limit, 1)
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


def load_ema(path: Path, ema: EMAModel, model_cls: type, device) -> None:
    """Restore `ema` from the EMA weights saved with checkpoint `path`."""
    saved = EMAModel.from_pretrained(str(path / EMA_SUBFOLDER), model_cls)
    ema.load_state_dict(saved.state_dict())
    ema.to(device)
