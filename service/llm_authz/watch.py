"""Reload without a signal: the policy and tenant directories are watched, a change reloads.

In Kubernetes nobody sends SIGHUP: the kubelet updates a ConfigMap volume by writing a new
timestamped folder and renaming a `..data` symlink over the old one. That rename is an event in
the mounted directory itself, so watching the directories (recursively) sees it like an edit.
A burst of events (an editor's save, the kubelet's three steps) is one reload; the reload keeps
the revision in force when the new files are invalid, exactly as SIGHUP does.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import watchfiles

log = logging.getLogger("llm_authz.watch")

# Events closer than STEP_MS are one change; a change is applied at most DEBOUNCE_MS after it began.
STEP_MS = 100
DEBOUNCE_MS = 1000


class DirectoryWatcher:
    """Calls `on_change` (from its own thread) after files under any of `paths` change."""

    def __init__(self, paths: Iterable[Path], on_change: Callable[[], object]):
        self.paths = [p for p in dict.fromkeys(Path(p).absolute() for p in paths) if p.exists()]
        self.on_change = on_change
        # A file (a bundle) is watched through its folder: a file replaced by a rename is a new
        # inode, which a watch on the old one would never report.
        self._files = {str(p) for p in self.paths if p.is_file()}
        self._dirs = [str(p) for p in self.paths if not p.is_file()]
        self._roots = list(dict.fromkeys([*self._dirs, *(str(Path(f).parent) for f in self._files)]))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-authz-watch", daemon=True)

    def start(self) -> None:
        if not self.paths:
            return
        self._thread.start()
        log.info("watching %s for changes", ", ".join(str(p) for p in self.paths))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _relevant(self, _change: watchfiles.Change, path: str) -> bool:
        """Under a watched folder, or a watched file itself. Every name counts: the kubelet's
        `..data` swap is made of dot-names that watchfiles' default filter would drop."""
        return path in self._files or any(path == d or path.startswith(d + os.sep) for d in self._dirs)

    def _run(self) -> None:
        try:
            for changes in watchfiles.watch(*self._roots, watch_filter=self._relevant, debounce=DEBOUNCE_MS,
                                            step=STEP_MS, stop_event=self._stop, raise_interrupt=False,
                                            yield_on_timeout=False):
                log.info("%d file change(s) under the watched directories: reloading", len(changes))
                try:
                    self.on_change()
                except Exception:  # the watcher must outlive any reload problem
                    log.exception("reload after a file change failed")
        except Exception:
            if not self._stop.is_set():
                log.exception("watching for file changes stopped: reload with SIGHUP")


__all__ = ["DirectoryWatcher"]
