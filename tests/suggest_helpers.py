"""Pools for the suggestion tests: frames whose colour tells their shot type (so the demo CLIP's
features separate them), labeled through the real key path or the labels module."""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from dreamshot import schema
from dreamshot.storage import now

COLORS = {"close": (220, 40, 40), "medium": (40, 200, 40), "long": (40, 40, 220)}


def colored_frames(studio, per_class: int, split: str = "train", seed: int = 0) -> dict[int, str]:
    """``per_class`` frames of each shot type (its colour, some noise): frame id -> shot type."""
    folder = studio.settings.data_dir / "frames" / "colored"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = {}
    with studio.db.write() as conn:
        for i in range(per_class):
            for shot, color in COLORS.items():
                arr = np.clip(np.array(color)[None, None] + rng.integers(-40, 40, (6, 8, 3)), 0, 255)
                name = f"{split}-{shot}-{i}-{seed}.png"
                Image.fromarray(arr.astype(np.uint8)).resize((96, 64), Image.NEAREST).save(folder / name)
                fid = conn.execute(schema.frames.insert().values(
                    source=name, path=f"frames/colored/{name}", meta={}, status="ok", split=split, created_at=now(),
                    width=96, height=64, content_hash=os.urandom(32).hex())).inserted_primary_key[0]
                truth[fid] = shot
    return truth


def wait_for(predicate, timeout: float = 90.0, what: str = "the condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def model_ready(svc, frames: int, labels: int = 24):
    """The suggestion service's snapshot once it is fit on ``labels`` labels and predicts ``frames`` frames."""
    return lambda: (svc.snapshot is not None and len(svc.snapshot.ids) >= frames
                    and svc.snapshot.n_labels >= labels and svc.snapshot)


def seed_labels(studio, truth: dict[int, str], per_class: int, who: str = "seed") -> list[int]:
    """The first ``per_class`` frames of each shot type labeled right by ``who``; their ids."""
    from labeling import labels

    done = []
    for shot in ("close", "medium", "long"):
        for fid in [f for f, s in truth.items() if s == shot][:per_class]:
            labels.record(studio, who, fid, shot)
            done.append(fid)
    return done
