"""Per-frame weight schedules for shot-to-shot transitions, and the judge-steered (automatic) mode.

A transition from shot A to shot B over N frames is one number per frame, ``t[f]`` in [0, 1]: the
LoRA of A gets ``α·(1 - t[f])`` and the LoRA of B ``α·t[f]``. ``t`` comes from start/end weights
(linear) or keyframes ``"0:0, 6:0.2, 15:1"`` (frame:weight, linear in between, held at the ends).

Automatic mode (CLIPLoRA's idea): a *judge* - any callable ``judge(frames) -> [{shot: probability}]``,
e.g. the Evaluate tab's shot-type judge - looks at each generated frame; ``steer`` moves each frame's
``t`` by the gap between the wanted share of B and the judged one, and the clip is generated again.
"""

from __future__ import annotations

import re

from dreamshot.errors import InvalidInput

MAX_FRAMES = 64


def linear(frames: int, start: float = 0.0, end: float = 1.0) -> list[float]:
    if frames < 1:
        raise InvalidInput("A clip needs at least one frame.")
    if frames == 1:
        return [float(start)]
    return [float(start + (end - start) * f / (frames - 1)) for f in range(frames)]


def parse_keyframes(text: str) -> list[tuple[int, float]]:
    """``"0:0, 8:0.5, 15:1"`` -> [(0, 0.0), (8, 0.5), (15, 1.0)]; InvalidInput on bad text."""
    points = []
    for part in re.split(r"[,;\s]+", (text or "").strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)[:=]([-+]?\d*\.?\d+)", part)
        if not match:
            raise InvalidInput(f"Keyframe {part!r} is not 'frame:weight' (e.g. 0:0, 8:0.5, 15:1).")
        points.append((int(match.group(1)), float(match.group(2))))
    if not points:
        raise InvalidInput("No keyframes given (e.g. 0:0, 8:0.5, 15:1).")
    frames = [frame for frame, _ in points]
    twice = sorted({frame for frame in frames if frames.count(frame) > 1})
    if twice:
        raise InvalidInput(f"Keyframe at frame {twice[0]} is given twice; give each frame one share.")
    return sorted(points)


def from_keyframes(frames: int, points: list[tuple[int, float]]) -> list[float]:
    """Per-frame values, linear between keyframes, held before the first and after the last."""
    for frame, value in points:
        if not 0 <= frame < frames:
            raise InvalidInput(f"Keyframe at frame {frame} is outside the clip (frames 0-{frames - 1}).")
        if not 0.0 <= value <= 1.0:
            raise InvalidInput(f"Keyframe weight {value:g} must be between 0 and 1.")
    out = []
    for f in range(frames):
        before = [p for p in points if p[0] <= f]
        after = [p for p in points if p[0] >= f]
        if not before:
            out.append(after[0][1])
        elif not after:
            out.append(before[-1][1])
        else:
            (f0, v0), (f1, v1) = before[-1], after[0]
            out.append(v0 if f1 == f0 else v0 + (v1 - v0) * (f - f0) / (f1 - f0))
    return out


def schedule(frames: int, *, start: float = 0.0, end: float = 1.0, keyframes: str = "") -> list[float]:
    """The transition's t[f]: keyframes when given, else linear from ``start`` to ``end``."""
    if not 1 <= frames <= MAX_FRAMES:
        raise InvalidInput(f"Frames must be between 1 and {MAX_FRAMES} (got {frames}).")
    if keyframes and keyframes.strip():
        return from_keyframes(frames, parse_keyframes(keyframes))
    for label, value in (("Start", start), ("End", end)):
        if not 0.0 <= float(value) <= 1.0:
            raise InvalidInput(f"{label} weight must be between 0 and 1 (got {value}).")
    return linear(frames, float(start), float(end))


def lora_weights(t: list[float], alpha: float) -> tuple[list[float], list[float]]:
    """(weights of A, weights of B) per frame."""
    return [alpha * (1.0 - x) for x in t], [alpha * x for x in t]


def share_of(judged: list[dict], a: str, b: str) -> list[float]:
    """The judged share of B among {A, B} per frame (0.5 when the judge gives neither)."""
    out = []
    for probs in judged:
        pa, pb = float(probs.get(a, 0.0)), float(probs.get(b, 0.0))
        out.append(0.5 if pa + pb <= 0 else pb / (pa + pb))
    return out


def steer(t: list[float], target: list[float], judged_share: list[float], gain: float = 1.0) -> list[float]:
    """One correction step: frames judged less B than wanted get more of B's LoRA, and vice versa."""
    return [min(1.0, max(0.0, x + gain * (want - got))) for x, want, got in zip(t, target, judged_share)]


def top_shot(probs: dict) -> str:
    return max(probs, key=probs.get) if probs else "?"
