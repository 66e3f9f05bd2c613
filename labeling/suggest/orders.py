"""The queue orders the shot-type model makes possible, besides the seeded random one.

- ``uncertain``: lowest margin first (the model's top probability minus its runner-up's): the
  frames whose label teaches the model most.
- ``quota``: fill the emptiest quota first - the class furthest from its quota gets the frames the
  model most confidently calls that class, the deficits shrinking as the order is laid out (train
  frames: quota minus settled labels; held-out frames: towards an even held-out set).
- ``class:<name>``: review - the frames a pre-label run says are ``<name>``, most confident first,
  to be confirmed with one key.

Every order is a pure function of the predictions and the annotator's random keys: predictions are
ranked, cut into runs of ``RUN`` frames, and each run is taken in the annotator's random order, so
two annotators in the same order rarely reach for the same frame at once (overlap then works as in
the random order). Frames without a prediction yet come last, in random order.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np

from dreamshot.errors import InvalidInput

ORDERS = {"random": "Random (seeded)", "uncertain": "Uncertain first", "quota": "Fill the emptiest quota first"}
REVIEW = "class:"
RUN = 16


def choices(taxonomy) -> list[tuple[str, str]]:
    """(label, value) of every order, the review of each class included."""
    return [(label, value) for value, label in ORDERS.items()] + \
        [(f"Review: the model calls it {c.label}", REVIEW + c.name) for c in taxonomy.classes]


def check(order: str, taxonomy) -> str:
    order = (order or "random").strip()
    if order in ORDERS:
        return order
    if order.startswith(REVIEW):
        return REVIEW + taxonomy.get(order[len(REVIEW):]).name
    raise InvalidInput(f"Unknown order {order!r}; choose one of: {', '.join([*ORDERS, REVIEW + '<shot type>'])}.")


def describe(order: str, taxonomy) -> str:
    return {value: label for label, value in choices(taxonomy)}.get(order, order)


def _runs(ranked: list[int], keys: dict[int, int]) -> list[int]:
    """Runs of RUN frames, each in the annotator's random order."""
    out = []
    for i in range(0, len(ranked), RUN):
        out += sorted(ranked[i:i + RUN], key=keys.__getitem__)
    return out


def _split(ids: list[int], snap) -> tuple[list[int], list[int]]:
    """(frames the model can rank, frames with no prediction yet). Frames it was fit on are neither:
    see ``_in_place``."""
    trained = snap.trained_on if snap is not None else frozenset()
    have = [fid for fid in ids if snap is not None and fid in snap.index and fid not in trained]
    seen = set(have)
    return have, [fid for fid in ids if fid not in seen and fid not in trained]


def _in_place(ids: list[int], snap, keys: dict[int, int], ranked: list[int]) -> list[int]:
    """Frames someone already labeled (the model was fit on them: its margin means nothing there)
    keep the places they have in the random order, so overlap frames still reach a second
    annotator as often as in the random order; the ranked frames fill the other places."""
    trained = snap.trained_on if snap is not None else frozenset()
    if not trained:
        return ranked
    rest = iter(ranked)
    return [fid if fid in trained else next(rest) for fid in sorted(ids, key=keys.__getitem__)]


def uncertain(ids: list[int], snap, keys: dict[int, int]) -> list[int]:
    have, rest = _split(ids, snap)
    margins = np.array([snap.margin[snap.index[fid]] for fid in have]) if have else np.zeros(0)
    tie = np.array([keys[fid] for fid in have], dtype=np.float64)
    ranked = [have[i] for i in np.lexsort((tie, margins))]
    return _in_place(ids, snap, keys, _runs(ranked, keys) + rest)


def quota(ids: list[int], snap, keys: dict[int, int], deficits: dict[str, int]) -> list[int]:
    have, rest = _split(ids, snap)
    by_class: dict[str, list[int]] = defaultdict(list)
    for fid in have:
        by_class[snap.classes[int(snap.best[snap.index[fid]])]].append(fid)
    for shot, group in by_class.items():   # most confident first, in runs
        group.sort(key=lambda fid: (-snap.confidence[snap.index[fid]], keys[fid]))
        by_class[shot] = _runs(group, keys)
    classes = list(snap.classes) if snap is not None else []
    heap = [(-deficits.get(c, 0), i, c) for i, c in enumerate(classes) if by_class.get(c)]
    heapq.heapify(heap)
    taken = {c: 0 for c in classes}
    out = []
    while heap:
        neg, i, c = heapq.heappop(heap)
        out.append(by_class[c][taken[c]])
        taken[c] += 1
        if taken[c] < len(by_class[c]):
            heapq.heappush(heap, (neg + 1, i, c))
    return _in_place(ids, snap, keys, out + rest)


def review(ids: list[int], prelabels: dict[int, tuple[str, float]], shot: str, keys: dict[int, int]) -> list[int]:
    """Only the frames pre-labeled ``shot``, most confident first."""
    mine = [fid for fid in ids if prelabels.get(fid, ("",))[0] == shot]
    mine.sort(key=lambda fid: (-prelabels[fid][1], keys[fid]))
    return _runs(mine, keys)


def deficits(progress, split: str) -> dict[str, int]:
    """How far each class is from where the order should take it: its quota (train frames), or an
    even held-out set (held-out frames)."""
    if split == "train":
        return {c: q - progress.counts.get(c, 0) for c, q in progress.quotas.items()}
    top = max(progress.held_out.values(), default=0) + 1
    return {c: top - progress.held_out.get(c, 0) for c in progress.quotas}


class Ranker:
    """The sampler's view of the suggestion service: an order's version and the order itself."""

    def __init__(self, service):
        self.service = service

    def version(self, key):
        if key.order.startswith(REVIEW):
            return self.service.prelabels_version()
        snap = self.service.snapshot
        return None if snap is None else snap.version

    def rank(self, key, ids: list[int], keys: dict[int, int]) -> list[int]:
        from labeling import labels

        if key.order.startswith(REVIEW):
            return review(ids, self.service.prelabels(), key.order[len(REVIEW):], keys)
        snap = self.service.snapshot
        if key.order == "uncertain":
            return uncertain(ids, snap, keys)
        if key.order == "quota":
            return quota(ids, snap, keys, deficits(labels.progress(self.service.studio), key.split))
        return ids
