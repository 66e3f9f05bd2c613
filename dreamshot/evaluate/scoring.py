"""Scores of a run's generated images, and the results dictionary (Tables 3-4, α curve, judge).

Per image: CLIP-T (image vs the prompt it was generated from), DINO (image vs its real frame),
the judge's shot type (``judged_ok``: it is the requested one) and R@1 (the requested shot type's
text is the nearest of all shot types' texts).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from dreamshot.evaluate import metrics


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def score_images(out: Path, records: list[dict], paths: list[str], clip, dino, judge, texts) -> list[dict]:
    """One score dict per (record, image path), in order; images and frames read in chunks."""
    out = Path(out)
    classes = judge.classes
    scores: list[dict] = []
    chunk = 64
    frame_cache: dict[str, np.ndarray] = {}
    for i in range(0, len(paths), chunk):
        recs, files = records[i:i + chunk], paths[i:i + chunk]
        images = [_open(out / p) for p in files]
        img_clip = clip.image_features(images)
        txt_clip = clip.text_features([r["prompt"] for r in recs])
        clip_t = (img_clip * txt_clip).sum(axis=1)
        dino_img = dino.image_features(images)
        todo = sorted({r["frame_path"] for r in recs} - frame_cache.keys())
        if todo:
            for key, feat in zip(todo, dino.image_features([_open(Path(p)) for p in todo])):
                frame_cache[key] = feat
        dino_s = (dino_img * np.stack([frame_cache[r["frame_path"]] for r in recs])).sum(axis=1)
        judged = judge.predict(img_clip)
        top = np.argmax(img_clip @ texts.T, axis=1)
        for r, ct, ds, jd, t in zip(recs, clip_t, dino_s, judged, top):
            scores.append({"clip_t": float(ct), "dino": float(ds), "judged": jd,
                           "judged_ok": jd == r["shot"], "r1": classes[int(t)] == r["shot"]})
    return scores


def pair_scores(out: Path, pairs: list[dict], clip, dino, judge, texts) -> list[dict]:
    paths = [p for r in pairs for p in (r["base_image"], r["tuned_image"])]
    records = [r for r in pairs for _ in (0, 1)]
    flat = score_images(out, records, paths, clip, dino, judge, texts)
    return [{"id": r["id"], "shot": r["shot"], "ablation": r["ablation"], "frame": r["frame"],
             "base": flat[2 * i], "tuned": flat[2 * i + 1]} for i, r in enumerate(pairs)]


def alpha_curve(out: Path, items: list[dict], clip, dino, judge, texts) -> list[dict]:
    flat = score_images(out, items, [r["image"] for r in items], clip, dino, judge, texts)
    by_alpha = defaultdict(list)
    for r, s in zip(items, flat):
        by_alpha[float(r["alpha"])].append(s)
    rows = []
    for a in sorted(by_alpha):
        group = by_alpha[a]
        rows.append({"alpha": a, "n": len(group),
                     "clip_t": float(np.mean([s["clip_t"] for s in group])),
                     "dino": float(np.mean([s["dino"] for s in group])),
                     "judged_ok": float(np.mean([s["judged_ok"] for s in group])),
                     "r1": float(np.mean([s["r1"] for s in group]))})
    return rows


def tables(scores: list[dict], *, seed: int, samples: int) -> dict:
    """Table 3 (shot in the prompt) and Table 4 (ablation): CLIP-T, DINO, judge share and R@1."""
    out = {}
    for name, ablation in (("table3", False), ("table4", True)):
        part = [s for s in scores if bool(s["ablation"]) == ablation]
        out[name] = {
            "n_pairs": len(part),
            "clip_t": metrics.table(part, "clip_t", seed=seed, samples=samples),
            "dino": metrics.table(part, "dino", seed=seed, samples=samples),
            "judged_as_requested": metrics.share_table(part, "judged_ok"),
            "r1": metrics.share_table(part, "r1"),
        }
    return out
