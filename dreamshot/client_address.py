"""Who is asking: the client address behind a trusted proxy (the login throttle, the survey's caps).

``X-Forwarded-For`` is written by whoever sends the request, so it is believed only when the
connection comes from a proxy listed in ``DREAMSHOT_TRUSTED_PROXIES`` (addresses or networks,
comma-separated, e.g. ``10.0.0.0/8,127.0.0.1``). Then the right-most address that is not itself a
trusted proxy is the client; everything to its left could be forged and is ignored. Without a
trusted proxy the TCP peer is the client, whatever the headers say.

A request may carry several ``X-Forwarded-For`` lines (a client sends its own, the proxy appends
another): they are one list, joined in order (RFC 7230 §3.2.2) before the right-most hop is taken.
"""

from __future__ import annotations

import functools
import ipaddress
import os

TRUSTED_PROXIES_ENV = "DREAMSHOT_TRUSTED_PROXIES"
HEADER = "x-forwarded-for"


@functools.lru_cache(maxsize=8)   # read on every survey request: parsed once per setting
def _networks(text: str | None) -> tuple:
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if part:
            try:
                out.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{TRUSTED_PROXIES_ENV}: {part!r} is not an address or network") from None
    return tuple(out)


def _in(address: str, networks: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: str | None = None) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, then the right-most untrusted
    entry of ``X-Forwarded-For`` (all its lines joined: ``forwarded_for``). ``trusted`` defaults
    to $DREAMSHOT_TRUSTED_PROXIES."""
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


def forwarded_for(headers) -> str:
    """Every ``X-Forwarded-For`` line of ``headers``, joined in order: starlette/gradio headers
    (``getlist``), an ASGI scope's raw ``[(name, value)]`` list, or a plain mapping."""
    if headers is None:
        return ""
    if isinstance(headers, (list, tuple)):
        lines = [v.decode("latin-1") for k, v in headers if k.lower() == HEADER.encode()]
    elif hasattr(headers, "getlist"):
        lines = list(headers.getlist(HEADER))
    else:
        line = headers.get(HEADER) or headers.get(HEADER.title())
        lines = [line] if line else []
    return ", ".join(line.strip() for line in lines if line and line.strip())


def request_ip(request) -> str:
    """The client address of a starlette/gradio request (``local`` without one)."""
    if request is None:
        return "local"
    peer = getattr(getattr(request, "client", None), "host", None)
    return client_ip(peer, forwarded_for(getattr(request, "headers", None)))


def scope_ip(scope: dict) -> str:
    """The client address of an ASGI scope (what a middleware sees)."""
    client = scope.get("client") or (None, None)
    return client_ip(client[0], forwarded_for(scope.get("headers") or []))


def is_loopback(host: str | None) -> bool:
    """Whether serving on ``host`` reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    host = (host or "").strip().strip("[]").lower()
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
