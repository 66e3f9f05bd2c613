"""The shot-type model behind the suggestions: Evaluate's ``LinearProbe`` (the judge's softmax
regression) fit on the CLIP features of every settled label, and its predictions for every frame
with features, frozen in a ``Snapshot`` that the key path reads and a refit replaces whole.

A fit is a function of its inputs only (features and labels in frame-id order, zero-initialised
full-batch gradient descent), so the same labels give the same model - and the same queue orders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dreamshot.evaluate.judge import LinearProbe


@dataclass(frozen=True)
class Suggestion:
    shot: str
    confidence: float          # the model's probability of ``shot``
    margin: float              # that probability minus the runner-up's (low = uncertain)
    model_labels: int          # how many labels the model was fit on
    origin: str = "model"      # "model" (the live model) or "pre-label" (written by a pre-label run)
    shown: bool = True         # False: held back on this frame for a blind check


@dataclass
class Snapshot:
    version: int
    classes: list[str]
    n_labels: int
    per_class: dict[str, int]
    ids: np.ndarray                    # frames with a prediction
    probs: np.ndarray                  # one row per id, columns in ``classes`` order
    probe: LinearProbe
    fit_seconds: float
    fitted_at: float = field(default_factory=time.time)
    trained_on: frozenset = frozenset()

    def __post_init__(self):
        order = np.sort(self.probs, axis=1)
        self.best = np.argmax(self.probs, axis=1) if len(self.ids) else np.zeros(0, dtype=int)
        self.confidence = order[:, -1] if len(self.ids) else np.zeros(0)
        self.margin = (order[:, -1] - order[:, -2]) if len(self.ids) and order.shape[1] > 1 else self.confidence
        self.index = {int(fid): i for i, fid in enumerate(self.ids)}

    def suggest(self, frame_id: int) -> Suggestion | None:
        i = self.index.get(int(frame_id))
        if i is None:
            return None
        return Suggestion(self.classes[int(self.best[i])], float(self.confidence[i]), float(self.margin[i]),
                          self.n_labels)

    def with_features(self, features: dict[int, np.ndarray], version: int) -> "Snapshot":
        """The same model's predictions over a larger set of frames (features computed since)."""
        ids, x = matrix(features)
        return Snapshot(version, self.classes, self.n_labels, self.per_class, ids, self.probe.predict_proba(x),
                        self.probe, self.fit_seconds, self.fitted_at, self.trained_on)


def matrix(features: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(sorted(features), dtype=np.int64)
    if not len(ids):
        return ids, np.zeros((0, 1))
    return ids, np.stack([features[int(i)] for i in ids]).astype(np.float64)


def shortfall(labels: dict[int, str], features: dict[int, np.ndarray], classes: list[str],
              min_per_class: int) -> dict[str, int]:
    """Usable labels per class (with features) when some class has fewer than ``min_per_class``;
    empty when a model can be fit."""
    have = {c: 0 for c in classes}
    for fid, shot in labels.items():
        if shot in have and fid in features:
            have[shot] += 1
    return have if any(n < min_per_class for n in have.values()) else {}


def fit(features: dict[int, np.ndarray], labels: dict[int, str], classes: list[str], version: int) -> Snapshot:
    """The probe on every labeled frame with features, and its predictions for every frame. BLAS runs
    on one thread meanwhile: its small matrix products only spin extra threads, which on a busy
    server take the cores the annotators' requests need (and were 4x slower here, 3.6 s vs 0.9 s
    for 1,000 labels on a loaded 2-core machine)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _fit(features, labels, classes, version)


def _fit(features: dict[int, np.ndarray], labels: dict[int, str], classes: list[str], version: int) -> Snapshot:
    t0 = time.perf_counter()
    train = sorted(fid for fid, shot in labels.items() if fid in features and shot in classes)
    x = np.stack([features[fid] for fid in train]).astype(np.float64)
    y = [labels[fid] for fid in train]
    probe = LinearProbe(classes).fit(x, y)
    ids, everything = matrix(features)
    probs = probe.predict_proba(everything)
    per_class = {c: y.count(c) for c in classes}
    return Snapshot(version, list(classes), len(train), per_class, ids, probs, probe,
                    time.perf_counter() - t0, trained_on=frozenset(train))
