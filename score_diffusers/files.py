"""Writing outputs so that a kill never leaves a half-written one over a good one (shared by the CLI and the
training scripts)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def remove_path(path: Path) -> None:
    """Delete the file or folder `path` (only the link where it is a symbolic link); nothing if it does not exist."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """The hidden path `.NAME.partial` beside `path` to write a file to, moved onto `path` when the block ends and
    removed if it raises: `path` holds the old file or the complete new one, never a part."""
    temporary = path.with_name(f".{path.name}.partial")
    remove_path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        remove_path(temporary)


def move_into_place(source: Path, target: Path) -> None:
    """Rename the complete `source` onto `target`. A folder at `target` is first renamed aside (`.NAME.stale`) and
    removed once `source` is in place, so a kill leaves the old or the new one, at worst the old one aside."""
    if target.is_dir() and not target.is_symlink():
        stale = target.with_name(f".{target.name}.stale")
        remove_path(stale)
        os.replace(target, stale)
        os.replace(source, target)
        remove_path(stale)
    else:
        os.replace(source, target)
