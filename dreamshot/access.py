"""Who may do what. The UI asks here; every admin handler checks the caller itself, because an
endpoint hidden from the API page is still callable.

Roles: with no admin password set, everyone is an admin (a studio on your own machine). With a
password, people log in with any name and that password (the name becomes their annotator id);
anyone not logged in - e.g. a survey participant on a ``--survey-only`` server - is a participant.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from collections import deque

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


class LoginThrottle:
    """Failed-login brake for the admin password (Gradio's ``auth=`` callback sees no address).

    - Per name: after ``free`` failures in a row the name is locked for ``base_lock`` seconds,
      doubling with each further failure up to ``max_lock``; a success clears it.
    - Overall: at most ``global_limit`` failures per ``window`` seconds across all names; beyond
      that every login waits for the window to pass. Guessing many names cannot lift the brake.
    While locked, even the right password is refused (otherwise the lock would tell a guesser
    nothing but would not slow them either)."""

    def __init__(self, free: int = 5, base_lock: float = 30.0, max_lock: float = 900.0,
                 global_limit: int = 30, window: float = 60.0, clock=time.monotonic):
        self.free, self.base_lock, self.max_lock = free, base_lock, max_lock
        self.global_limit, self.window, self.clock = global_limit, window, clock
        self._fails: dict[str, tuple[int, float]] = {}   # name -> (failures in a row, locked until)
        self._recent: deque = deque()
        self._lock = threading.Lock()

    def allowed(self, name: str) -> bool:
        now = self.clock()
        with self._lock:
            while self._recent and self._recent[0] <= now - self.window:
                self._recent.popleft()
            if len(self._recent) >= self.global_limit:
                return False
            return self._fails.get(name.lower(), (0, 0.0))[1] <= now

    def failed(self, name: str) -> None:
        now = self.clock()
        with self._lock:
            self._recent.append(now)
            count, _ = self._fails.get(name.lower(), (0, 0.0))
            count += 1
            until = now + min(self.max_lock, self.base_lock * 2 ** (count - self.free)) if count >= self.free else 0.0
            self._fails[name.lower()] = (count, until)
            if count >= self.free:
                log.warning("login for %r locked for %.0f s after %d failed attempts", name, until - now, count)
            if len(self._fails) > 10_000:
                self._fails = {k: v for k, v in self._fails.items() if v[1] > now}

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._fails.pop(name.lower(), None)


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
        if not self.throttle.allowed(name):
            return False
        ok = name != "?invalid" and hmac.compare_digest((password or "").encode(), self._password.encode())
        if ok:
            self.throttle.succeeded(name)
        else:
            self.throttle.failed(name)
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
