"""How a label was given, stored with it (``labels`` columns source, queue_order, predicted,
confidence, model_labels, suggestion_shown): read by the stats (``labeling.suggest.stats``) and
written into the export (``label_source``, ``label_order``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provenance:
    """How a label was given, stored with it: ``source`` typed (a class key), suggested (the model's
    suggestion accepted) or imported (a labels file); the queue order the frame was shown under; and
    the shot-type model's prediction for the frame at that moment (shown or held back for a blind
    check; made before the model saw this label), with how many labels the model was fit on."""
    source: str = "typed"
    queue_order: str | None = None
    predicted: str | None = None
    confidence: float | None = None
    model_labels: int | None = None
    suggestion_shown: bool | None = None

    def columns(self) -> dict:
        return {"source": self.source, "queue_order": self.queue_order, "predicted": self.predicted,
                "confidence": None if self.confidence is None else float(self.confidence),
                "model_labels": self.model_labels, "suggestion_shown": self.suggestion_shown}


TYPED = Provenance()
IMPORTED = Provenance(source="imported")
