"""The services every tab and CLI share, built once per process.

``Studio.open(settings)`` prepares the data folder, opens (and migrates) the database and sets up
access rules. The base model is *resolved* on first need (cheap: it decides the demo banner) and
*loaded* on first use through ``studio.models.pipeline()``; importing or opening loads no weights.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from . import models
from .access import Access
from .safety import harden_pillow
from .settings import Settings
from .storage import Database, open_database


@dataclass
class Studio:
    settings: Settings
    db: Database
    access: Access
    _models: models.ModelManager | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, settings: Settings) -> "Studio":
        """Raises SettingsError (unwritable data folder, unreachable database) or
        SchemaTooNewError (database from a newer DreamShot) with a message for the user."""
        harden_pillow()
        settings.prepare_data_dir()
        db = open_database(settings.database_url)
        return cls(settings=settings, db=db, access=Access(settings.admin_password, settings.survey_only))

    @property
    def models(self) -> models.ModelManager:
        """The shared model manager; resolving the configured model on first access."""
        if self._models is None:
            with self._lock:
                if self._models is None:
                    self._models = models.ModelManager(self.settings, models.resolve(self.settings))
        return self._models

    def model_status(self) -> models.ModelStatus:
        return self.models.status

    def close(self) -> None:
        self.db.dispose()
