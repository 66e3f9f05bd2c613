"""Who may do what. The UI asks here; every admin handler checks the caller itself, because an
endpoint hidden from the API page is still callable.

Roles: with no admin password set, everyone is an admin (a studio on your own machine). With a
password, people log in with any name and that password (the name becomes their annotator id);
anyone not logged in - e.g. a survey participant on a ``--survey-only`` server - is a participant.
"""

from __future__ import annotations

import hmac
import re

from dreamshot.errors import AccessDenied, InvalidInput

ADMIN = "admin"
PARTICIPANT = "participant"
LOCAL_USER = "local"

_NAME = re.compile(r"^[\w .@\-]{1,64}$")


def clean_name(name: str | None) -> str:
    """An annotator/participant name safe to store and show; InvalidInput otherwise."""
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InvalidInput("Names are 1-64 letters, digits, spaces or . @ - _")
    return name


class Access:
    def __init__(self, admin_password: str | None, survey_only: bool = False):
        self._password = admin_password or None
        self.survey_only = survey_only

    @property
    def login_required(self) -> bool:
        """Whether the server asks for a login (never on a survey-only server)."""
        return self._password is not None and not self.survey_only

    def check_login(self, username: str, password: str) -> bool:
        """Gradio's ``auth=`` callback: any valid name with the admin password."""
        if self._password is None or self.survey_only:
            return False
        try:
            clean_name(username)
        except InvalidInput:
            return False
        return hmac.compare_digest(password.encode(), self._password.encode())

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
