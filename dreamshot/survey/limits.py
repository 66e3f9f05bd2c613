"""How often one client may act: per-address caps of the survey. Who the client is (the address
behind a trusted proxy, ``DREAMSHOT_TRUSTED_PROXIES``) is ``dreamshot.client_address``'s rule,
shared with the login throttle.

    DREAMSHOT_SURVEY_MAX_NEW_PER_HOUR     new participants per address per hour   [default 30]
                                          counted in the database (``ip_hash``): every server on
                                          the same database shares it, and a restart keeps it
    DREAMSHOT_SURVEY_MAX_ANSWERS_PER_MIN  answers per address per minute          [default 240]
                                          counted in this process's memory
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict, deque

MAX_NEW_ENV = "DREAMSHOT_SURVEY_MAX_NEW_PER_HOUR"
MAX_ANSWERS_ENV = "DREAMSHOT_SURVEY_MAX_ANSWERS_PER_MIN"
DEFAULT_MAX_NEW_PER_HOUR = 30
DEFAULT_MAX_ANSWERS_PER_MIN = 240


def env_int(name: str, default: int) -> int:
    value = (os.environ.get(name) or "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding window)."""

    def __init__(self, limit: int, window: float, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._events: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one event for ``key`` if it is under the cap; False (and nothing counted) if not."""
        now = self.clock()
        with self._lock:
            events = self._events[key]
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            if len(self._events) > 10_000:  # forget idle keys so the table cannot grow without end
                for k in [k for k, v in self._events.items() if not v][:5_000]:
                    del self._events[k]
            return True
