"""The shot-type judge: which shot type does a generated image show?

- **Linear probe** (preferred): multinomial logistic regression (numpy, L2, full-batch gradient
  descent) on CLIP image features of the studio's own labeled frames. (The Label tab's suggestions,
  ``labeling.suggest``, fit the same ``LinearProbe`` on the same CLIP's features as labels arrive.) A seeded, stratified quarter
  of those frames is held out: the judge's accuracy there (with a Wilson interval) and its
  confusion matrix are reported with every result, so the judge is itself measured. It is then
  refit on all labeled frames before judging.
- **Zero-shot** (fallback when fewer than ``min_per_class`` labeled frames exist for a shot type):
  cosine between the image and the text ``a {shot phrase} film still`` of each shot type.
- **R@1** (CameraCLIP's retrieval measure): the right shot type's text ranks first among all shot
  types' texts for the image (computed with the same texts, whatever the judge).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dreamshot.errors import InvalidInput
from dreamshot.evaluate.metrics import wilson

JUDGES = ("auto", "probe", "zeroshot")
MIN_PER_CLASS = 8
HOLDOUT = 0.25


def shot_texts(phrases: dict[str, str]) -> dict[str, str]:
    """The zero-shot / R@1 text of each shot type (from the project's shot phrases)."""
    return {shot: f"a {phrase} film still" for shot, phrase in phrases.items()}


class LinearProbe:
    """Softmax regression on (normalised) features; ``fit`` then ``predict``."""

    def __init__(self, classes: list[str], *, l2: float = 1e-3, lr: float = 0.5, epochs: int = 500):
        self.classes, self.l2, self.lr, self.epochs = list(classes), l2, lr, epochs
        self.w = self.b = self.mean = self.scale = None

    def fit(self, x: np.ndarray, y: list[str]) -> "LinearProbe":
        x = np.asarray(x, dtype=np.float64)
        self.mean, self.scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - self.mean) / self.scale
        target = np.zeros((len(y), len(self.classes)))
        target[np.arange(len(y)), [self.classes.index(c) for c in y]] = 1.0
        self.w, self.b = np.zeros((x.shape[1], len(self.classes))), np.zeros(len(self.classes))
        for _ in range(self.epochs):
            p = self._softmax(z @ self.w + self.b)
            grad = (p - target) / len(y)
            self.w -= self.lr * (z.T @ grad + self.l2 * self.w)
            self.b -= self.lr * grad.sum(axis=0)
        return self

    @staticmethod
    def _softmax(logits):
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> list[str]:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return [self.classes[i] for i in np.argmax(z @ self.w + self.b, axis=1)]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per feature row, columns in ``classes`` order."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return self._softmax(z @ self.w + self.b)


@dataclass
class Judge:
    kind: str                       # "probe" or "zeroshot"
    classes: list[str]
    text_features: np.ndarray       # one row per class (zero-shot and R@1)
    probe: LinearProbe | None = None
    report: dict = field(default_factory=dict)

    def predict(self, image_features: np.ndarray) -> list[str]:
        if len(image_features) == 0:
            return []
        if self.probe is not None:
            return self.probe.predict(image_features)
        return retrieve(image_features, self.text_features, self.classes)


def retrieve(image_features: np.ndarray, text_features: np.ndarray, classes: list[str]) -> list[str]:
    """The class whose text is nearest each image (R@1's top-1)."""
    return [classes[i] for i in np.argmax(np.asarray(image_features) @ np.asarray(text_features).T, axis=1)]


def stratified_split(labels: list[str], holdout: float = HOLDOUT, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in sorted(set(labels)):
        idx = [i for i, c in enumerate(labels) if c == cls]
        rng.shuffle(idx)
        k = max(1, int(round(len(idx) * holdout))) if len(idx) > 1 else 0
        test += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(test)


def confusion(truth: list[str], pred: list[str], classes: list[str]) -> list[list[int]]:
    m = [[0] * len(classes) for _ in classes]
    for t, p in zip(truth, pred):
        if t in classes and p in classes:
            m[classes.index(t)][classes.index(p)] += 1
    return m


def build_judge(kind: str, classes: list[str], text_features: np.ndarray, features: np.ndarray | None,
                labels: list[str], *, min_per_class: int = MIN_PER_CLASS, seed: int = 0) -> Judge:
    """A probe when every class has ``min_per_class`` labeled frames (or ``kind == 'probe'`` demands
    one: InvalidInput if impossible), else zero-shot. The report says which and how well it does."""
    if kind not in JUDGES:
        raise InvalidInput(f"Unknown judge {kind!r}; choose one of: {', '.join(JUDGES)}.")
    counts = {c: labels.count(c) for c in classes}
    enough = all(n >= min_per_class for n in counts.values()) and features is not None and len(features)
    if kind == "probe" and not enough:
        raise InvalidInput("The linear-probe judge needs at least "
                           f"{min_per_class} labeled frames of every shot type; have "
                           + ", ".join(f"{c}: {n}" for c, n in counts.items())
                           + ". Label more frames, or use --judge zeroshot (or auto).")
    if kind == "zeroshot" or not enough:
        judge = Judge("zeroshot", classes, text_features)
        judge.report = {"kind": "zeroshot", "labeled": counts,
                        "reason": "asked for" if kind == "zeroshot" else
                        f"fewer than {min_per_class} labeled frames for some shot type"}
        if features is not None and len(features) and labels:   # still measure it on what labels exist
            judge.report.update(_measure(judge.predict(features), labels, classes, "all labeled frames"))
        return judge
    keep = [i for i, c in enumerate(labels) if c in classes]
    x, y = np.asarray(features)[keep], [labels[i] for i in keep]
    train, test = stratified_split(y, seed=seed)
    held = LinearProbe(classes).fit(x[train], [y[i] for i in train])
    report = {"kind": "probe", "labeled": counts, "train": len(train)}
    report.update(_measure(held.predict(x[test]), [y[i] for i in test], classes, "held-out labeled frames"))
    return Judge("probe", classes, text_features, LinearProbe(classes).fit(x, y), report)


def _measure(pred: list[str], truth: list[str], classes: list[str], on: str) -> dict:
    hits = sum(p == t for p, t in zip(pred, truth))
    low, high = wilson(hits, len(truth))
    return {"measured_on": on, "n": len(truth), "accuracy": hits / len(truth) if truth else None,
            "accuracy_ci": [low, high], "confusion": confusion(truth, pred, classes), "classes": classes}
