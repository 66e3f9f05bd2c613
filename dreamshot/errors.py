"""Errors the studio raises on purpose. Their text is written for the user and is safe to show in
the browser; any other exception is an internal error and only a reference id reaches the page."""


class DreamShotError(Exception):
    """Base class: a problem the user can understand and usually fix."""


class SettingsError(DreamShotError):
    """A setting is unusable (e.g. the data folder cannot be written)."""


class SchemaTooNewError(DreamShotError):
    """The database was written by a newer DreamShot; we refuse to touch it."""


class ModelLoadError(DreamShotError):
    """A model (base, captioner, LoRA) cannot be loaded."""


class InvalidInput(DreamShotError, ValueError):
    """A request's input is out of range or malformed."""


class AccessDenied(DreamShotError, PermissionError):
    """The caller's role does not allow this action."""


class NotFound(DreamShotError, LookupError):
    """A referenced frame, run, LoRA, ... does not exist."""
