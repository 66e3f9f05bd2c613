"""Held-out frames for an evaluation, and the contamination check.

Sources:
- ``test``: the studio's test split - usable frames (status ok) with a settled label
  (``labeling.labels.final_labels``) and a caption (Captions tab). The image is the square crop the
  LoRAs are trained on, copied to ``OUT/frames/`` so a run folder is self-contained.
- a folder: an imagefolder with ``metadata.jsonl`` rows ``file_name``, ``shot`` and ``caption``
  (or ``text``, used as the caption as is).

Contamination: a frame is "used for training" when its studio frame id is listed in the
``metadata.jsonl`` of any training run's dataset, or its file's sha256 equals a training image's
or the original import hash of such a frame. Those frames are refused unless the caller overrides,
and the override is written into the results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.generate.loras import file_sha256

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class HeldOutFrame:
    key: str               # stable id inside a run (frame-12, or the imagefolder file name)
    path: Path             # image file
    shot: str
    caption: str
    frame_id: int | None = None


def studio_test_frames(studio, out_dir: Path, shots: list[str]) -> tuple[list[HeldOutFrame], dict]:
    """The labeled, captioned test-split frames of ``shots``; crops saved under out_dir/frames."""
    from labeling.captions.sources import frame_image
    from labeling.labels import final_labels

    labels = final_labels(studio, split="test")
    f, c = schema.frames, schema.captions
    with studio.db.read() as conn:
        ok = set(conn.execute(sa.select(f.c.id).where(f.c.status == "ok", f.c.split == "test")).scalars())
        caps = dict(conn.execute(sa.select(c.c.frame_id, c.c.caption)).all())
    skipped = {"no_caption": 0, "other_shot": 0}
    frames = []
    folder = Path(out_dir) / "frames"
    for fid in sorted(labels):
        if fid not in ok:
            continue
        if labels[fid] not in shots:
            skipped["other_shot"] += 1
            continue
        caption = (caps.get(fid) or "").strip()
        if not caption:
            skipped["no_caption"] += 1
            continue
        path = folder / f"frame-{fid}.png"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            frame_image(studio, fid).save(path)
        frames.append(HeldOutFrame(f"frame-{fid}", path, labels[fid], caption, fid))
    return frames, skipped


def imagefolder_frames(folder: Path, shots: list[str]) -> tuple[list[HeldOutFrame], dict]:
    folder = Path(folder).expanduser()
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise InvalidInput(f"{folder} has no metadata.jsonl (rows: file_name, shot, caption or text).")
    frames, missing, skipped = [], [], {"no_caption": 0, "other_shot": 0}
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, shot = str(row["file_name"]), str(row.get("shot") or "")
        except (ValueError, KeyError, TypeError):
            raise InvalidInput(f"metadata.jsonl line {n} is not a JSON object with file_name and shot.") from None
        caption = str(row.get("caption") or row.get("text") or "").strip()
        path = (folder / name).resolve()
        if not path.is_relative_to(folder.resolve()) or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InvalidInput(f"metadata.jsonl line {n}: {name!r} is not an image inside {folder}.")
        if not path.is_file():
            missing.append(name)
            continue
        if shot not in shots:
            skipped["other_shot"] += 1
            continue
        if not caption:
            skipped["no_caption"] += 1
            continue
        frame_id = row.get("frame_id") if isinstance(row.get("frame_id"), int) else None
        frames.append(HeldOutFrame(name, path, shot, caption, frame_id))
    if missing:
        raise InvalidInput(f"{len(missing)} image(s) listed in metadata.jsonl are missing: "
                           + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return frames, skipped


def training_footprint(studio) -> tuple[set[int], set[str]]:
    """(frame ids, file sha256s) of everything the studio's training runs trained on."""
    runs = schema.training_runs
    data_dir = Path(studio.settings.data_dir).resolve()
    with studio.db.read() as conn:
        rows = conn.execute(sa.select(runs.c.output_dir, runs.c.config)).all()
    ids, hashes, seen = set(), set(), set()
    for output_dir, config in rows:
        out = Path(output_dir) if Path(output_dir).is_absolute() else data_dir / output_dir
        dataset = ((config or {}).get("train") or {}).get("dataset") or str(out / "data")
        folder = Path(dataset)
        if folder in seen or not (folder / "metadata.jsonl").is_file():
            continue
        seen.add(folder)
        for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row.get("frame_id"), int):
                ids.add(row["frame_id"])
            image = folder / str(row.get("file_name", ""))
            if image.is_file():
                hashes.add(file_sha256(image))
    if ids:
        f = schema.frames
        with studio.db.read() as conn:
            hashes |= {h for h in conn.execute(sa.select(f.c.content_hash).where(f.c.id.in_(sorted(ids)))).scalars() if h}
    return ids, hashes


def contaminated(studio, frames: list[HeldOutFrame]) -> list[str]:
    """Keys of the frames that were used for training."""
    ids, hashes = training_footprint(studio)
    if not ids and not hashes:
        return []
    return [fr.key for fr in frames
            if (fr.frame_id is not None and fr.frame_id in ids) or file_sha256(fr.path) in hashes]


def load_frames(studio, source: str, out_dir: Path, shots: list[str]) -> tuple[list[HeldOutFrame], dict]:
    source = (source or "test").strip()
    if source == "test":
        return studio_test_frames(studio, out_dir, shots)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise InvalidInput(f"Held-out frames: {source!r} is neither 'test' (the studio's test split) nor a folder.")
    return imagefolder_frames(folder, shots)
