"""Directories as Kubernetes mounts them: a ConfigMap or Secret volume holds every file twice.

The kubelet writes a volume's files into a timestamped folder (`..2026_12_02_06_00_00.123/`),
points the symlink `..data` at it, and links each top-level name to `..data/<name>`. An update
writes a new folder, points a new `..data_tmp` at it and renames it over `..data`: one atomic
swap. Reading such a directory means reading the folder `..data` points at, once, and never the
`..`-prefixed entries beside it. A plain directory reads as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

KUBELET_DATA_LINK = "..data"


def current_dir(root: Path) -> Path:
    """The folder to read for `root`: the target of its `..data` link if it has one, else `root`.

    Resolving the link once means every file of one load comes from the same revision, even if
    the kubelet swaps the link in the middle of the load.
    """
    link = root / KUBELET_DATA_LINK
    if link.is_dir():
        return link.resolve()
    return root


def is_kubelet_internal(name: str) -> bool:
    """`..data`, `..data_tmp` and the timestamped `..2026_…` folders: not content of the volume."""
    return name.startswith("..")


def walk_files(root: Path) -> Iterator[Path]:
    """Every regular file under root, in sorted order, following symlinked folders once each and
    skipping the kubelet's own entries. Paths are under `root` as given."""
    seen: set[tuple[int, int]] = set()

    def walk(directory: Path) -> Iterator[Path]:
        try:
            stat = directory.stat()
        except OSError:
            return
        if (stat.st_dev, stat.st_ino) in seen:  # a symlink loop, or a folder linked twice
            return
        seen.add((stat.st_dev, stat.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if is_kubelet_internal(entry.name):
                continue
            path = directory / entry.name
            if entry.is_dir():
                yield from walk(path)
            elif entry.is_file():
                yield path

    yield from walk(root)


__all__ = ["KUBELET_DATA_LINK", "current_dir", "is_kubelet_internal", "walk_files"]
