"""Per-annotator random order without repetition, reproducible and cheap to resume.

Each annotator sees the usable training frames (``status='ok'``, ``split='train'``) in the order of
``blake2b(seed, annotator, frame_id)``: the same seed and name give the same order on every run, and
the state needed to resume is only which frames they already labeled/rejected/skipped, which is in
the database. Frames labeled or rejected by this annotator are never shown to them again; skipped
frames come back once the rest is done.

Overlap: a share of frames (chosen by ``blake2b(seed, "overlap", frame_id)``) is meant for two
annotators; the other frames are shown to whoever gets there first and then leave the other queues.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from dreamshot import schema

F, L = schema.frames, schema.labels
POOL_CHECK_S = 2.0


def _h(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def order_key(seed: int, annotator: str, frame_id: int) -> int:
    return _h(seed, annotator, frame_id)


def is_overlap(seed: int, frame_id: int, share: float) -> bool:
    return share > 0 and _h(seed, "overlap", frame_id) / 2 ** 64 < share


@dataclass(frozen=True)
class QueueSettings:
    seed: int = 0
    overlap: float = 0.0

    @classmethod
    def of(cls, studio) -> "QueueSettings":
        from labeling.labels import setting

        return cls(int(setting(studio, "label_seed", 0)), float(setting(studio, "label_overlap", 0.0)))


class _Queue:
    """One annotator's order and position. Built from the database, updated in memory by actions."""

    def __init__(self, order: list[int], done: set[int], skipped: dict[int, int]):
        self.order = order
        self.pos = {fid: i for i, fid in enumerate(order)}
        self.done = done
        self.skipped = skipped          # frame -> skip sequence (older first)
        self.cursor = 0
        self.full: set[int] = set()     # frames others have already taken (cache; refreshed on rebuild)


class Sampler:
    def __init__(self, studio):
        self.studio = studio
        self._lock = threading.RLock()
        self._queues: dict[str, _Queue] = {}
        self._version = None
        self._checked_at = 0.0

    # ---- building ----------------------------------------------------------------------------
    def _pool_version(self, conn, taxonomy: str, settings: QueueSettings):
        """Changes when frames are imported/filtered or the taxonomy, seed or overlap change. The
        frame count is re-read at most every POOL_CHECK_S seconds (imports from this process call
        reset() at once)."""
        if self._version is not None and self._version[2:] == (taxonomy, settings) and \
                time.monotonic() - self._checked_at < POOL_CHECK_S:
            return self._version
        self._checked_at = time.monotonic()
        n, top = conn.execute(sa.select(sa.func.count(), sa.func.max(F.c.id))
                              .where(F.c.status == "ok", F.c.split == "train")).one()
        return n, top, taxonomy, settings

    def _build(self, conn, annotator: str, taxonomy: str, seed: int) -> _Queue:
        ids = conn.execute(sa.select(F.c.id).where(F.c.status == "ok", F.c.split == "train")).scalars().all()
        order = sorted(ids, key=lambda fid: order_key(seed, annotator, fid))
        rows = conn.execute(sa.select(L.c.frame_id, L.c.action, L.c.id).where(
            L.c.annotator == annotator, L.c.undone_at.is_(None), L.c.taxonomy == taxonomy,
            L.c.action.in_(["label", "reject", "skip"]))).all()
        done = {r.frame_id for r in rows if r.action != "skip"}
        skipped = {r.frame_id: r.id for r in rows if r.action == "skip" and r.frame_id not in done}
        return _Queue(order, done, skipped)

    def _queue(self, annotator: str) -> _Queue:
        from labeling.labels import current_taxonomy

        taxonomy = current_taxonomy(self.studio).name
        settings = QueueSettings.of(self.studio)
        with self.studio.db.read() as conn:
            version = self._pool_version(conn, taxonomy, settings)
            if version != self._version:
                self._queues.clear()
                self._version = version
            if annotator not in self._queues:
                self._queues[annotator] = self._build(conn, annotator, taxonomy, settings.seed)
        return self._queues[annotator]

    # ---- eligibility: frames other annotators have taken -------------------------------------
    def _taken_by_others(self, conn, annotator: str, frame_id: int) -> int:
        return conn.execute(sa.select(sa.func.count(sa.distinct(L.c.annotator))).where(
            L.c.frame_id == frame_id, L.c.annotator != annotator, L.c.undone_at.is_(None),
            L.c.action.in_(["label", "reject"]))).scalar_one()

    def _eligible(self, conn, q: _Queue, annotator: str, fid: int, settings: QueueSettings) -> bool:
        if fid in q.full:
            return False
        limit = 1 if is_overlap(settings.seed, fid, settings.overlap) else 0
        if self._taken_by_others(conn, annotator, fid) > limit:
            q.full.add(fid)
            return False
        return True

    # ---- public ------------------------------------------------------------------------------
    def upcoming(self, annotator: str, n: int = 1) -> list[int]:
        """The annotator's current frame followed by the next ``n - 1`` (no side effects)."""
        with self._lock:
            q = self._queue(annotator)
            settings = QueueSettings.of(self.studio)
            out: list[int] = []
            with self.studio.db.read() as conn:
                i = q.cursor
                while i < len(q.order) and len(out) < n:
                    fid = q.order[i]
                    if fid not in q.done and fid not in q.skipped and self._eligible(conn, q, annotator, fid, settings):
                        out.append(fid)
                    elif not out and (fid in q.done or fid in q.full):
                        q.cursor = i + 1   # everything before the cursor is settled for this annotator
                    i += 1
                if len(out) < n:  # the first pass is done: skipped frames come back, oldest skip first
                    for fid in sorted(q.skipped, key=q.skipped.get):
                        if len(out) >= n:
                            break
                        if fid not in q.done and self._eligible(conn, q, annotator, fid, settings):
                            out.append(fid)
            return out

    def current(self, annotator: str) -> int | None:
        found = self.upcoming(annotator, 1)
        return found[0] if found else None

    def remaining(self, annotator: str) -> int:
        with self._lock:
            q = self._queue(annotator)
            return len(q.order) - len(q.done)

    def on_action(self, annotator: str, frame_id: int, action: str, seq: int = 0) -> None:
        with self._lock:
            q = self._queue(annotator)
            if action == "skip":
                q.skipped[frame_id] = seq or (max(q.skipped.values(), default=0) + 1)
            else:
                q.done.add(frame_id)
                q.skipped.pop(frame_id, None)

    def on_undo(self, annotator: str, frame_id: int, action: str) -> None:
        with self._lock:
            q = self._queue(annotator)
            if action == "skip":
                q.skipped.pop(frame_id, None)
            else:
                q.done.discard(frame_id)
            q.full.discard(frame_id)
            if frame_id in q.pos:
                q.cursor = min(q.cursor, q.pos[frame_id])

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self._version = None
