"""The shot-type judge for the automatic transition mode, taken from the Evaluate feature.

A judge is any callable ``judge(frames) -> [{shot: probability}]`` (one dict per frame); the
transition code (``schedule.steer``) only needs that. ``evaluate_judge`` builds one from
``dreamshot.evaluate``: the Evaluate tab's judge - a linear probe on CLIP features of the studio's
labeled frames when it can be trained, else CLIP image features against the text ``a {shot phrase}
film still`` of each shot type (zero-shot, CameraCLIP's R@1 texts) - softmax over the shot types.
With a cinema-tuned CLIP (``--judge-clip``) it is the CLIPLoRA setup; plain zero-shot CLIP is a weak
shot judge (see STACK-NOTES), so the result says which judge was used.
"""

from __future__ import annotations

import numpy as np

CLIP_LOGIT_SCALE = 100.0


def probabilities(judge, image_features: np.ndarray) -> np.ndarray:
    """Per-frame class probabilities of an Evaluate ``Judge`` (probe if it has one, else zero-shot)."""
    x = np.asarray(image_features, dtype=np.float64)
    probe = getattr(judge, "probe", None)
    if probe is not None:
        return probe.predict_proba(x)
    logits = CLIP_LOGIT_SCALE * x @ np.asarray(judge.text_features, dtype=np.float64).T
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def evaluate_judge(studio, shots: list[str], clip_spec: str | None = None):
    """judge(frames) over ``shots``: the Evaluate feature's shot-type judge (``EvaluateService.shot_judge``)
    with its CLIP (a Hub id or a local folder, loaded once per studio) - the linear probe trained on the
    studio's labeled frames when every shot type has enough of them, else zero-shot. ``judge.kind``,
    ``judge.report`` and ``judge.description`` say which judge it is (and how well the probe did)."""
    from dreamshot.evaluate.service import service as evaluation

    evaluator = evaluation(studio)
    clip = evaluator.clip(clip_spec or None)   # empty: the studio's default (embedders.default_clip)
    judge, _ = evaluator.shot_judge(clip, list(shots))

    def judge_frames(frames) -> list[dict]:
        probs = probabilities(judge, clip.image_features(list(frames)))
        return [{s: float(p) for s, p in zip(shots, row)} for row in probs]

    judge_frames.kind, judge_frames.report = judge.kind, judge.report
    judge_frames.description = describe(judge.kind, judge.report, clip.spec)
    return judge_frames


def describe(kind: str, report: dict, clip_spec: str) -> str:
    if kind == "probe":
        acc = report.get("accuracy")
        held = f", held-out accuracy {acc:.0%} on {report.get('n')} frames" if acc is not None else ""
        return f"linear-probe shot judge on the studio's labeled frames ({clip_spec}{held})"
    return f"zero-shot CLIP judge ({clip_spec}; {report.get('reason', 'no trained probe')})"
