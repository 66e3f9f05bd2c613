"""The shot-type judge for the automatic transition mode, taken from the Evaluate feature.

A judge is any callable ``judge(frames) -> [{shot: probability}]`` (one dict per frame); the
transition code (``schedule.steer``) only needs that. ``evaluate_judge`` builds one from
``dreamshot.evaluate``: CLIP image features of each frame against the text ``a {shot phrase} film
still`` of each shot type (the Evaluate tab's zero-shot judge and CameraCLIP's R@1 texts), softmax
over the shot types at CLIP's logit scale. With a cinema-tuned CLIP (``--judge-clip``) it is the
CLIPLoRA setup; plain CLIP is a weak shot judge (see STACK-NOTES), so the result says which was used.
"""

from __future__ import annotations

import numpy as np

CLIP_LOGIT_SCALE = 100.0


def probabilities(judge, image_features: np.ndarray) -> np.ndarray:
    """Per-frame class probabilities of an Evaluate ``Judge`` (probe if it has one, else zero-shot)."""
    x = np.asarray(image_features, dtype=np.float64)
    probe = getattr(judge, "probe", None)
    if probe is not None:
        logits = ((x - probe.mean) / probe.scale) @ probe.w + probe.b
    else:
        logits = CLIP_LOGIT_SCALE * x @ np.asarray(judge.text_features, dtype=np.float64).T
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def evaluate_judge(studio, shots: list[str], clip_spec: str | None = None):
    """judge(frames) over ``shots`` with the Evaluate feature's CLIP (a Hub id or a local folder)."""
    from dreamshot.evaluate import embedders, judge as judges

    clip = embedders.load_clip(clip_spec or embedders.DEFAULT_CLIP)
    project = studio.project
    texts = clip.text_features(list(judges.shot_texts({s: project.shot_phrase(s) for s in shots}).values()))
    judge = judges.build_judge("zeroshot", list(shots), texts, None, [])

    def judge_frames(frames) -> list[dict]:
        probs = probabilities(judge, clip.image_features(list(frames)))
        return [{s: float(p) for s, p in zip(shots, row)} for row in probs]

    judge_frames.description = f"zero-shot CLIP judge ({clip.spec})"
    return judge_frames
