"""Each annotator's queues: which frame comes next, reproducible and cheap to resume.

An annotator has one queue per ``QueueKey``: the split (``train`` frames count toward the quotas;
``test`` frames are the held-out set, labeled in their own queue, never counted in quotas) and the
order. The **random** order is ``blake2b(seed, annotator, frame_id)``: the same seed and name give
the same order on every run. The other orders (``labeling.suggest.orders``: uncertain first, fill
the emptiest quota first, review the frames the model calls a class) come from a *ranker*, a
function of the shot-type model's predictions, which are a function of the labels - so they too are
reproducible; when the model is refit the rest of the queue is re-sorted, the frames already handed
out (the current one and the prefetched ones) staying in front.

The state needed to resume is which frames the annotator already labeled/rejected/skipped (in the
database) and their queue choice (a project setting per annotator). Frames labeled or rejected by
this annotator are never shown to them again; skipped frames come back once the rest is done.

Overlap: a share of frames (chosen by ``blake2b(seed, "overlap", frame_id)``) is meant for two
annotators; the other frames are shown to whoever gets there first and then leave the other queues.
This holds in every order.
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
SPLITS = {"train": "Train frames", "test": "Held-out frames"}


def _h(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def order_key(seed: int, annotator: str, frame_id: int) -> int:
    return _h(seed, annotator, frame_id)


def fraction(*parts) -> float:
    """A reproducible number in [0, 1) for ``parts`` (seeded shares: overlap, blind checks)."""
    return _h(*parts) / 2 ** 64


def is_overlap(seed: int, frame_id: int, share: float) -> bool:
    return share > 0 and fraction(seed, "overlap", frame_id) < share


@dataclass(frozen=True)
class QueueKey:
    """Which of an annotator's queues: the split and the order (``random`` or a ranker's order)."""
    split: str = "train"
    order: str = "random"

    @property
    def label(self) -> str:
        """What is stored with a label as the order it was given under."""
        return self.order if self.split == "train" else f"{self.order} (held-out)"


TRAIN = QueueKey()


@dataclass(frozen=True)
class QueueSettings:
    seed: int = 0
    overlap: float = 0.0

    @classmethod
    def of(cls, studio) -> "QueueSettings":
        from labeling.labels import setting

        return cls(int(setting(studio, "label_seed", 0)), float(setting(studio, "label_overlap", 0.0)))


class _Queue:
    """One annotator's queue. Built from the database, updated in memory by actions."""

    def __init__(self, base: list[int], keys: dict[int, int], done: set[int], skipped: dict[int, int]):
        self.base = base                # the random order (also the tie-break of the others)
        self.keys = keys                # frame -> its random order key
        self.done = done
        self.skipped = skipped          # frame -> skip sequence (older first)
        self.full: set[int] = set()     # frames others have already taken (cache; refreshed on rebuild)
        self.handed: list[int] = []     # the frames the last call handed out (kept in front on a re-sort)
        self.rank_version = None
        self.set_order(base)

    def set_order(self, order: list[int]) -> None:
        self.order = order
        self.pos = {fid: i for i, fid in enumerate(order)}
        self.cursor = 0


class Sampler:
    def __init__(self, studio, ranker=None):
        """``ranker`` (optional): ``version(key)`` - changes when its order does (None: no order yet,
        the random one is used) - and ``rank(key, ids, keys)`` -> the ids in its order (it may leave
        some out, e.g. a class review)."""
        self.studio = studio
        self.ranker = ranker
        self._lock = threading.RLock()
        self._queues: dict[tuple[str, QueueKey], _Queue] = {}
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
        n, top = conn.execute(sa.select(sa.func.count(), sa.func.max(F.c.id)).where(F.c.status == "ok")).one()
        return n, top, taxonomy, settings

    def _build(self, conn, annotator: str, taxonomy: str, seed: int, split: str) -> _Queue:
        ids = conn.execute(sa.select(F.c.id).where(F.c.status == "ok", F.c.split == split)).scalars().all()
        keys = {fid: order_key(seed, annotator, fid) for fid in ids}
        order = sorted(ids, key=keys.__getitem__)
        rows = conn.execute(sa.select(L.c.frame_id, L.c.action, L.c.id).where(
            L.c.annotator == annotator, L.c.undone_at.is_(None), L.c.taxonomy == taxonomy,
            L.c.action.in_(["label", "reject", "skip"]))).all()
        done = {r.frame_id for r in rows if r.action != "skip"}
        skipped = {r.frame_id: r.id for r in rows if r.action == "skip" and r.frame_id not in done}
        return _Queue(order, keys, done, skipped)

    def _queue(self, annotator: str, key: QueueKey) -> _Queue:
        from labeling.labels import current_taxonomy

        taxonomy = current_taxonomy(self.studio).name
        settings = QueueSettings.of(self.studio)
        with self.studio.db.read() as conn:
            version = self._pool_version(conn, taxonomy, settings)
            if version != self._version:
                self._queues.clear()
                self._version = version
            q = self._queues.get((annotator, key))
            if q is None:
                q = self._queues[(annotator, key)] = self._build(conn, annotator, taxonomy, settings.seed, key.split)
        ranked = self.ranker is not None and key.order != "random"
        version = self.ranker.version(key) if ranked else None
        if version != q.rank_version:
            self._rerank(q, key, version)
        return q

    def _rerank(self, q: _Queue, key: QueueKey, version) -> None:
        """The ranker's order changed (a refit, new pre-labels): re-sort what is left, the frames
        already handed out first (the page shows them, the browser has the next one)."""
        left = [fid for fid in q.base if fid not in q.done]
        ranked = self.ranker.rank(key, left, q.keys) if version is not None else left
        front = [fid for fid in q.handed if fid not in q.done and fid in q.keys]
        pinned = set(front)
        q.set_order(front + [fid for fid in ranked if fid not in pinned])
        q.rank_version = version

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
    def upcoming(self, annotator: str, n: int = 1, key: QueueKey = TRAIN) -> list[int]:
        """The annotator's current frame followed by the next ``n - 1`` (no side effects on the
        database; the frames are remembered as handed out)."""
        with self._lock:
            q = self._queue(annotator, key)
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
                        if fid not in q.done and fid in q.pos and self._eligible(conn, q, annotator, fid, settings):
                            out.append(fid)
            if n > 1:   # the view's call: the current frame and the prefetched ones
                q.handed = out
            return out

    def current(self, annotator: str, key: QueueKey = TRAIN) -> int | None:
        found = self.upcoming(annotator, 1, key)
        return found[0] if found else None

    def remaining(self, annotator: str, key: QueueKey = TRAIN) -> int:
        with self._lock:
            q = self._queue(annotator, key)
            return len(q.order) - len(q.done.intersection(q.pos))

    def _mine(self, annotator: str) -> list[_Queue]:
        return [q for (who, _), q in self._queues.items() if who == annotator]

    def on_action(self, annotator: str, frame_id: int, action: str, seq: int = 0) -> None:
        with self._lock:
            for q in self._mine(annotator) or [self._queue(annotator, TRAIN)]:
                if action == "skip":
                    q.skipped[frame_id] = seq or (max(q.skipped.values(), default=0) + 1)
                else:
                    q.done.add(frame_id)
                    q.skipped.pop(frame_id, None)

    def on_undo(self, annotator: str, frame_id: int, action: str) -> None:
        with self._lock:
            for q in self._mine(annotator) or [self._queue(annotator, TRAIN)]:
                if action == "skip":
                    q.skipped.pop(frame_id, None)
                else:
                    q.done.discard(frame_id)
                q.full.discard(frame_id)
                if frame_id in q.keys and frame_id not in q.pos:   # re-sorted without it: back in front
                    q.set_order([frame_id] + q.order)
                if frame_id in q.pos:
                    q.cursor = min(q.cursor, q.pos[frame_id])

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self._version = None
