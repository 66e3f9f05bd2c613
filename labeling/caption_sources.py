"""Which frames get captions, and the image the captioner sees.

- Train split: the labeled frames (``labeling.labels.final_labels``: the resolved label of each
  frame, extras and rejects excluded) that are usable (``status == "ok"``).
- Test split: every usable held-out frame, labeled or not (the paper captioned its 1,800 test frames
  without supervision); the shot is shown when there is one.
- The image is the square crop the LoRA is trained on (``labeling.crop.cropped_image``).
"""

from __future__ import annotations

import sqlalchemy as sa

from dreamshot import schema


def _import(module: str, name: str):
    """labeling.<module>.<name>, or None while the Label tab's module does not provide it yet."""
    import importlib

    try:
        return getattr(importlib.import_module(f"labeling.{module}"), name, None)
    except ModuleNotFoundError as exc:
        if exc.name != f"labeling.{module}":
            raise
        return None


def _final_labels(studio) -> dict[int, str]:
    final_labels = _import("labels", "final_labels")
    if final_labels is not None:
        return final_labels(studio)
    # Fallback: the latest label action of each frame that was not undone.
    t = schema.labels
    query = (sa.select(t.c.frame_id, t.c.shot).where(t.c.action == "label", t.c.undone_at.is_(None),
                                                     t.c.is_extra == sa.false()).order_by(t.c.created_at, t.c.id))
    with studio.db.read() as conn:
        return {row.frame_id: row.shot for row in conn.execute(query)}


def labeled_frames(studio, split: str = "train") -> dict[int, str | None]:
    """frame id -> shot name (None for an unlabeled test frame), for the frames to caption."""
    f = schema.frames
    with studio.db.read() as conn:
        ids = conn.execute(sa.select(f.c.id).where(f.c.status == "ok", f.c.split == split)).scalars().all()
    labels = _final_labels(studio)
    if split == "test":
        return {fid: labels.get(fid) for fid in ids}
    return {fid: labels[fid] for fid in ids if fid in labels}


def shot_of(studio, frame_id: int) -> str | None:
    return _final_labels(studio).get(int(frame_id))


def frame_image(studio, frame_id: int, size: int | None = None):
    """The cropped image of a frame (PIL, RGB), as used for training."""
    cropped_image = _import("crop", "cropped_image")
    if cropped_image is not None:
        return cropped_image(studio, int(frame_id), size=size).convert("RGB")
    return _centre_crop(studio, int(frame_id), size)


def _centre_crop(studio, frame_id: int, size: int | None):
    """Fallback: the centred square crop of the stored frame."""
    from PIL import Image, ImageOps

    from dreamshot.errors import NotFound

    with studio.db.read() as conn:
        path = conn.execute(sa.select(schema.frames.c.path).where(schema.frames.c.id == frame_id)).scalar()
    if not path:
        raise NotFound(f"Frame {frame_id} has no stored image.")
    with Image.open(studio.settings.data_dir / path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    side = min(im.size)
    return ImageOps.fit(im, (size or side, size or side), Image.Resampling.BICUBIC)
