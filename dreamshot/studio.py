"""The services every tab and CLI share, built once per process.

``Studio.open(settings)`` prepares the data folder, opens (and migrates) the database and sets up
access rules. The base model is *chosen* on first need (``model_choice``: cheap, it decides the demo
banner), *resolved* when a feature first asks for ``studio.models`` (the demo model is built then) and
*loaded* on first use through ``studio.models.pipeline()``; importing or opening loads no weights.

Where per-studio state lives: **only here**. A feature never keeps module globals or sets attributes
on the studio; it asks ``studio.service(SomeService)``, which builds ``SomeService(studio)`` once
(thread-safe), returns the same object afterwards, and calls its ``close()`` (if it has one) when the
studio closes. The core never imports a feature: the feature hands its class in.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TypeVar

from dreamshot import models
from dreamshot.access import Access
from dreamshot.safety import harden_pillow
from dreamshot.settings import Settings
from dreamshot.shots import Project
from dreamshot.storage import Database, open_database

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Studio:
    settings: Settings
    db: Database
    access: Access
    _models: models.ModelManager | None = field(default=None, repr=False)
    _choice: models.ModelStatus | None = field(default=None, repr=False)
    _choice_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _services: dict = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

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
                    chosen = models.resolve(self.settings, chosen=self.model_choice())
                    self._models = models.ModelManager(self.settings, chosen)
        return self._models

    def model_choice(self) -> models.ModelStatus:
        """Which base model the studio uses (the demo model, and why), known without building or
        loading anything: the model manager's status once it exists (it also records a fallback
        after a failed load), else ``models.choose`` made once (a Hub probe of 3 s at most)."""
        if self._models is not None:
            return self._models.status
        with self._choice_lock:
            if self._choice is None:
                self._choice = models.choose(self.settings)
            return self._choice

    def model_status(self) -> models.ModelStatus:
        return self.models.status

    def precision_text(self) -> str:
        """The model weights' precision (``--dtype``): what is in use once the base model is loaded,
        else the setting; loads nothing."""
        if self._models is not None:
            return self._models.precision_text()
        return models.precision_text(self.settings.dtype)

    @property
    def project(self) -> Project:
        """The project's shot taxonomy and prompt template (read fresh: an admin may change them)."""
        return Project(self.db)

    def service(self, cls: type[T]) -> T:
        """The one ``cls(studio)`` of this studio, built on first use."""
        existing = self._services.get(cls)
        if existing is not None:
            return existing
        with self._lock:
            if cls not in self._services:
                self._services[cls] = cls(self)
            return self._services[cls]

    def close(self) -> None:
        with self._lock:
            services, self._services = list(self._services.values()), {}
        for svc in reversed(services):
            close = getattr(svc, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # one service failing to close must not keep the rest open
                    log.exception("closing %s failed", type(svc).__name__)
        self.db.dispose()
