"""Auto-captioning runs: pick the frames, load the captioner once, caption in batches, save each
batch at once. Resumable (frames with a machine caption are skipped unless ``redo``) and cancellable
(a threading.Event checked between batches).

``run_captioning`` runs in the caller's thread (the CLI); ``CaptionWorker`` - the studio's service
(``service(studio)``) - runs it in one background thread for the UI, which polls ``snapshot()``, and
owns the loaded captioner (loaded once, shared by runs; ``close()`` stops the run and frees it).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dreamshot.errors import DreamShotError, InvalidInput

from labeling.captions import sources as caption_sources
from labeling.captions import service as captions
from labeling.captions.captioner import (DEFAULT_CAPTIONER, DEMO_CAPTIONER, Captioner, GenerationOptions,
                                        load_captioner, resolve_source)

log = logging.getLogger(__name__)

MAX_BATCH = 64


@dataclass(frozen=True)
class CaptionRequest:
    model: str = DEFAULT_CAPTIONER
    batch_size: int = 8
    prefix: str = ""
    max_new_tokens: int = 30
    min_new_tokens: int = 0
    num_beams: int = 1
    split: str = "train"
    redo: bool = False               # caption again frames that already have a machine caption
    frame_ids: tuple[int, ...] | None = None   # restrict to these frames (e.g. the current filter)

    def check(self) -> "CaptionRequest":
        if not 1 <= int(self.batch_size) <= MAX_BATCH:
            raise InvalidInput(f"The batch size must be 1-{MAX_BATCH}.")
        if self.split not in captions.SPLITS:
            raise InvalidInput(f"split must be one of {', '.join(captions.SPLITS)}")
        self.generation.check()
        return self

    @property
    def generation(self) -> GenerationOptions:
        min_new = int(self.min_new_tokens)
        if self.model == DEMO_CAPTIONER:  # random weights often stop at once
            min_new = max(min_new, min(3, int(self.max_new_tokens)))
        return GenerationOptions(prefix=self.prefix or "", max_new_tokens=int(self.max_new_tokens),
                                 min_new_tokens=min_new, num_beams=int(self.num_beams))


@dataclass
class CaptionProgress:
    state: str = "idle"        # idle, loading, running, done, cancelled, failed
    model: str = ""
    split: str = "train"
    total: int = 0             # frames to caption in this run
    done: int = 0              # frames processed (captioned, kept or failed)
    skipped: int = 0           # already captioned, not redone
    kept_human: int = 0        # a person's caption was kept; only the machine caption was stored
    failed: int = 0            # unreadable image or empty machine caption
    errors: list[str] = field(default_factory=list)
    started_at: float | None = None
    captioning_since: float | None = None
    finished_at: float | None = None
    message: str = ""

    @property
    def running(self) -> bool:
        return self.state in ("loading", "running")

    @property
    def eta_s(self) -> float | None:
        if self.state != "running" or not self.done or self.captioning_since is None:
            return None
        rate = (time.time() - self.captioning_since) / self.done
        return rate * (self.total - self.done)

    def summary(self) -> str:
        if self.state == "idle":
            return "No captioning run yet in this server process."
        head = {
            "loading": f"Loading captioner {self.model} ...",
            "running": f"Captioning {self.done}/{self.total} {self.split} frames with {self.model}",
            # captioned = processed - failed: the same count as the header's "N/M frames captioned"
            "done": f"Done: {self.done - self.failed}/{self.total} {self.split} frames captioned with {self.model}"
                    + (" (untrained demo captioner: random words, to try the workflow)"
                       if self.model == DEMO_CAPTIONER else ""),
            "cancelled": f"Cancelled after {self.done}/{self.total} frames (saved; run again to resume)",
            "failed": f"Failed: {self.message}",
        }[self.state]
        parts = [head]
        if self.state == "running" and self.total:
            eta = self.eta_s
            parts.append(f"{self.done / self.total:.0%}" + (f", ETA {_fmt_s(eta)}" if eta is not None else ""))
        if self.skipped:
            parts.append(f"{self.skipped} already captioned, skipped")
        if self.kept_human:
            parts.append(f"{self.kept_human} human captions kept")
        if self.failed:
            parts.append(f"{self.failed} failed ({'; '.join(self.errors[:3])}): write "
                         f"{'it' if self.failed == 1 else 'them'} in the editor (“(no caption)” in the list); "
                         "no run trains a frame without a caption")
        return " · ".join(parts)


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_captioning(studio, request: CaptionRequest, *, progress: CaptionProgress | None = None,
                   on_progress: Callable[[CaptionProgress], None] | None = None,
                   cancel: threading.Event | None = None) -> CaptionProgress:
    """Caption the frames of ``request.split``. DreamShotError for bad input or an unloadable
    captioner (nothing written then)."""
    # 1. check inputs (a captioner that cannot be had is reported even when nothing is left to do)
    request.check()
    resolve_source(request.model, models_dir=studio.settings.models_dir)
    p = progress or CaptionProgress()
    p.model, p.split, p.started_at = request.model, request.split, time.time()
    notify = on_progress or (lambda _p: None)
    # 2. choose frames: resumable, already captioned frames are skipped
    frames = caption_sources.labeled_frames(studio, request.split)
    ids = sorted(frames if request.frame_ids is None else set(frames) & set(map(int, request.frame_ids)))
    if not request.redo:
        have = captions.frames_with_machine_caption(studio, ids)
        p.skipped = len(have)
        ids = [f for f in ids if f not in have]
    p.total = len(ids)
    if not ids:
        p.state, p.finished_at = "done", time.time()
        notify(p)
        return p
    # 3. load the captioner (once per studio: the worker service keeps it)
    p.state = "loading"
    notify(p)
    captioner = service(studio).captioner(request.model)
    # 4. caption batch by batch, each batch committed before the next starts; the next batch's
    #    images are cropped in a helper thread while the model works on the current one
    p.state, p.captioning_since = "running", time.time()
    notify(p)
    options, size = request.generation, int(request.batch_size)
    batches = [ids[i:i + size] for i in range(0, len(ids), size)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="caption-images") as pool:
        pending = pool.submit(_load_images, studio, batches[0])
        for i in range(len(batches)):
            if cancel is not None and cancel.is_set():
                p.state = "cancelled"
                break
            loaded = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(_load_images, studio, batches[i + 1])
            _caption_batch(studio, captioner, loaded, options, p)
            notify(p)
        else:
            p.state = "done"
    p.finished_at = time.time()
    notify(p)
    return p


@dataclass
class _Loaded:
    frame_ids: list[int]
    images: list
    failures: list[tuple[int, str]]


def _load_images(studio, batch: list[int]) -> _Loaded:
    loaded = _Loaded([], [], [])
    for fid in batch:
        try:
            loaded.images.append(caption_sources.frame_image(studio, fid))
            loaded.frame_ids.append(fid)
        except (OSError, DreamShotError) as exc:
            loaded.failures.append((fid, f"image unreadable: {exc.__class__.__name__}"))
    return loaded


def _caption_batch(studio, captioner, loaded: _Loaded, options: GenerationOptions, p: CaptionProgress) -> None:
    for fid, why in loaded.failures:
        _fail(p, fid, why)
    texts = captioner.caption(loaded.images, options) if loaded.images else []
    for fid, text in zip(loaded.frame_ids, texts):
        if not text:
            _fail(p, fid, "empty machine caption")
    items = [(fid, text) for fid, text in zip(loaded.frame_ids, texts) if text]
    outcomes = captions.save_machine_captions(studio, items, model=captioner.spec, prompt=options.prefix)
    p.kept_human += outcomes.count("kept")
    p.done += len(items)


def _fail(p: CaptionProgress, frame_id: int, why: str) -> None:
    p.failed += 1
    p.done += 1
    if len(p.errors) < 20:
        p.errors.append(f"frame {frame_id}: {why}")


class CaptionWorker:
    """The studio's captioning service: one background run at a time, and the loaded captioner."""

    def __init__(self, studio):
        self.studio = studio
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._progress = CaptionProgress()
        self._load_lock = threading.Lock()
        self._captioner: Captioner | None = None

    # ---- the loaded captioner ------------------------------------------------------------------
    def captioner(self, spec: str = DEFAULT_CAPTIONER) -> Captioner:
        """The captioner for ``spec``, loaded on first use and then shared by every run.
        Only one is kept: loading another one frees the previous one first."""
        source, _ = resolve_source(spec, models_dir=self.studio.settings.models_dir)
        with self._load_lock:
            if self._captioner is None or self._captioner.source != source:
                self._captioner = None
                self._captioner = load_captioner(spec, models_dir=self.studio.settings.models_dir,
                                                 dtype=self.studio.settings.dtype)
            return self._captioner

    @property
    def loaded(self) -> str | None:
        """The spec of the loaded captioner, or None."""
        captioner = self._captioner
        return captioner.spec if captioner is not None else None

    def unload(self) -> None:
        """Free the loaded captioner (e.g. before training needs the memory)."""
        with self._load_lock:
            self._captioner = None

    # ---- the background run ----------------------------------------------------------------------
    def start(self, request: CaptionRequest) -> CaptionProgress:
        request.check()
        resolve_source(request.model, models_dir=self.studio.settings.models_dir)  # bad ids: reported now
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise InvalidInput("A captioning run is already in progress; wait for it or cancel it.")
            self._cancel = threading.Event()
            self._progress = CaptionProgress(state="loading", model=request.model, split=request.split,
                                             started_at=time.time())
            self._thread = threading.Thread(target=self._run, args=(request, self._progress, self._cancel),
                                            name="captioning", daemon=True)
            self._thread.start()
            return copy.deepcopy(self._progress)

    def _run(self, request, progress, cancel) -> None:
        try:
            run_captioning(self.studio, request, progress=progress, cancel=cancel)
        except DreamShotError as exc:
            progress.state, progress.message = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - the log has the details, the UI a short line
            log.exception("captioning run failed")
            progress.state, progress.message = "failed", f"internal error ({exc.__class__.__name__}); see the server log"
        finally:
            progress.finished_at = progress.finished_at or time.time()

    def cancel(self) -> bool:
        """Ask the running job to stop after its current batch; False when nothing is running."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if running:
                self._cancel.set()
            return running

    def snapshot(self) -> CaptionProgress:
        with self._lock:
            return copy.deepcopy(self._progress)

    def just_finished(self, within_s: float = 5.0) -> bool:
        """A run ended in the last ``within_s`` seconds (the UI refreshes its list once then)."""
        p = self.snapshot()
        return not p.running and p.finished_at is not None and time.time() - p.finished_at <= within_s

    def wait(self, timeout: float | None = None) -> CaptionProgress:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.snapshot()

    def close(self) -> None:
        """Stop a running job after its current batch (what it saved stays) and free the captioner."""
        self.cancel()
        self.wait(60)
        self.unload()


def service(studio) -> CaptionWorker:
    """The studio's captioning service."""
    return studio.service(CaptionWorker)
