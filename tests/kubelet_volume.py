"""A directory laid out, and updated, the way the kubelet lays out a ConfigMap or Secret volume.

The kubelet (pkg/volume/util/atomic_writer.go) writes the files into a new timestamped folder
`..<timestamp>/`, creates the symlink `..data_tmp` pointing at it, renames `..data_tmp` over
`..data` (the atomic step), makes each top-level name a symlink to `..data/<name>` and removes
the old folder. `update` does the same steps in the same order.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under a plain directory, by relative path (what `--from-file=dir` would carry)."""
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


class KubeletVolume:
    def __init__(self, root: Path, files: dict[str, bytes | str]):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.update(files)

    def update(self, files: dict[str, bytes | str]) -> None:
        """Replace the whole content with `files` in one atomic swap of `..data`."""
        stamp = datetime.now(timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.") + f"{time.monotonic_ns() % 10**9:09d}"
        folder = self.root / stamp
        for name, content in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        data = self.root / "..data"
        old = Path(os.readlink(data)) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(stamp, tmp)
        os.rename(tmp, data)
        top = {name.split("/", 1)[0] for name in files}
        for name in top:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        for entry in self.root.iterdir():
            if not entry.name.startswith("..") and entry.name not in top:
                entry.unlink()
        if old is not None:
            shutil.rmtree(self.root / old)
