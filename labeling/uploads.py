"""Import files uploaded through the browser (no gradio here: the tab hands over their paths).

One ``.zip`` or one video is imported where it lies; several files are copied into a temporary
``dreamshot-upload-*`` folder that is removed as soon as the import ends (done, refused or failed)
and, for anything still open, when the studio closes. The report and ``frames.source`` name the
uploaded files, never the temporary folder.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from dreamshot.errors import InvalidInput

from labeling import pool
from labeling.sources import VIDEO_EXTS

PREFIX = "dreamshot-upload-"
MAX_NAMED = 5


def describe(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    return f"upload of {len(names)} file{'s' if len(names) != 1 else ''}: {shown}{more}"


class Uploads:
    """The studio's temporary upload folders (``studio.service(Uploads)``)."""

    def __init__(self, studio):
        self.studio = studio
        self._open: set[Path] = set()
        self._lock = threading.Lock()

    def run_import(self, files: list[str], opts: pool.ImportOptions, progress=None) -> pool.ImportReport:
        """Import the uploaded ``files`` with ``opts`` (its ``source`` is ignored)."""
        paths = [Path(f) for f in files if f]
        if not paths:
            raise InvalidInput("Upload at least one file.")
        names = [p.name for p in paths]
        if len(paths) == 1 and paths[0].suffix.lower() in {".zip", *VIDEO_EXTS}:
            return pool.run_import(self.studio, replace(opts, source=str(paths[0]), kind=None,
                                                        source_name=paths[0].name), progress=progress)
        folder = Path(tempfile.mkdtemp(prefix=PREFIX))
        with self._lock:
            self._open.add(folder)
        try:
            for i, path in enumerate(paths):
                target = folder / path.name
                if target.exists():  # two uploads with one name: keep both
                    target = folder / f"{path.stem}-{i}{path.suffix}"
                shutil.copyfile(path, target)
            return pool.run_import(self.studio, replace(opts, source=str(folder), kind=None,
                                                        source_name=describe(names)), progress=progress)
        finally:
            self._remove(folder)

    def _remove(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        with self._lock:
            self._open.discard(folder)

    def close(self) -> None:
        for folder in list(self._open):
            self._remove(folder)


def service(studio) -> Uploads:
    return studio.service(Uploads)
