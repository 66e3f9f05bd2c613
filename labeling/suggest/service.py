"""The studio's shot-type model for annotators (one ``SuggestService`` per studio).

A background thread (started by the Label tab's first view) does all the slow work, one short step
at a time: load the CLIP of Evaluate's judge (``embedders.default_clip``: the same setting), compute
missing frame features in batches (``features``; labeled frames first; stored at once, so it
resumes after a restart and picks up frames imported later), and refit the probe (``model``) when
``refit_labels`` new labels arrived or ``refit_seconds`` passed with any - never on the key path.
The key path only reads ``snapshot`` (replaced whole by a refit) and never takes the worker's lock.

No CLIP (offline and not cached, a bad folder): ``state == "unavailable"``, the message says why
once, labeling works as without suggestions. A frame the model was fit on gets no suggestion (an
overlap frame's second annotator must not be shown the first one's label through the model).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput, ModelLoadError
from dreamshot.evaluate.judge import MIN_PER_CLASS
from dreamshot.storage import now

from labeling.suggest import features, model
from labeling.suggest.model import Suggestion
from labeling.suggest.orders import REVIEW, Ranker

log = logging.getLogger(__name__)
L, S = schema.labels, schema.frame_suggestions
BATCH = 32
IDLE_S = 2.0
ACTIVE_S = 5.0        # a key pressed this recently: annotators are at work, the worker yields to them
ACTIVE_BATCH = 8      # ... with smaller batches
ACTIVE_DUTY = 0.25    # ... computing at most this share of the time (the server's CPU and GIL are shared)
REPREDICT_S = 10.0
PREFIX = "suggest_"


@dataclass(frozen=True)
class SuggestSettings:
    enabled: bool = True
    min_per_class: int = MIN_PER_CLASS   # labels of every shot type before the first suggestion
    refit_labels: int = 10               # refit after this many new labels ...
    refit_seconds: float = 30.0          # ... or this long after the last fit, when any arrived
    blind_share: float = 0.1             # frames shown without their suggestion (honest accuracy)

    @classmethod
    def of(cls, studio) -> "SuggestSettings":
        from labeling.labels import setting

        stored = {k: setting(studio, PREFIX + k) for k in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in stored.items() if v is not None})

    def check(self) -> "SuggestSettings":
        try:
            clean = replace(self, enabled=bool(self.enabled), min_per_class=int(self.min_per_class),
                            refit_labels=int(self.refit_labels), refit_seconds=float(self.refit_seconds),
                            blind_share=float(self.blind_share))
        except (TypeError, ValueError):
            raise InvalidInput("Suggestion settings: labels and seconds are numbers.") from None
        if not 2 <= clean.min_per_class <= 1000:
            raise InvalidInput("Labels per shot type before suggestions: 2-1000.")
        if not 1 <= clean.refit_labels <= 10_000 or not 1 <= clean.refit_seconds <= 86_400:
            raise InvalidInput("Refit every 1-10000 labels and 1-86400 seconds.")
        if not 0 <= clean.blind_share <= 0.5:
            raise InvalidInput("The blind-check share is between 0 and 0.5.")
        return clean

    def save(self, studio) -> "SuggestSettings":
        clean = self.check()
        for k in self.__dataclass_fields__:
            studio.db.set_setting(PREFIX + k, getattr(clean, k))
        return clean


class SuggestService:
    def __init__(self, studio):
        self.studio = studio
        self.ranker = Ranker(self)
        self.snapshot: model.Snapshot | None = None
        self.state, self.message = "idle", "Suggestions start with the first frame shown."
        self.shortfall: dict[str, int] = {}
        self.progress = (0, 0)                   # frames with features, usable frames
        self.rate: float | None = None           # features per second (last batch)
        self._features: dict = {}
        self.spec: str | None = None             # the CLIP; None: Evaluate's setting (embedders.default_clip)
        self._clip = self._key = self._clip_error = None
        self._thread: threading.Thread | None = None
        self._stop, self._wake = threading.Event(), threading.Event()
        self._lock = threading.RLock()           # the worker's data (features, fits); never the key path
        self._version = 0
        self._fit_stamp = None
        self._unfeatured = self._fit_features = 0   # labels without features at the last fit; features then
        self._fitted_at = self._predicted_at = 0.0
        self._pre: tuple = (None, {})
        self._pre_version: tuple | None = None    # (version, when read): re-read at most every POOL_CHECK_S
        self._last_key = -ACTIVE_S

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if (self._thread is not None and self._thread.is_alive()) or self._stop.is_set():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="label-suggest", daemon=True)
                self._thread.start()

    def notify(self) -> None:
        """Labels or the pool changed: the worker looks now rather than at its next tick (and yields
        the CPU while keys keep coming: ``ACTIVE_S``)."""
        self._last_key = time.monotonic()
        self._wake.set()

    @property
    def annotators_active(self) -> bool:
        return time.monotonic() - self._last_key < ACTIVE_S

    def settings_changed(self) -> None:
        self._clip_error = None
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---- the key path: lookups only ---------------------------------------------------------------
    def suggestion(self, frame_id: int, order: str = "random") -> Suggestion | None:
        """The model's class for a frame (a review queue: its pre-label); None when there is none,
        or when the model was fit on this frame's label."""
        from labeling.labels import setting

        if not setting(self.studio, PREFIX + "enabled", True):
            return None
        if order.startswith(REVIEW) and (pre := self.prelabel_of(frame_id)) is not None:
            return pre
        snap = self.snapshot
        if snap is None or int(frame_id) in snap.trained_on:
            return None
        return snap.suggest(frame_id)

    def prelabels_version(self):
        """Changes when pre-labels are written. Asked on every key in a review order, so read from the
        database at most every ``POOL_CHECK_S`` seconds, as the sampler reads the pool (pre-labels
        written in this process are seen at once; by a CLI, within that time)."""
        from labeling.labels import current_taxonomy
        from labeling.sampler import POOL_CHECK_S

        cached = self._pre_version
        if cached is not None and time.monotonic() - cached[1] < POOL_CHECK_S:
            return cached[0]
        version = self._read_prelabels_version(current_taxonomy(self.studio).name)
        self._pre_version = (version, time.monotonic())
        return version

    def _read_prelabels_version(self, taxonomy: str):
        with self.studio.db.read() as conn:
            n, last = conn.execute(sa.select(sa.func.count(), sa.func.max(S.c.created_at))
                                   .where(S.c.taxonomy == taxonomy)).one()
        return (taxonomy, n, last) if n else None

    def prelabels(self) -> dict[int, tuple[str, float, float, int]]:
        version = self.prelabels_version()
        if version != self._pre[0]:
            with self.studio.db.read() as conn:
                rows = conn.execute(sa.select(S.c.frame_id, S.c.shot, S.c.confidence, S.c.margin, S.c.model_labels)
                                    .where(S.c.taxonomy == (version or ("",))[0])).all()
            self._pre = (version, {r.frame_id: (r.shot, r.confidence, r.margin, r.model_labels) for r in rows})
        return self._pre[1]

    def prelabel_of(self, frame_id: int) -> Suggestion | None:
        row = self._pre[1].get(int(frame_id))
        return None if row is None else Suggestion(row[0], row[1], row[2], row[3], origin="pre-label")

    # ---- the worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:   # a bug or a lost database must not kill labeling: log, back off
                log.exception("suggestions: background step failed")
                self.state, self.message = "error", "Suggestions paused after an error (see the server log)."
                busy = False
                self._stop.wait(10)
            if not busy:
                self._wake.wait(IDLE_S)
                self._wake.clear()

    def step(self) -> bool:
        """One unit of background work; True when there may be more to do at once."""
        settings = SuggestSettings.of(self.studio)
        if not settings.enabled:
            self.state, self.message = "off", "Suggestions are turned off (Suggestions panel)."
            return False
        if not self._ensure_clip():
            return False
        with self._lock:
            if self._refit_due(settings):
                self.refit(settings)
                self._describe(settings)
                return True
            active = self.annotators_active
            todo = features.missing(self.studio, self._key, ACTIVE_BATCH if active else BATCH)
            spent = 0.0
            if todo:
                t0 = time.perf_counter()
                self._features.update(features.extract(self.studio, self._clip, self._key, todo))
                spent = time.perf_counter() - t0
                self.rate = len(todo) / max(spent, 1e-6)
            self.progress = features.counts(self.studio, self._key)
            self._repredict(force=not todo)
        self._describe(settings)
        if todo:   # leave the CPU to requests between batches; most of it while people are labeling
            self._stop.wait(spent * (1 / ACTIVE_DUTY - 1) if active else 0.05)
        return bool(todo)

    def _ensure_clip(self) -> bool:
        if self._clip is not None:
            return True
        if self._clip_error:
            return False
        from dreamshot.evaluate import embedders
        from dreamshot.evaluate.service import service as evaluation

        spec = self.spec or embedders.default_clip(self.studio)
        self.state, self.message = "loading", f"Loading CLIP {spec} for suggestions ..."
        try:
            clip = evaluation(self.studio).clip(spec)
        except ModelLoadError as exc:
            self._clip_error = str(exc)
            self.state, self.message = "unavailable", f"Suggestions are off: {exc} Labeling works as usual."
            log.warning("label suggestions off: %s", exc)
            return False
        with self._lock:
            self._key = features.model_key(clip.pin)
            self._features = features.load(self.studio, self._key)
            self._clip = clip
        return True

    def _label_stamp(self) -> tuple:
        from labeling.labels import current_taxonomy

        with self.studio.db.read() as conn:
            rows, undone = conn.execute(sa.select(sa.func.count(), sa.func.count(L.c.undone_at))
                                        .where(L.c.action.in_(["label", "reject", "resolve"]))).one()
        return current_taxonomy(self.studio).name, rows, undone

    def _refit_due(self, settings: SuggestSettings) -> bool:
        stamp = self._label_stamp()
        last = self._fit_stamp
        if last is None or last[0] != stamp[0]:
            return True
        if stamp == last:   # no new label; but labeled frames that had no features then may have now
            return bool(self._unfeatured) and len(self._features) > self._fit_features
        if self.snapshot is None:
            return True
        return stamp[1] - last[1] >= settings.refit_labels or time.time() - self._fitted_at >= settings.refit_seconds

    def refit(self, settings: SuggestSettings | None = None) -> model.Snapshot | None:
        """Fit the model on every settled label now (the worker calls this; so may tests and the CLI)."""
        from labeling.labels import current_taxonomy, final_labels

        settings = settings or SuggestSettings.of(self.studio)
        with self._lock:
            stamp = self._label_stamp()
            labels = final_labels(self.studio, include_extra=True)
            classes = current_taxonomy(self.studio).names
            self.shortfall = model.shortfall(labels, self._features, classes, settings.min_per_class)
            self._fit_stamp, self._fitted_at = stamp, time.time()
            self._unfeatured = sum(1 for fid in labels if fid not in self._features)
            self._fit_features = len(self._features)
            if self.shortfall:
                self.snapshot = None
                return None
            self._version += 1
            self.snapshot = model.fit(self._features, labels, classes, self._version)
            self._predicted_at = time.time()
            return self.snapshot

    def _repredict(self, force: bool) -> None:
        snap = self.snapshot
        if snap is None or len(snap.ids) >= len(self._features):
            return
        if force or time.time() - self._predicted_at >= REPREDICT_S:
            self._version += 1
            self.snapshot = snap.with_features(self._features, self._version)
            self._predicted_at = time.time()

    def _describe(self, settings: SuggestSettings) -> None:
        done, total = self.progress
        feats = f"features {done:,}/{total:,} frames" + (f" ({self.rate:.0f}/s)" if done < total and self.rate else "")
        snap = self.snapshot
        if snap is not None:
            ago = time.time() - snap.fitted_at
            self.state = "ready"
            self.message = (f"Model fit on {snap.n_labels} labels ("
                            + ", ".join(f"{c} {n}" for c, n in snap.per_class.items())
                            + f") in {snap.fit_seconds:.2f} s, {ago:.0f} s ago · {feats}")
        else:
            need = settings.min_per_class
            have = " · ".join(f"{c} {min(n, need)}/{need}" for c, n in self.shortfall.items())
            self.state = "learning"
            self.message = (f"Suggestions start once every shot type has {need} labels"
                            + (f": {have}" if have else "") + f" · {feats}")

    # ---- pre-labels -------------------------------------------------------------------------------
    def prelabel(self, *, extract_all: bool = False, progress=None) -> dict:
        """Write the model's class and confidence for every unlabeled frame with features (never as
        a label: annotators review them by class). ``extract_all`` first computes every missing
        feature here (the CLI; the tab leaves that to the worker and says how many wait)."""
        if not self._ensure_clip():
            raise ModelLoadError(self._clip_error or "No CLIP model for suggestions.")
        with self._lock:
            while extract_all and (todo := features.missing(self.studio, self._key, BATCH)):
                self._features.update(features.extract(self.studio, self._clip, self._key, todo))
                if progress:
                    progress(*features.counts(self.studio, self._key))
            settings = SuggestSettings.of(self.studio)
            snap = self.refit(settings)
            if snap is None:
                have = ", ".join(f"{c} {n}" for c, n in self.shortfall.items())
                raise InvalidInput(f"Pre-labels need {settings.min_per_class} labeled frames (with features) of every "
                                   f"shot type; have {have}. Label more frames first.")
            written = self._write_prelabels(snap)
            done, total = features.counts(self.studio, self._key)
        return {"written": written, "model_labels": snap.n_labels, "per_class": snap.per_class,
                "without_features": total - done, "fit_seconds": snap.fit_seconds}

    def _write_prelabels(self, snap: model.Snapshot) -> dict[str, int]:
        from labeling.labels import current_taxonomy

        taxonomy = current_taxonomy(self.studio).name
        with self.studio.db.read() as conn:
            labeled = set(conn.execute(sa.select(L.c.frame_id).where(
                L.c.undone_at.is_(None), L.c.action.in_(["label", "reject", "resolve"]))).scalars())
        rows, at = [], now()
        for fid in snap.ids.tolist():
            if fid not in labeled:
                s = snap.suggest(fid)
                rows.append({"frame_id": fid, "taxonomy": taxonomy, "shot": s.shot, "confidence": s.confidence,
                             "margin": s.margin, "model_labels": s.model_labels, "created_at": at})
        with self.studio.db.write() as conn:
            conn.execute(S.delete().where(S.c.taxonomy == taxonomy))
            for i in range(0, len(rows), 1000):
                conn.execute(S.insert(), rows[i:i + 1000])
        self._pre_version = None   # the review orders see the new pre-labels at once
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["shot"]] = counts.get(r["shot"], 0) + 1
        return counts


def service(studio) -> SuggestService:
    return studio.service(SuggestService)
