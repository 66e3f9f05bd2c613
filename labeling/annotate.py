"""The labeling session behind the Label tab (and the benchmark): sampler + actions + prefetched
previews, one service per studio (``service(studio)`` = ``studio.service(Annotation)``). Every call
reads its state from the database (through the sampler's cache that is rebuilt from it), so a
reloaded page or a restarted server resumes where the annotator was.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamshot.access import clean_name
from dreamshot.errors import InvalidInput

from labeling import crop, labels
from labeling.sampler import Sampler

PREFETCH = 4
ALL_MET = "Every quota is met. Further labels are kept as extras (not used for training by default)."


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
    last: labels.ActionResult | None = None  # the action this view answers (label/reject/skip/undo)


class Annotation:
    def __init__(self, studio):
        self.studio = studio
        self.sampler = Sampler(studio)
        self.previews = crop.Previews(studio)

    def close(self) -> None:  # called by Studio.close()
        self.previews.close()

    def reset(self) -> None:
        """The pool or the queue settings changed (an import, new settings): rebuild the queues."""
        self.sampler.reset()

    def view(self, annotator: str, message: str = "", last: labels.ActionResult | None = None) -> FrameView:
        with labels.settings_snapshot(self.studio):
            view = self._view(clean_name(annotator), message, last)
        view.last = last
        return view

    def _view(self, annotator: str, message: str, last: labels.ActionResult | None) -> FrameView:
        ids = self.sampler.upcoming(annotator, PREFETCH + 1)
        current = ids[0] if ids else None
        self.previews.prefetch(ids[1:])
        progress = labels.progress(self.studio)
        message = message or _action_note(last, progress)
        if progress.all_met and not message:
            message = ALL_MET
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
            raise InvalidInput("Nothing was labeled: no frame was shown yet.")
        shown = self.previews.peek(int(frame_id))
        box = shown["box"] if shown and not shown["stored"] else None
        with labels.settings_snapshot(self.studio):
            result = labels.record(self.studio, annotator, int(frame_id), action, crop_box=box)
        self.sampler.on_action(annotator, result.frame_id, result.action)
        if box is not None:
            self.previews.mark_stored(int(frame_id))
        return self.view(annotator, last=result)

    def undo(self, annotator: str) -> FrameView:
        annotator = clean_name(annotator)
        result = labels.undo(self.studio, annotator)
        if result is None:
            return self.view(annotator, "Nothing to undo.")
        if result.restored is None:  # an undone relabel leaves the frame labeled (the earlier label)
            self.sampler.on_undo(annotator, result.frame_id, result.action)
            return self.view(annotator, f"Undid {result.value} on frame {result.frame_id}.", last=result)
        return self.view(annotator, f"Undid the relabel of frame {result.frame_id}: it is {result.restored} "
                                    "again.", last=result)

    def nudge(self, annotator: str, frame_id: int | None, direction: str) -> FrameView:
        annotator = clean_name(annotator)
        if frame_id is None:
            raise InvalidInput("Nothing to crop: no frame was shown yet.")
        crop.nudge(self.studio, int(frame_id), direction)
        self.previews.invalidate(int(frame_id))
        return self.view(annotator)


def _action_note(result: labels.ActionResult | None, progress: labels.Progress) -> str:
    """What the annotator is told about the action they just took (the quota note agrees with the
    stats: both read ``progress``)."""
    if result is None:
        return ""
    if result.duplicate:
        return f"Frame {result.frame_id} was already {_done(result.value)} by you: nothing changed."
    if result.relabeled_from is not None:
        return (f"Relabeled frame {result.frame_id}: {result.relabeled_from} -> {result.value} "
                "(the earlier label is kept in the history; u undoes the relabel).")
    if result.shot and result.frame_id in progress.extra_frames and not progress.all_met:
        return f"The {result.shot} quota is full: this label is kept as an extra."
    return ""


def _done(value: str) -> str:
    return "rejected" if value == labels.REJECT else f"labeled {value}"


def service(studio) -> Annotation:
    """The studio's one labeling session service."""
    return studio.service(Annotation)
