"""How well the suggestions work, measured honestly from what each label stores (``labels``:
source, predicted, confidence, model_labels, suggestion_shown).

- **Model accuracy** is measured only on *blind* labels: typed by a person on a frame whose
  suggestion was held back (``suggestion_shown`` false), with the prediction the model made before
  it was fit on that label. Labels given while a suggestion was shown are anchored by it, so they
  are counted apart (acceptance). The learning curve is that accuracy by how many labels the model
  had been fit on.
- **Acceptance**: of the labels given with a suggestion shown, the share accepted (the key) and
  the share where the person chose another class.
- **Seconds per label**: the gap since the annotator's previous action (pauses over two minutes
  dropped), with a suggestion shown vs without.
- **Second look**: settled labels the model disagreed with at high confidence when it was shown.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.stats import wilson

L = schema.labels
PAUSE_S = 120.0
SECOND_LOOK = 0.8      # confidence above which a model/annotator disagreement is listed
CURVE_BINS = 6


@dataclass
class ModelStats:
    blind: list[tuple[int, bool]] = field(default_factory=list)   # (model_labels, prediction right)
    shown: int = 0
    accepted: int = 0
    overridden: int = 0
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"with": [], "without": []})
    second_look: list[dict] = field(default_factory=list)
    sources: Counter = field(default_factory=Counter)

    @property
    def accuracy(self) -> float | None:
        return sum(ok for _, ok in self.blind) / len(self.blind) if self.blind else None

    def curve(self) -> list[tuple[int, int, int, float]]:
        """(from, to, n, accuracy) of the blind labels by the number of labels the model knew."""
        if not self.blind:
            return []
        top = max(n for n, _ in self.blind) + 1
        width = max(10, -(-top // CURVE_BINS // 10) * 10)
        bins: dict[int, list[bool]] = defaultdict(list)
        for n, ok in self.blind:
            bins[n // width].append(ok)
        return [(b * width, b * width + width - 1, len(v), sum(v) / len(v)) for b, v in sorted(bins.items())]


def _rows(studio, taxonomy: str):
    with studio.db.read() as conn:
        return conn.execute(sa.select(L.c.frame_id, L.c.annotator, L.c.action, L.c.shot, L.c.source,
                                      L.c.predicted, L.c.confidence, L.c.model_labels, L.c.suggestion_shown,
                                      L.c.created_at, L.c.undone_at)
                            .where(L.c.taxonomy == taxonomy, L.c.action.in_(["label", "reject", "skip"]))
                            .order_by(L.c.annotator, L.c.created_at, L.c.id)).all()


def model_stats(studio) -> ModelStats:
    from labeling import labels

    out = ModelStats()
    finals = {fid: d.final for fid, d in labels.decisions(studio).items()}
    previous: dict[str, float] = {}
    for r in _rows(studio, labels.current_taxonomy(studio).name):
        gap = r.created_at - previous.get(r.annotator, r.created_at - PAUSE_S - 1)
        previous[r.annotator] = r.created_at
        if r.action == "skip" or r.source == "imported":
            continue
        if gap <= PAUSE_S:
            out.seconds["with" if r.suggestion_shown else "without"].append(gap)
        if r.undone_at is not None or r.action != "label":
            continue
        out.sources[r.source or "unrecorded"] += 1
        if r.predicted is None:
            continue
        if r.suggestion_shown:
            out.shown += 1
            out.accepted += r.source == "suggested"
            out.overridden += r.source != "suggested" and r.shot != r.predicted
        elif r.suggestion_shown is False and r.source == "typed":
            out.blind.append((int(r.model_labels or 0), r.predicted == r.shot))
        if r.predicted != r.shot and (r.confidence or 0) >= SECOND_LOOK and finals.get(r.frame_id) == r.shot:
            out.second_look.append({"frame": r.frame_id, "label": r.shot, "model": r.predicted,
                                    "confidence": round(float(r.confidence), 3), "annotator": r.annotator})
    out.second_look.sort(key=lambda d: -d["confidence"])
    return out


def lines(ms: ModelStats) -> list[str]:
    """The stats text's section on the shot-type model."""
    out = ["Shot-type model (suggestions):"]
    if ms.sources:
        out.append("  labels by source: " + ", ".join(f"{k} {v}" for k, v in sorted(ms.sources.items())))
    if ms.accuracy is None:
        out.append("  accuracy: no blind check yet (typed labels on frames shown without their suggestion)")
    else:
        hits = sum(ok for _, ok in ms.blind)
        low, high = wilson(hits, len(ms.blind))
        out.append(f"  accuracy on {len(ms.blind)} blind labels (typed before the model saw them, suggestion "
                   f"held back): {ms.accuracy:.1%} (95% Wilson [{low:.1%}, {high:.1%}])")
        out.append("  learning curve (labels the model knew -> accuracy): " + "; ".join(
            f"{a}-{b}: {acc:.0%} of {n}" for a, b, n, acc in ms.curve()))
    if ms.shown:
        out.append(f"  suggestions shown with a label: {ms.shown}; accepted {ms.accepted} ({ms.accepted / ms.shown:.0%}), "
                   f"another class chosen {ms.overridden} ({ms.overridden / ms.shown:.0%})")
    for name, what in (("with", "with a suggestion shown"), ("without", "without")):
        values = ms.seconds[name]
        if values:
            out.append(f"  seconds per label {what}: median {statistics.median(values):.1f} s over {len(values)}")
    if ms.second_look:
        out.append(f"  second look: {len(ms.second_look)} settled labels the model contradicted with "
                   f">= {SECOND_LOOK:.0%} confidence (Suggestions panel)")
    return out
