"""What a generation hands back (``GeneratedImage``, ``GenerationResult``) and the ``Job`` through
which a caller watches progress and cancels."""

from __future__ import annotations

import io
import logging
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dreamshot.errors import DreamShotError
from dreamshot.generate import pngmeta
from dreamshot.generate.request import GenerationRequest

log = logging.getLogger(__name__)


@dataclass(eq=False)
class GeneratedImage:
    image: object          # PIL.Image
    seed: int
    parameters: str        # A1111 text
    saved: object = None   # the saved copy under outputs/: a Path, or a Future of it while it is written
    _png: bytes | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> Path | None:
        """The saved copy under outputs/ (never handed to the browser); waits for a background write."""
        if isinstance(self.saved, Future):
            self.saved = self.saved.result()
        return self.saved

    def png(self) -> bytes:
        """The PNG file (settings in its ``parameters`` chunk), encoded once and kept."""
        with self._lock:
            if self._png is None:
                buffer = io.BytesIO()
                self.image.save(buffer, format="PNG", pnginfo=pngmeta.png_info(self.parameters))
                self._png = buffer.getvalue()
            return self._png

    def save(self, path: Path) -> Path:
        """Write the PNG to ``path`` (its folder is created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(self.png())
        tmp.replace(path)
        return path


@dataclass
class GenerationResult:
    request: GenerationRequest       # checked, with the seed actually used
    prompt: str                      # the prompt the model saw
    loras: list                      # [(LoraInfo, weight)] applied
    images: list = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0             # this request's share of the denoising time
    control_image: object = None     # the ControlNet's control image (PIL), when the request has one

    @property
    def seeds(self) -> list:
        return [img.seed for img in self.images]


class Cancelled(DreamShotError):
    """The user stopped the generation."""


@dataclass(eq=False)
class Job:
    """One running request of one owner (a browser session, a CLI run); ``cancel()`` stops it at
    the next denoising step. ``progress(fraction, text)`` is called from the worker thread."""
    owner: str = "local"
    progress: object = None
    event: threading.Event = field(default_factory=threading.Event)
    prefix: str = ""        # e.g. "panel 2/5 · ", put before the progress text

    def cancel(self) -> None:
        self.event.set()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def report(self, fraction: float, text: str) -> None:
        if self.progress is not None:
            try:
                self.progress(min(max(fraction, 0.0), 1.0), self.prefix + text)
            except Exception:  # a progress display must never break a generation
                log.debug("progress callback failed", exc_info=True)


class Jobs:
    """The running jobs of a service, by owner, so that one owner's Stop stops only its own."""

    def __init__(self):
        self._by_owner: dict[str, set] = {}
        self._lock = threading.Lock()

    @contextmanager
    def job(self, owner: str = "local", progress=None):
        job = Job(owner=owner, progress=progress)
        with self._lock:
            self._by_owner.setdefault(owner, set()).add(job)
        try:
            yield job
        finally:
            with self._lock:
                self._by_owner.get(owner, set()).discard(job)

    def cancel(self, owner: str) -> int:
        """Stop every running job of ``owner``; returns how many were told to stop."""
        with self._lock:
            jobs = list(self._by_owner.get(owner, ()))
        for job in jobs:
            job.cancel()
        return len(jobs)
