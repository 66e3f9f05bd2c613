"""The labeling session behind the Label tab (and the benchmark): sampler + actions + prefetched
previews + the shot-type model's suggestions, one service per studio (``service(studio)`` =
``studio.service(Annotation)``). Every call reads its state from the database (through the
sampler's cache that is rebuilt from it), so a reloaded page or a restarted server resumes where
the annotator was - in the queue they chose (train or held-out frames, an order), stored per
annotator.

Suggestions: the class the model gives a frame is pinned for that annotator when the frame is first
shown (a refit meanwhile does not change what they saw); ``accept`` labels it with
``source=suggested``. A seeded share of frames is shown without it (a blind check: the honest
measure of the model). Every label stores how it was given (``labels.Provenance``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from dreamshot.access import clean_name
from dreamshot.errors import InvalidInput

from labeling import crop, labels
from labeling.sampler import SPLITS, TRAIN, QueueKey, QueueSettings, Sampler, fraction
from labeling.suggest import orders
from labeling.suggest.model import Suggestion
from labeling.suggest.service import PREFIX, SuggestSettings, service as suggest_service

PREFETCH = 4
ALL_MET = "Every quota is met. Further labels are kept as extras (not used for training by default)."
ACCEPT = "accept"
QUEUE_PREFIX = "label_queue:"
PINNED = 5000


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
    queue: QueueKey = TRAIN
    suggestion: Suggestion | None = None       # for the current frame (shown, or held back: shown=False)
    next_suggestion: Suggestion | None = None
    suggest_note: str = ""                     # the model's state when there is no suggestion to show


def is_blind(seed: int, annotator: str, frame_id: int, share: float) -> bool:
    return share > 0 and fraction(seed, "blind", annotator, frame_id) < share


class Annotation:
    def __init__(self, studio):
        self.studio = studio
        self.suggest = suggest_service(studio)
        self.sampler = Sampler(studio, ranker=self.suggest.ranker)
        self.previews = crop.Previews(studio)
        self._shown: OrderedDict[tuple[str, int], Suggestion] = OrderedDict()
        self._told: set[str] = set()      # annotators told that suggestions are unavailable

    def close(self) -> None:  # called by Studio.close()
        self.previews.close()

    def reset(self) -> None:
        """The pool or the queue settings changed (an import, new settings): rebuild the queues."""
        self.sampler.reset()
        self.suggest.notify()

    # ---- the annotator's queue ----------------------------------------------------------------
    def queue_of(self, annotator: str) -> QueueKey:
        stored = labels.setting(self.studio, QUEUE_PREFIX + annotator) or {}
        split = stored.get("split") if stored.get("split") in SPLITS else "train"
        try:
            order = orders.check(stored.get("order") or "random", labels.current_taxonomy(self.studio))
        except InvalidInput:   # a review of a class the taxonomy no longer has
            order = "random"
        return QueueKey(split, order)

    def set_queue(self, annotator: str, split: str, order: str) -> FrameView:
        """Which frames (train or held-out) and in which order this annotator labels from now on."""
        annotator = clean_name(annotator)
        if split not in SPLITS:
            raise InvalidInput(f"Frames must be one of: {', '.join(SPLITS)} (train or held-out).")
        taxonomy = labels.current_taxonomy(self.studio)
        order = orders.check(order, taxonomy)
        self.studio.db.set_setting(QUEUE_PREFIX + annotator, {"split": split, "order": order})
        what = "held-out frames (not counted in quotas)" if split == "test" else "train frames"
        return self.view(annotator, f"Now labeling {what}, order: {orders.describe(order, taxonomy)}.")

    # ---- views ----------------------------------------------------------------------------------
    def view(self, annotator: str, message: str = "", last: labels.ActionResult | None = None) -> FrameView:
        self.suggest.start()
        with labels.settings_snapshot(self.studio):
            view = self._view(clean_name(annotator), message, last)
        view.last = last
        return view

    def _view(self, annotator: str, message: str, last: labels.ActionResult | None) -> FrameView:
        key = self.queue_of(annotator)
        ids = self.sampler.upcoming(annotator, PREFETCH + 1, key)
        current = ids[0] if ids else None
        self.previews.prefetch(ids[1:])
        progress = labels.progress(self.studio)
        message = message or _action_note(last, progress)
        if progress.all_met and not message and key.split == "train":
            message = ALL_MET
        if current is None:
            empty = {"train": "No frame left to label for you", "test": "No held-out frame left to label for you"}
            hint = (f" that the model calls {key.order[len(orders.REVIEW):]} (pre-label the pool, or choose another "
                    "order)." if key.order.startswith(orders.REVIEW) else
                    ". Import more frames or ask for a new seed.")
            if key.split == "train" and (held := self.sampler.remaining(annotator, QueueKey("test"))):
                hint = f" among the train frames; {held} held-out frames wait: choose Frames -> Held-out frames."
            return FrameView(annotator, None, None, None, None, None, progress,
                             message or empty[key.split] + hint, 0, queue=key)
        p = self.previews.get(current)
        view = FrameView(annotator, current, p["crop"], p["full"], p["box"], p["size"], progress, message,
                         self.sampler.remaining(annotator, key), queue=key,
                         suggestion=self._suggestion(annotator, current, key))
        if view.suggestion is None and self.suggest.state == "learning":   # how far from the first suggestion
            view.suggest_note = self.suggest.message
        elif self.suggest.state == "unavailable" and annotator not in self._told:   # said once (and in the panel)
            self._told.add(annotator)
            view.suggest_note = self.suggest.message
        if len(ids) > 1:
            try:
                view.next_id, view.next_preview = ids[1], self.previews.get(ids[1])
                view.next_suggestion = self._suggestion(annotator, ids[1], key)
            except Exception:  # an unreadable next frame: the browser just waits for the server
                view.next_id = None
        return view

    def _suggestion(self, annotator: str, frame_id: int, key: QueueKey) -> Suggestion | None:
        """What this annotator is (or was) shown for the frame: pinned once shown."""
        pin = (annotator, int(frame_id))
        if pin in self._shown:
            return self._shown[pin]
        found = self.suggest.suggestion(frame_id, key.order)
        if found is None:
            return None
        share = float(labels.setting(self.studio, PREFIX + "blind_share", SuggestSettings.blind_share))
        if not key.order.startswith(orders.REVIEW) and is_blind(QueueSettings.of(self.studio).seed, annotator,
                                                                 frame_id, share):
            found = replace(found, shown=False)
        self._shown[pin] = found
        while len(self._shown) > PINNED:
            self._shown.popitem(last=False)
        return found

    # ---- actions --------------------------------------------------------------------------------
    def act(self, annotator: str, frame_id: int | None, action: str) -> FrameView:
        annotator = clean_name(annotator)
        if frame_id is None:
            raise InvalidInput("Nothing was labeled: no frame was shown yet.")
        shown = self.previews.peek(int(frame_id))
        box = shown["box"] if shown and not shown["stored"] else None
        with labels.settings_snapshot(self.studio):
            key = self.queue_of(annotator)
            given = self._shown.get((annotator, int(frame_id)))
            seen = given.shown if given is not None else None   # None: not known what the page showed
            if given is None:   # not shown by this process (a restart, the API, a model ready since)
                given = self._suggestion(annotator, int(frame_id), key)
                seen = given.shown if given is not None and action == ACCEPT else None
            source = "typed"
            if action == ACCEPT:
                if given is None or not given.shown:
                    raise InvalidInput("There is no suggestion on this frame to accept: press a class key.")
                action, source = given.shot, "suggested"
            provenance = labels.Provenance(
                source=source, queue_order=key.label, predicted=given.shot if given else None,
                confidence=given.confidence if given else None, model_labels=given.model_labels if given else None,
                suggestion_shown=seen)
            result = labels.record(self.studio, annotator, int(frame_id), action, crop_box=box, provenance=provenance)
        self.sampler.on_action(annotator, result.frame_id, result.action)
        if result.action != "skip":
            self._shown.pop((annotator, int(frame_id)), None)
        if box is not None:
            self.previews.mark_stored(int(frame_id))
        self.suggest.notify()
        return self.view(annotator, last=result)

    def undo(self, annotator: str) -> FrameView:
        annotator = clean_name(annotator)
        result = labels.undo(self.studio, annotator)
        if result is None:
            return self.view(annotator, "Nothing to undo.")
        self.suggest.notify()
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
