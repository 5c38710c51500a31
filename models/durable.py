"""Durable writes on a POSIX filesystem, without TensorFlow: what a rename publishes must be on
disk before the rename, and the rename itself must be (the directory's entry), or a crash can
leave a published name over missing or torn content.

    fsync_tree(temporary); os.rename(temporary, target); fsync_directory(target.parent)
    write_text_atomically(path, text)
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """fsync the directory `path` (its entries: names created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, so that a rename publishes durable content."""
    for directory, _subdirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(directory))


def write_text_atomically(path: Path, text: str) -> Path:
    """Writes `text` to `path` so that a reader (or a restart after a crash) sees the old file or
    the new one, never a part: a temporary file beside it, fsynced, renamed into place, and the
    directory fsynced. Returns `path`."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)
    return path
