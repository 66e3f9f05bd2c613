"""Shared setup for the caption tests: labeled frames inserted the way the Label tab stores them,
and the tiny BLIP-2 captioner built once per session."""

from __future__ import annotations

import uuid
from pathlib import Path

from PIL import Image

from dreamshot import schema
from dreamshot.storage import now

SHOTS = ["close", "medium", "long"]


def add_frames(studio, n: int, *, split: str = "train", labeled: bool = True, size=(96, 64)) -> list[int]:
    """n frames (small PNGs under the frames folder), labeled close/medium/long in turn."""
    frames_dir = Path(studio.settings.frames_dir)
    frames_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    with studio.db.write() as conn:
        for i in range(n):
            name = f"{split}-{i}-{uuid.uuid4().hex[:12]}.png"
            color = ((i * 53) % 256, (i * 97) % 256, (i * 31) % 256)
            img = Image.new("RGB", size, color)
            img.paste((255 - color[0], 40, 200), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
            img.save(frames_dir / name)
            fid = conn.execute(schema.frames.insert().values(
                source=f"test/{name}", path=f"frames/{name}", meta={}, status="ok", split=split,
                width=size[0], height=size[1], mode="RGB", created_at=now(),
            )).inserted_primary_key[0]
            if labeled:
                conn.execute(schema.labels.insert().values(
                    frame_id=fid, annotator="ann", taxonomy="paper", action="label",
                    shot=SHOTS[i % len(SHOTS)], is_extra=False, created_at=now(),
                ))
            ids.append(fid)
    return ids
