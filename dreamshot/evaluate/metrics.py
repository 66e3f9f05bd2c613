"""The numbers of an evaluation: cosines, the paired bootstrap, Wilson intervals, Tables 3-4 rows.

- CLIP-T of an image = cos(CLIP image embedding, CLIP text embedding of its prompt).
- DINO of an image = cos(DINO CLS embedding of the image, that of the real frame its caption came from).
- A table row compares base and fine-tuned images made from the same prompt and seed: the mean of
  each, the mean paired difference (fine-tuned - base) and its 95% paired bootstrap interval
  (resampling pairs with a seeded numpy generator, percentile interval).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from dreamshot import stats

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices (not assumed normalised)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.where(na * nb == 0, 1.0, na * nb)


def paired_bootstrap(base, tuned, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> dict:
    """Mean of each, mean paired difference (tuned - base) and its percentile bootstrap interval."""
    base, tuned = np.asarray(base, dtype=np.float64), np.asarray(tuned, dtype=np.float64)
    if base.shape != tuned.shape:
        raise ValueError("paired samples must have the same length")
    n = len(base)
    if n == 0:
        return {"n": 0, "base": None, "tuned": None, "diff": None, "ci_low": None, "ci_high": None}
    diff = tuned - base
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"n": int(n), "base": float(base.mean()), "tuned": float(tuned.mean()), "diff": float(diff.mean()),
            "ci_low": float(low), "ci_high": float(high)}


def wilson(successes: int, n: int, z: float = stats.Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion (95% by default); (None, None) for n = 0."""
    return stats.wilson(successes, n, z) or (None, None)


def table(scores: list[dict], metric: str, *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """{"overall": row, "per_shot": {shot: row}} for ``metric`` ('clip_t' or 'dino') over scored
    pairs ``{"shot", "base": {metric: x}, "tuned": {metric: y}}``; pairs without the metric skipped."""
    usable = [s for s in scores if s["base"].get(metric) is not None and s["tuned"].get(metric) is not None]
    by_shot = defaultdict(list)
    for s in usable:
        by_shot[s["shot"]].append(s)

    def row(items):
        return paired_bootstrap([s["base"][metric] for s in items], [s["tuned"][metric] for s in items],
                                seed=seed, samples=samples)

    return {"overall": row(usable), "per_shot": {shot: row(items) for shot, items in sorted(by_shot.items())}}


def share_table(scores: list[dict], key: str) -> dict:
    """Share of images whose boolean ``key`` (e.g. judged_ok, r1) holds, base vs fine-tuned, with
    Wilson intervals: overall and per shot."""
    def row(items):
        out = {"n": len(items)}
        for side in ("base", "tuned"):
            hits = sum(bool(s[side].get(key)) for s in items)
            low, high = wilson(hits, len(items))
            out[side] = hits / len(items) if items else None
            out[f"{side}_ci"] = [low, high]
        return out

    usable = [s for s in scores if s["base"].get(key) is not None and s["tuned"].get(key) is not None]
    by_shot = defaultdict(list)
    for s in usable:
        by_shot[s["shot"]].append(s)
    return {"overall": row(usable), "per_shot": {shot: row(items) for shot, items in sorted(by_shot.items())}}


def fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row_text(row: dict) -> tuple[str, str, str, str]:
    """(base, fine-tuned, diff, interval) as text for tables."""
    if not row or not row.get("n"):
        return "-", "-", "-", "-"
    return (fmt(row["base"]), fmt(row["tuned"]), f"{row['diff']:+.4f}",
            f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]")
