"""What the embedded backend keeps on disk: the bytes it counts against --max-disk, and the input images
of unfinished jobs, one file per content hash."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path


def folder_size(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it does not exist)."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):  # deleted meanwhile
                total += os.stat(os.path.join(root, name)).st_size
    return total


class DiskUsage:
    """Bytes under the data folder that jobs use: the database files, read when asked, plus the folders
    of inputs and results, scanned once at start and then counted as the queue writes and deletes."""

    def __init__(self, files: Sequence[Path], folders: Sequence[Path]) -> None:
        self.files = list(files)
        self.folders = list(folders)
        self._counted = 0
        self._lock = threading.Lock()

    def scan(self) -> None:
        counted = sum(folder_size(folder) for folder in self.folders)
        with self._lock:
            self._counted = counted

    def add(self, num_bytes: int) -> None:
        """Record bytes written (positive) or deleted (negative)."""
        with self._lock:
            self._counted = max(0, self._counted + num_bytes)

    def used(self) -> int:
        total = 0
        for path in self.files:
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        with self._lock:
            return total + self._counted


class InputStore:
    """Input images of queued and running jobs, one file per SHA-256 (the same image sent twice is kept
    once). Who still needs a file is the queue's to say (its job records); this only reads and writes."""

    def __init__(self, folder: Path, usage: DiskUsage) -> None:
        self.folder = Path(folder)
        self.usage = usage

    def _path(self, digest: str) -> Path:
        return self.folder / digest

    def put(self, digest: str, data: bytes) -> None:
        """Keep `data` under `digest` (written once; a half-written file is never seen under that name)."""
        path = self._path(digest)
        if path.exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{digest}.{uuid.uuid4().hex}.part"
        try:
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError:  # e.g. a full disk: what was written must not stay, uncounted, until a restart
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        self.usage.add(len(data))

    def read(self, digest: str) -> bytes | None:
        try:
            return self._path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, digest: str) -> None:
        path = self._path(digest)
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            self.usage.add(-size)

    def stored(self) -> set[str]:
        """The hashes on disk (leftovers of a crash included), for the clean-up at start."""
        if not self.folder.is_dir():
            return set()
        return {path.name for path in self.folder.iterdir() if not path.name.startswith(".")}

    def delete_partials(self) -> None:
        """Remove files a crash left half-written."""
        if self.folder.is_dir():
            for path in self.folder.glob(".*.part"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
