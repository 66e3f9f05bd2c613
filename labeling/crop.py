"""Content-aware square crops. The box is chosen by ``smartcrop`` (edges, skin, saturation, rule of
thirds), moved to keep faces inside when OpenCV's Haar face cascade is available (it is not in
opencv-python 5, where smartcrop's skin detection stands in for faces), stored in
``frames.crop_box`` as ``[left, top, right, bottom]`` in original pixels, and applied on read: the
original file is never modified. Annotators can nudge the box or fall back to the centre.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import sqlalchemy as sa
from PIL import Image, ImageOps

from dreamshot import schema
from dreamshot.errors import InvalidInput, NotFound

CROP_SIZES = (256, 512, 768)
DEFAULT_CROP_SIZE = 512
ANALYSIS_SIDE = 256        # smartcrop works on a thumbnail; the box is scaled back
NUDGE_STEP = 0.1           # of the free travel, per nudge
DIRECTIONS = ("left", "right", "up", "down", "center", "auto")
F = schema.frames


def crop_size(studio) -> int:
    size = int(studio.db.get_setting("crop_size", DEFAULT_CROP_SIZE))
    return size if size in CROP_SIZES else DEFAULT_CROP_SIZE


def set_crop_size(studio, size: int) -> int:
    if int(size) not in CROP_SIZES:
        raise InvalidInput(f"Crop size must be one of {', '.join(map(str, CROP_SIZES))}.")
    studio.db.set_setting("crop_size", int(size))
    return int(size)


def open_frame(studio, frame_id: int, draft: int | None = None) -> tuple[Image.Image, dict]:
    """The frame as RGB (EXIF orientation applied) and its row. ``draft``: decode a JPEG at a reduced
    scale whose short side stays >= draft pixels (much faster; for previews only)."""
    with studio.db.read() as conn:
        row = conn.execute(sa.select(F.c.path, F.c.crop_box, F.c.crop_source, F.c.status, F.c.width, F.c.height)
                           .where(F.c.id == int(frame_id))).first()
    if row is None or not row.path:
        raise NotFound(f"Frame {frame_id} has no stored image.")
    with Image.open(studio.settings.data_dir / row.path) as im:
        if draft:
            im.draft("RGB", (draft, draft))
        image = ImageOps.exif_transpose(im).convert("RGB")
    return image, dict(row._mapping)


# ---- choosing a box -----------------------------------------------------------------------------
def _faces(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    try:
        import cv2
    except ImportError:  # faces are a bonus; smartcrop alone still works
        return []
    cascade = _cascade()
    if cascade is None:
        return []
    found = cascade.detectMultiScale(gray, scaleFactor=1.15, minNeighbors=5, minSize=(16, 16))
    return [tuple(int(v) for v in f) for f in found] if len(found) else []


_CASCADE = None


def _cascade():
    global _CASCADE
    if _CASCADE is None:
        import os

        import cv2

        _CASCADE = False
        # opencv-python 5 moved the Haar cascades out of the main wheel: faces then come from
        # smartcrop's skin detection alone.
        cls = getattr(cv2, "CascadeClassifier", None)
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "") or ""
        path = os.path.join(folder, "haarcascade_frontalface_default.xml")
        if cls is not None and os.path.exists(path):
            c = cls(path)
            _CASCADE = c if not c.empty() else False
    return _CASCADE or None


def compute_box(image: Image.Image) -> list[int]:
    """The content-aware square box (side = the short side) in ``image``'s pixels."""
    import smartcrop

    w, h = image.size
    side = min(w, h)
    if w == h:
        return [0, 0, w, h]
    scale = ANALYSIS_SIDE / side
    small = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    s_side = min(small.size)
    top = smartcrop.SmartCrop().crop(small, s_side, s_side, prescale=False, min_scale=1.0, max_scale=1.0)["top_crop"]
    x, y = top["x"] / scale, top["y"] / scale
    faces = _faces(np.asarray(small.convert("L")))
    if faces:
        # keep the union of the faces inside the window when it fits, moving as little as possible
        fx0 = min(f[0] for f in faces) / scale
        fy0 = min(f[1] for f in faces) / scale
        fx1 = max(f[0] + f[2] for f in faces) / scale
        fy1 = max(f[1] + f[3] for f in faces) / scale
        if fx1 - fx0 <= side:
            x = min(max(x, fx1 - side), fx0)
        if fy1 - fy0 <= side:
            y = min(max(y, fy1 - side), fy0)
    x = int(round(min(max(x, 0), w - side)))
    y = int(round(min(max(y, 0), h - side)))
    return [x, y, x + side, y + side]


def center_box(w: int, h: int) -> list[int]:
    side = min(w, h)
    x, y = (w - side) // 2, (h - side) // 2
    return [x, y, x + side, y + side]


def _store_box(studio, frame_id: int, box: list[int], source: str) -> None:
    with studio.db.write() as conn:
        conn.execute(F.update().where(F.c.id == int(frame_id)).values(crop_box=box, crop_source=source))


def get_box(studio, frame_id: int, image: Image.Image | None = None, row: dict | None = None) -> list[int]:
    """The stored box, or the content-aware one computed now and stored."""
    if image is None or row is None:
        image, row = open_frame(studio, frame_id)
    if row.get("crop_box"):
        return [int(v) for v in row["crop_box"]]
    box = compute_box(image)
    _store_box(studio, frame_id, box, "auto")
    return box


def nudge(studio, frame_id: int, direction: str, step: float = NUDGE_STEP) -> list[int]:
    """Move the window left/right/up/down by ``step`` of the image, or reset to center/auto."""
    if direction not in DIRECTIONS:
        raise InvalidInput(f"Nudge direction must be one of {', '.join(DIRECTIONS)}.")
    image, row = open_frame(studio, frame_id)
    w, h = image.size
    if direction == "center":
        box, source = center_box(w, h), "center"
    elif direction == "auto":
        box, source = compute_box(image), "auto"
    else:
        x0, y0, x1, y1 = get_box(studio, frame_id, image, row)
        side = x1 - x0
        dx = {"left": -1, "right": 1}.get(direction, 0) * max(1, round(step * w))
        dy = {"up": -1, "down": 1}.get(direction, 0) * max(1, round(step * h))
        x = min(max(x0 + dx, 0), w - side)
        y = min(max(y0 + dy, 0), h - side)
        box, source = [x, y, x + side, y + side], "manual"
    _store_box(studio, frame_id, box, source)
    return box


def cropped_image(studio, frame_id: int, size: int | None = None) -> Image.Image:
    """The frame cropped with its box (computed and stored on first use), resized to ``size``
    (the project crop size by default). The original file is not touched."""
    image, row = open_frame(studio, frame_id)
    box = get_box(studio, frame_id, image, row)
    size = int(size or crop_size(studio))
    return image.crop(tuple(box)).resize((size, size), Image.LANCZOS)


# ---- previews for the Label tab: small JPEGs, prefetched in the background ---------------------
class Previews:
    """An LRU cache of (crop JPEG, full-frame JPEG, box, size) per frame, filled ahead of the annotator."""

    def __init__(self, studio, side: int = 384, capacity: int = 64):
        self.studio, self.side, self.capacity = studio, side, capacity
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[int, object] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-prefetch")

    def _render(self, frame_id: int) -> dict:
        image, row = open_frame(self.studio, frame_id, draft=self.side * 5 // 6)
        w, h = row.get("width") or image.width, row.get("height") or image.height
        scale = w / image.width  # original pixels per preview pixel
        if row.get("crop_box"):
            box, stored = [int(v) for v in row["crop_box"]], True
        else:  # computed here, stored with the label (the box the annotator accepted)
            side = min(w, h)
            x0, y0, _, _ = compute_box(image)
            x, y = min(max(round(x0 * scale), 0), w - side), min(max(round(y0 * scale), 0), h - side)
            box, stored = [x, y, x + side, y + side], False
        small = tuple(v / scale for v in box)
        crop = image.crop(small).resize((self.side, self.side), Image.BILINEAR)
        full = image.copy()
        full.thumbnail((self.side, self.side))
        return {"crop": _jpeg(crop), "full": _jpeg(full), "box": box, "size": (w, h), "stored": stored}

    def peek(self, frame_id: int) -> dict | None:
        with self._lock:
            return self._cache.get(frame_id)

    def get(self, frame_id: int) -> dict:
        with self._lock:
            hit = self._cache.get(frame_id)
            if hit is not None:
                self._cache.move_to_end(frame_id)
                return hit
            future = self._pending.get(frame_id)
        if future is not None:
            try:
                return future.result()
            except Exception:
                pass
        return self._put(frame_id, self._render(frame_id))

    def _put(self, frame_id: int, value: dict) -> dict:
        with self._lock:
            self._cache[frame_id] = value
            self._cache.move_to_end(frame_id)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
            self._pending.pop(frame_id, None)
        return value

    def mark_stored(self, frame_id: int) -> None:
        with self._lock:
            if frame_id in self._cache:
                self._cache[frame_id] = {**self._cache[frame_id], "stored": True}

    def invalidate(self, frame_id: int) -> None:
        with self._lock:
            self._cache.pop(frame_id, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def prefetch(self, frame_ids: list[int]) -> None:
        for fid in frame_ids:
            with self._lock:
                if fid in self._cache or fid in self._pending:
                    continue

                def job(fid=fid):
                    try:
                        return self._put(fid, self._render(fid))
                    except Exception:
                        with self._lock:
                            self._pending.pop(fid, None)
                        raise
                self._pending[fid] = self._pool.submit(job)


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
