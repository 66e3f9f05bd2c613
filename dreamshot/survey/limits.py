"""Who is asking, and how often: the client address behind a trusted proxy, and per-address caps.

``X-Forwarded-For`` is written by whoever sends the request, so it is believed only when the
connection comes from a proxy listed in ``DREAMSHOT_TRUSTED_PROXIES`` (addresses or networks,
comma-separated, e.g. ``10.0.0.0/8,127.0.0.1``). Then the right-most address that is not itself a
trusted proxy is the client; everything to its left could be forged and is ignored. Without a
trusted proxy the TCP peer is the client, whatever the headers say.

Caps (per client address, in this process; counts of participants also come from the database):

    DREAMSHOT_SURVEY_MAX_NEW_PER_HOUR     new participants per address per hour   [default 30]
    DREAMSHOT_SURVEY_MAX_ANSWERS_PER_MIN  answers per address per minute          [default 240]
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections import defaultdict, deque

TRUSTED_PROXIES_ENV = "DREAMSHOT_TRUSTED_PROXIES"
MAX_NEW_ENV = "DREAMSHOT_SURVEY_MAX_NEW_PER_HOUR"
MAX_ANSWERS_ENV = "DREAMSHOT_SURVEY_MAX_ANSWERS_PER_MIN"
DEFAULT_MAX_NEW_PER_HOUR = 30
DEFAULT_MAX_ANSWERS_PER_MIN = 240


def _networks(text: str | None) -> list:
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if part:
            try:
                out.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{TRUSTED_PROXIES_ENV}: {part!r} is not an address or network") from None
    return out


def _in(address: str, networks: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: str | None = None) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, then the right-most untrusted
    entry of ``X-Forwarded-For``. ``trusted`` defaults to $DREAMSHOT_TRUSTED_PROXIES."""
    networks = _networks(os.environ.get(TRUSTED_PROXIES_ENV) if trusted is None else trusted)
    peer = (peer or "unknown").strip()
    if not networks or not _in(peer, networks) or not forwarded_for:
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage where the client should be: fall back to the proxy itself
    return peer


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
