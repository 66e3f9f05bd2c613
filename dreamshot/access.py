"""Who may do what. The UI asks here; every admin handler checks the caller itself, because an
endpoint hidden from the API page is still callable.

Roles: with no admin password set, everyone is an admin (a studio on your own machine). With a
password, people log in with any name and that password (the name becomes their annotator id);
anyone not logged in - e.g. a survey participant on a ``--survey-only`` server - is a participant.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass

from dreamshot.client_address import is_loopback
from dreamshot.errors import AccessDenied, InvalidInput

ADMIN = "admin"
PARTICIPANT = "participant"
LOCAL_USER = "local"

_NAME = re.compile(r"^[\w .@\-]{1,64}$")
log = logging.getLogger(__name__)


def clean_name(name: str | None) -> str:
    """An annotator/participant name safe to store and show; InvalidInput otherwise."""
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InvalidInput("Names are 1-64 letters, digits, spaces or . @ - _")
    return name


# The client address of the login request being checked: Gradio's ``auth=`` callback receives only
# (name, password), so the studio's middleware (``dreamshot.webguard``) sets this for each request.
LOGIN_ADDRESS: contextvars.ContextVar[str] = contextvars.ContextVar("dreamshot_login_address", default="unknown")


@dataclass
class _Strikes:
    count: int = 0              # failures in a row (forgotten ``forget`` seconds after the last one)
    until: float = 0.0          # locked until (clock time)
    last: float = 0.0           # time of the last failure


class LoginThrottle:
    """Failed-login brake for the studio password, per client address and per name *from* that address.

    - A name from one address: after ``free`` failures in a row it is locked there for ``base_lock``
      seconds, doubling with each further failure up to ``max_lock``; a success clears it.
    - An address: after ``address_free`` failures (whatever names it tries) it is locked the same
      way. Guessing many names from one address cannot lift the brake.
    - Nothing is locked across addresses: a stranger elsewhere never locks out the right password
      (a global brake was a denial of service). Failures across all addresses above
      ``alarm_per_minute`` are logged once a minute instead.
    Each lock is logged. While locked, even the right password is refused (otherwise the lock would
    slow a guesser down but tell them the password). Counts are forgotten ``forget`` seconds after
    a key's last failure. Behind a proxy the address is the one ``DREAMSHOT_TRUSTED_PROXIES`` allows
    (``dreamshot.client_address``); without it every client shares the proxy's address."""

    def __init__(self, free: int = 5, base_lock: float = 30.0, max_lock: float = 900.0, address_free: int = 20,
                 alarm_per_minute: int = 30, forget: float = 3600.0, clock=time.monotonic):
        self.free, self.base_lock, self.max_lock, self.address_free = free, base_lock, max_lock, address_free
        self.alarm_per_minute, self.forget, self.clock = alarm_per_minute, forget, clock
        self._names: dict[tuple[str, str], _Strikes] = {}   # (name, address) -> strikes
        self._addresses: dict[str, _Strikes] = {}
        self._recent: deque = deque()                        # failure times (the alarm only)
        self._alarmed_at = float("-inf")
        self._lock = threading.Lock()

    @staticmethod
    def _key(name: str, address: str) -> tuple[str, str]:
        return name.lower(), address

    def _live(self, table: dict, key, now: float) -> _Strikes | None:
        strikes = table.get(key)
        if strikes is not None and strikes.until <= now and now - strikes.last > self.forget:
            del table[key]
            return None
        return strikes

    def allowed(self, name: str, address: str = "unknown") -> bool:
        now = self.clock()
        with self._lock:
            for table, key in ((self._addresses, address), (self._names, self._key(name, address))):
                strikes = self._live(table, key, now)
                if strikes is not None and strikes.until > now:
                    return False
            return True

    def _strike(self, table: dict, key, free: int, now: float) -> float:
        """Count one failure for ``key``; the seconds it is now locked for (0: not locked)."""
        strikes = self._live(table, key, now) or table.setdefault(key, _Strikes())
        strikes.count, strikes.last = strikes.count + 1, now
        if strikes.count < free:
            return 0.0
        seconds = min(self.max_lock, self.base_lock * 2 ** (strikes.count - free))
        strikes.until = now + seconds
        return seconds

    def failed(self, name: str, address: str = "unknown") -> None:
        now = self.clock()
        with self._lock:
            locked = self._strike(self._names, self._key(name, address), self.free, now)
            if locked:
                log.warning("login: name %r locked for %.0f s at %s after %d failed attempts from there",
                            name, locked, address, self._names[self._key(name, address)].count)
            locked = self._strike(self._addresses, address, self.address_free, now)
            if locked:
                log.warning("login: address %s locked for %.0f s after %d failed attempts (any name)",
                            address, locked, self._addresses[address].count)
            self._alarm(now)
            for table in (self._names, self._addresses):   # bounded memory under a flood of new keys
                if len(table) > 10_000:
                    for key in [k for k, v in table.items() if v.until <= now][:5_000]:
                        del table[key]

    def _alarm(self, now: float) -> None:
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - 60:
            self._recent.popleft()
        if len(self._recent) > self.alarm_per_minute and now - self._alarmed_at >= 60:
            self._alarmed_at = now
            log.warning("login: %d failed attempts in the last minute across all addresses (nobody is locked "
                        "out for it; each address and name is throttled on its own)", len(self._recent))

    def succeeded(self, name: str, address: str = "unknown") -> None:
        with self._lock:
            self._names.pop(self._key(name, address), None)


class Access:
    def __init__(self, admin_password: str | None, survey_only: bool = False,
                 throttle: LoginThrottle | None = None):
        self._password = admin_password or None
        self.survey_only = survey_only
        self.throttle = throttle or LoginThrottle()

    @property
    def login_required(self) -> bool:
        """Whether the server asks for a login (never on a survey-only server)."""
        return self._password is not None and not self.survey_only

    def check_login(self, username: str, password: str) -> bool:
        """Gradio's ``auth=`` callback: any valid name with the admin password."""
        if self._password is None or self.survey_only:
            return False
        try:
            name = clean_name(username)
        except InvalidInput:
            name = "?invalid"
        address = LOGIN_ADDRESS.get()
        if not self.throttle.allowed(name, address):
            return False
        ok = name != "?invalid" and hmac.compare_digest((password or "").encode(), self._password.encode())
        if ok:
            self.throttle.succeeded(name, address)
        else:
            self.throttle.failed(name, address)
        return ok

    def role(self, username: str | None) -> str:
        if self.survey_only:
            return PARTICIPANT
        if self._password is None:
            return ADMIN
        return ADMIN if username else PARTICIPANT

    def require_admin(self, username: str | None) -> str:
        """The caller's name if they may use the admin tabs; AccessDenied otherwise."""
        if self.role(username) != ADMIN:
            raise AccessDenied("Log in as a studio member to do this.")
        return username or LOCAL_USER


def exposure_warning(settings) -> str | None:
    """A warning when the full studio is reachable from other machines without a password (every
    visitor is then an admin), else None. A survey-only server has no admin side."""
    if settings.survey_only or settings.admin_password:
        return None
    if settings.share:
        where = "through a public gradio.live link (--share)"
    elif not is_loopback(settings.host):
        where = f"on {settings.host} (reachable from other machines)"
    else:
        return None
    return (f"the studio is served {where} without a password: every visitor is an admin who can change "
            "labels, delete surveys, train and upload files. Set DREAMSHOT_ADMIN_PASSWORD (a Space secret) "
            "or --admin-password, or serve on 127.0.0.1.")
