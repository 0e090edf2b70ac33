"""A small thread-safe LRU cache and a content digest for images: the building blocks of the result caches.

Used by the prompt-embedding cache (engine.text), the control-latent cache (engine.engine) and the
pose-detection cache (pose.cache). Values are returned as stored: callers keep them read-only.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from PIL import Image

V = TypeVar("V")


class LruCache(Generic[V]):
    """At most `maxsize` entries; the least recently used one goes first. `maxsize=0` disables caching."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"cache size must be 0 or more (got {maxsize})")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value for `key`, or compute() stored under it (computed outside the lock)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = compute()
        if self.maxsize:
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def image_digest(image: Image.Image) -> tuple[str, tuple[int, int], str]:
    """A key that is equal exactly when two images have the same mode, size and pixels."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    return image.mode, image.size, digest
