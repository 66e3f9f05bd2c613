"""The labeling session behind the Label tab (and the benchmark): sampler + actions + prefetched
previews, one service per studio. Every call reads its state from the database (through the sampler's
cache that is rebuilt from it), so a reloaded page or a restarted server resumes where the
annotator was.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dreamshot.access import clean_name
from dreamshot.errors import InvalidInput

from labeling import crop, labels
from labeling.sampler import Sampler

PREFETCH = 4
_SERVICES: dict[int, "Annotation"] = {}
_LOCK = threading.Lock()


@dataclass
class FrameView:
    annotator: str
    frame_id: int | None
    crop_jpeg: bytes | None
    full_jpeg: bytes | None
    box: list[int] | None
    size: tuple[int, int] | None
    progress: labels.Progress
    message: str
    remaining: int
    next_id: int | None = None        # the frame that follows a label/reject/skip (for the browser to
    next_preview: dict | None = None  # show at once, before the server confirms)


class Annotation:
    def __init__(self, studio):
        self.studio = studio
        self.sampler = Sampler(studio)
        self.previews = crop.Previews(studio)

    @classmethod
    def of(cls, studio) -> "Annotation":
        with _LOCK:
            service = _SERVICES.get(id(studio))
            if service is None or service.studio is not studio:
                service = _SERVICES[id(studio)] = cls(studio)
            return service

    def view(self, annotator: str, message: str = "") -> FrameView:
        with labels.settings_snapshot(self.studio):
            return self._view(clean_name(annotator), message)

    def _view(self, annotator: str, message: str) -> FrameView:
        ids = self.sampler.upcoming(annotator, PREFETCH + 1)
        current = ids[0] if ids else None
        self.previews.prefetch(ids[1:])
        progress = labels.progress(self.studio)
        if progress.all_met and not message:
            message = "Every quota is met. Further labels are kept as extras (not used for training by default)."
        if current is None:
            return FrameView(annotator, None, None, None, None, None, progress,
                             message or "No frame left to label for you. Import more frames or ask for a new seed.", 0)
        p = self.previews.get(current)
        view = FrameView(annotator, current, p["crop"], p["full"], p["box"], p["size"], progress, message,
                         self.sampler.remaining(annotator))
        if len(ids) > 1:
            try:
                view.next_id, view.next_preview = ids[1], self.previews.get(ids[1])
            except Exception:  # an unreadable next frame: the browser just waits for the server
                view.next_id = None
        return view

    def act(self, annotator: str, frame_id: int | None, action: str) -> FrameView:
        annotator = clean_name(annotator)
        if frame_id is None:
            raise InvalidInput("There is no frame to label.")
        shown = self.previews.peek(int(frame_id))
        box = shown["box"] if shown and not shown["stored"] else None
        with labels.settings_snapshot(self.studio):
            result = labels.record(self.studio, annotator, int(frame_id), action, crop_box=box)
        self.sampler.on_action(annotator, result.frame_id, result.action)
        note = ""
        if result.is_extra and not result.duplicate:
            note = f"The {result.shot} quota is full: this label is kept as an extra."
        if box is not None:
            self.previews.mark_stored(int(frame_id))
        return self.view(annotator, note)

    def undo(self, annotator: str) -> FrameView:
        annotator = clean_name(annotator)
        result = labels.undo(self.studio, annotator)
        if result is None:
            return self.view(annotator, "Nothing to undo.")
        self.sampler.on_undo(annotator, result.frame_id, result.action)
        what = result.shot or result.action
        return self.view(annotator, f"Undid {what} on frame {result.frame_id}.")

    def nudge(self, annotator: str, frame_id: int | None, direction: str) -> FrameView:
        annotator = clean_name(annotator)
        if frame_id is None:
            raise InvalidInput("There is no frame to crop.")
        crop.nudge(self.studio, int(frame_id), direction)
        self.previews.invalidate(int(frame_id))
        return self.view(annotator)
