"""The status-file protocol between a trainer process and whoever watches it (the job runner, the
Train tab, the CLI): one JSON object per line in ``<run>/status.jsonl``.

Events, in the order a run writes them: ``launch`` (the runner, before the process starts),
``caching``, ``class_images``, ``resume``, ``start``, then ``step`` (loss, lr, it/s, ETA),
``validation`` (image paths), ``checkpoint``, ``warning``; a run ends with exactly one of ``done``,
``cancelled`` or ``error`` (``kind``: input, oom, disk_full, diverged, internal).

Writers append whole lines and flush; readers skip a line that is still being written. This module
imports nothing heavy: the runner and the tab read status files without loading torch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dreamshot.safety import RedactSecrets

STATUS_FILE = "status.jsonl"
ENDINGS = ("done", "cancelled", "error")
EXIT_CODES = {"input": 2, "oom": 3, "disk_full": 4, "diverged": 5}  # python -m training's exit status


class StatusLog:
    """Appends one JSON object per line to ``status.jsonl`` (main process only)."""

    def __init__(self, path: Path | None, echo: bool = False):
        self.path = path
        self.echo = echo  # also print a readable line (the run's log)
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> None:
        if self.path is None:
            return
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields})
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(line + "\n")
        self._fh.flush()  # readers (the job runner, the tab) see every complete line at once
        if self.echo:
            print(human(event, fields), flush=True)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def human(event: str, f: dict) -> str:
    """One readable log line for a status event."""
    if event == "step":
        speed = f" {f['it_s']:.2f} it/s, ETA {f['eta_s']:.0f}s" if f.get("it_s") else ""
        return f"step {f['step']}/{f['total_steps']} loss {f['loss']:.4f} lr {f['lr']:.2e}{speed}"
    if event == "error":
        return f"ERROR ({f.get('kind')}): {f.get('message')}"
    details = ", ".join(f"{k}={v}" for k, v in f.items() if k not in ("prompts",) and v is not None)
    return f"{event}: {details}"


def _parse(lines) -> list[dict]:
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return events


def read_status(path: Path) -> list[dict]:
    """Every complete event of a status file (none when it does not exist yet)."""
    try:
        return _parse(Path(path).read_text(encoding="utf-8").splitlines())
    except OSError:
        return []


class StatusReader:
    """Incremental reader of status files: each poll parses only the bytes added since the last."""

    def __init__(self):
        self._files: dict[Path, tuple[int, list]] = {}

    def events(self, path: Path) -> list[dict]:
        offset, events = self._files.get(path, (0, []))
        try:
            size = path.stat().st_size
        except OSError:
            return events
        if size < offset:  # the file was replaced: start over
            offset, events = 0, []
        if size > offset:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read(size - offset)
            complete = chunk.rfind(b"\n") + 1
            events = events + _parse(chunk[:complete].decode("utf-8", "replace").splitlines())
            self._files[path] = (offset + complete, events)
        return events


def last_ending(events: list[dict]) -> dict | None:
    """The ``done``/``cancelled``/``error`` event of the latest launch, if it has ended."""
    last_launch = max((i for i, e in enumerate(events) if e.get("event") == "launch"), default=-1)
    for e in reversed(events[last_launch + 1:]):
        if e.get("event") in ENDINGS:
            return e
    return None


def tail(path: Path, lines: int = 30, max_bytes: int = 64_000) -> str:
    """The last ``lines`` non-empty lines of a log file, secrets masked."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return RedactSecrets().redact("\n".join([l for l in text.splitlines() if l.strip()][-lines:]))


# ---- errors, as the tab and the log show them -----------------------------------------------------
def classify_error(exc: BaseException, step: int | None = None) -> tuple[str, str]:
    """(kind, message for the user) of an exception that ended a run."""
    import errno

    from dreamshot.errors import DreamShotError

    at = f" at step {step}" if step else ""
    if isinstance(exc, DreamShotError):
        return "input", str(exc)
    if _is_oom(exc):
        return "oom", (f"Out of memory{at}. Lower --batch-size or --resolution, turn on "
                       "--gradient-checkpointing, or use mixed precision; then resume from the last checkpoint.")
    if isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or "No space left" in str(exc)):
        return "disk_full", (f"The disk is full{at}: free space in the data folder, then resume. "
                             "No unfinished LoRA was presented as finished; checkpoints already saved are kept.")
    if isinstance(exc, FloatingPointError):
        return "diverged", str(exc)
    return "internal", f"Training failed{at}: {exc.__class__.__name__}: {exc}"


def _is_oom(exc: BaseException) -> bool:
    import sys

    types = [MemoryError]
    torch = sys.modules.get("torch")  # an OOM from torch means torch is loaded; never import it here
    if torch is not None:
        types += [t for t in (getattr(torch, "OutOfMemoryError", None),
                              getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t]
    return isinstance(exc, tuple(types)) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())
