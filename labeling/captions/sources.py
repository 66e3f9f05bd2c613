"""Which frames get captions, and the image the captioner sees.

- Train split: the labeled frames (``labeling.labels.final_labels``: the settled label of each
  frame, extras, rejects and open disagreements left out) that are usable (``status == "ok"``).
- Test split: every usable held-out frame, labeled or not (the paper captioned its 1,800 test frames
  without supervision); the shot is shown when there is one.
- The image is the square crop the LoRA is trained on (``labeling.crop.cropped_image``);
  ``Thumbnails`` (a studio service) keeps small copies for the caption grid.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import sqlalchemy as sa

from dreamshot import schema

from labeling.crop import cropped_image
from labeling.labels import final_labels


def labeled_frames(studio, split: str = "train") -> dict[int, str | None]:
    """frame id -> shot name (None for an unlabeled test frame), for the frames to caption."""
    f = schema.frames
    with studio.db.read() as conn:
        ids = conn.execute(sa.select(f.c.id).where(f.c.status == "ok", f.c.split == split)).scalars().all()
    labels = final_labels(studio)
    if split == "test":
        return {fid: labels.get(fid) for fid in ids}
    return {fid: labels[fid] for fid in ids if fid in labels}


def shot_of(studio, frame_id: int) -> str | None:
    return final_labels(studio).get(int(frame_id))


def frame_image(studio, frame_id: int, size: int | None = None):
    """The cropped image of a frame (PIL, RGB), as used for training."""
    return cropped_image(studio, int(frame_id), size=size).convert("RGB")


class Thumbnails:
    """Small copies of cropped frames for the caption grid, kept until the frame's file or crop box
    changes (the studio's service: ``thumbnails(studio)``)."""

    SIZE = 160
    KEEP = 2000

    def __init__(self, studio):
        self.studio = studio
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, object] = OrderedDict()

    def _stamps(self, ids: list[int]) -> dict[int, str]:
        f = schema.frames
        with self.studio.db.read() as conn:
            rows = conn.execute(sa.select(f.c.id, f.c.path, f.c.crop_box).where(f.c.id.in_(ids))).all()
        return {r.id: f"{r.path}|{r.crop_box}" for r in rows}

    def get(self, frame_ids) -> list:
        """One thumbnail (PIL) per frame id, in order."""
        ids = [int(f) for f in frame_ids]
        stamps = self._stamps(ids)
        return [self._one(fid, stamps.get(fid, "")) for fid in ids]

    def _one(self, frame_id: int, stamp: str):
        key = (frame_id, stamp)
        with self._lock:
            image = self._cache.get(key)
        if image is None:
            image = frame_image(self.studio, frame_id)
            image.thumbnail((self.SIZE, self.SIZE))
            with self._lock:
                self._cache[key] = image
                while len(self._cache) > self.KEEP:
                    self._cache.popitem(last=False)
        return image


def thumbnails(studio) -> Thumbnails:
    return studio.service(Thumbnails)
