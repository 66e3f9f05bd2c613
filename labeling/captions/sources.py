"""Which frames get captions, and the image the captioner sees.

- Train split: the labeled frames (``labeling.labels.final_labels``: the settled label of each
  frame, extras, rejects and open disagreements left out) that are usable (``status == "ok"``).
- Test split: every usable held-out frame, labeled or not (the paper captioned its 1,800 test frames
  without supervision); the shot is shown when there is one.
- The image is the square crop the LoRA is trained on (``labeling.crop.cropped_image``).
"""

from __future__ import annotations

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
