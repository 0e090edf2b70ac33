"""Per-key request rate limits: a sliding one-minute window held in memory."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, who: str, per_minute: int) -> float:
        """Record one request; return 0 if allowed, else the seconds until one is allowed again."""
        if per_minute <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            hits = self._hits.setdefault(who, deque())
            while hits and hits[0] <= now - WINDOW_S:
                hits.popleft()
            if len(hits) >= per_minute:
                return hits[0] + WINDOW_S - now
            hits.append(now)
            return 0.0
