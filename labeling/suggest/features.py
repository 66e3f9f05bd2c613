"""CLIP image features of the pool's frames, computed once per frame and model and kept in the
database (``frame_features``: float32 bytes), so a restart, the CLI and a later import reuse them.

``missing`` lists the frames still without features (labeled frames first: the model needs them),
``extract`` computes a batch and stores it in one short write; ``load`` reads them all back.
The image is the frame's stored crop box when it has one (the square the LoRA trains on), else
the whole frame, which CLIP's processor centre-crops - no crop box is computed or written here.
"""

from __future__ import annotations

import hashlib

import numpy as np
import sqlalchemy as sa

from dreamshot import schema
from dreamshot.storage import now

F, L, FF = schema.frames, schema.labels, schema.frame_features
DRAFT = 256        # decode JPEGs at a reduced scale: CLIP sees 224 px at most


def model_key(pin: str) -> str:
    """A short stable name of the exact CLIP (its pin: Hub id@commit or folder + weights hash)."""
    return "clip-" + hashlib.sha256(pin.encode()).hexdigest()[:24]


def missing(studio, key: str, limit: int) -> list[int]:
    """Up to ``limit`` usable frames without features for ``key``: labeled ones first."""
    have = sa.select(FF.c.frame_id).where(FF.c.model == key)
    labeled = sa.select(L.c.frame_id).where(L.c.undone_at.is_(None), L.c.action.in_(["label", "resolve"]))
    base = sa.select(F.c.id).where(F.c.status == "ok", F.c.id.not_in(have))
    with studio.db.read() as conn:
        first = conn.execute(base.where(F.c.id.in_(labeled)).order_by(F.c.id).limit(limit)).scalars().all()
        if len(first) < limit:
            first += conn.execute(base.where(F.c.id.not_in(labeled)).order_by(F.c.id)
                                  .limit(limit - len(first))).scalars().all()
    return list(first)


def counts(studio, key: str) -> tuple[int, int]:
    """(frames with features, usable frames)."""
    with studio.db.read() as conn:
        done = conn.execute(sa.select(sa.func.count()).select_from(FF.join(F, F.c.id == FF.c.frame_id))
                            .where(FF.c.model == key, F.c.status == "ok")).scalar_one()
        total = conn.execute(sa.select(sa.func.count()).where(F.c.status == "ok")).scalar_one()
    return done, total


def _image(studio, frame_id: int):
    from labeling.crop import open_frame

    image, row = open_frame(studio, frame_id, draft=DRAFT)
    box = row.get("crop_box")
    if box:
        scale = (row.get("width") or image.width) / image.width   # original pixels per decoded pixel
        image = image.crop(tuple(v / scale for v in box))
    return image


def extract(studio, clip, key: str, frame_ids: list[int]) -> dict[int, np.ndarray]:
    """Features of ``frame_ids`` (one CLIP batch), stored at once; an unreadable frame is skipped
    (it gets a zero vector, so it is not tried again and ranks as 'no opinion')."""
    images, ok = [], []
    for fid in frame_ids:
        try:
            images.append(_image(studio, fid))
            ok.append(fid)
        except Exception:   # a frame whose file is gone or damaged: never stops the worker
            continue
    if not images:    # nothing readable in this batch: a blank image tells the size of a vector
        from PIL import Image

        dim = clip.image_features([Image.new("RGB", (32, 32))]).shape[1]
        feats = np.zeros((0, dim))
    else:
        feats = clip.image_features(images, batch=len(images))
    out = {fid: np.asarray(v, dtype=np.float32) for fid, v in zip(ok, feats)}
    for fid in frame_ids:
        if fid not in out:
            out[fid] = np.zeros(feats.shape[1], dtype=np.float32)
    if out:
        at = now()
        with studio.db.write() as conn:
            conn.execute(FF.delete().where(FF.c.model == key, FF.c.frame_id.in_(list(out))))
            conn.execute(FF.insert(), [{"frame_id": fid, "model": key, "dim": int(v.shape[0]),
                                        "vector": v.tobytes(), "created_at": at} for fid, v in out.items()])
    return out


def load(studio, key: str) -> dict[int, np.ndarray]:
    """Every stored feature vector of ``key`` (usable frames only)."""
    with studio.db.read() as conn:
        rows = conn.execute(sa.select(FF.c.frame_id, FF.c.vector).select_from(FF.join(F, F.c.id == FF.c.frame_id))
                            .where(FF.c.model == key, F.c.status == "ok")).all()
    return {fid: np.frombuffer(vec, dtype=np.float32) for fid, vec in rows}
