"""Short clips of video shots: the Label tab's video import keeps, beside each shot's middle frame
(the frame people label), a short clip of that shot around the middle, so a labeled shot can train a
motion LoRA (``training.motion``).

- ``window``: up to ``CLIP_FRAMES`` frames / ``CLIP_SECONDS`` seconds centred on the middle frame,
  never crossing the shot's cut;
- ``encode``: the window's frames re-encoded with PyAV (H.264 MP4 at the source frame rate, long side
  at most ``CLIP_SIDE``, refused over ``MAX_CLIP_BYTES``);
- ``store``: ``<data>/clips/<sha[:2]>/<sha>.mp4``; the frame row links it as ``frames.meta["clip"]``
  (with ``clip_frames`` = [first, last) and ``clip_fps``), so labeling the frame labels its clip;
- ``export_clips``: the labeled shots' clips as an imagefolder of clips (``clips/*.mp4`` +
  ``metadata.jsonl``: file_name, shot, text, caption, frame_id, frames, fps).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.storage import store_blob

CLIP_FRAMES = 16
CLIP_SECONDS = 2.0
CLIP_SIDE = 512
MAX_CLIP_BYTES = 16 * 1024 * 1024
F, C = schema.frames, schema.captions


def window(middle: int, start: int, end: int, fps: float, *, frames: int = CLIP_FRAMES,
           seconds: float = CLIP_SECONDS) -> tuple[int, int]:
    """[first, last) frame numbers of the clip around ``middle`` inside the shot [start, end)."""
    n = max(1, min(frames, int(seconds * fps) if fps > 0 else frames, end - start))
    first = min(max(start, middle - n // 2), end - n)
    return first, first + n


def bounded(image, side: int | None = None):
    """The frame scaled so its long side is at most ``side`` (``CLIP_SIDE``), both sides even (H.264)."""
    from PIL import Image

    side = side or CLIP_SIDE
    w, h = image.size
    scale = min(1.0, side / max(w, h))
    nw, nh = max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)
    image = image.convert("RGB")
    return image if (nw, nh) == (w, h) else image.resize((nw, nh), Image.Resampling.BICUBIC)


def encode(images: list, fps: float) -> bytes:
    """H.264 MP4 bytes of ``images`` (PIL, same size) at ``fps``; ValueError when over the size bound."""
    import av

    buf = io.BytesIO()
    rate = Fraction(fps or 24).limit_denominator(100000)
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)   # libx264 prints its banner per clip otherwise
    try:
        _encode(av, buf, images, rate)
    finally:
        av.logging.set_level(level)
    data = buf.getvalue()
    if len(data) > MAX_CLIP_BYTES:
        raise ValueError(f"clip of {len(data) / 2**20:.0f} MB is over {MAX_CLIP_BYTES // 2**20} MB")
    return data


def _encode(av, buf, images: list, rate: Fraction) -> None:
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height = images[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_image(image)
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def store(data_dir: Path, data: bytes) -> str:
    return store_blob(data_dir, "clips", hashlib.sha256(data).hexdigest(), ".mp4", data)


def keep_clip(studio, item, meta: dict) -> None:
    """Store the clip of a video item (if it has one) and link it in the frame's ``meta``; a clip
    that cannot be made is noted in ``meta["clip_error"]`` and never costs the frame."""
    make = getattr(item, "clip", None)
    if make is None:
        return
    try:
        meta["clip"] = store(studio.settings.data_dir, make())
    except (ValueError, OSError) as exc:
        meta["clip_error"] = f"{exc.__class__.__name__}: {str(exc)[:120]}"


def frame_clip(studio, frame_id: int) -> Path | None:
    """The clip file of a frame imported from a video, or None."""
    with studio.db.read() as conn:
        meta = conn.execute(sa.select(F.c.meta).where(F.c.id == frame_id)).scalar()
    rel = (meta or {}).get("clip")
    path = Path(studio.settings.data_dir) / rel if rel else None
    return path if path is not None and path.is_file() else None


@dataclass
class ClipExport:
    path: Path
    count: int
    per_class: dict[str, int]
    without_clip: int = 0          # labeled frames that are stills (no clip to export)
    uncaptioned: int = 0
    missing: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.per_class.items())) or "none"
        lines = [f"Exported {self.count} shot clips to {self.path}", f"  per class: {parts}"]
        if self.without_clip:
            lines.append(f"  {self.without_clip} labeled frames are stills (not from a video): no clip")
        if self.uncaptioned:
            lines.append(f"  {self.uncaptioned} clips have no caption yet (caption their frames in the Captions tab)")
        if self.missing:
            lines.append(f"  {len(self.missing)} clip files are missing: " + "; ".join(self.missing[:10]))
        return "\n".join(lines)


def export_clips(studio, out_dir, *, shots=None, include_extra: bool = False, split: str | None = "train",
                 roots=None) -> ClipExport:
    """The clips of the labeled shots (final labels, as the still export) as an imagefolder of clips;
    ``roots``: the allowed roots for a folder typed in the page (``labeling.export``)."""
    from labeling import labels
    from labeling.export import _check_out_dir, replaced_folder

    out = _check_out_dir(Path(str(out_dir or "")).expanduser(), studio.settings.data_dir, roots)
    taxonomy = labels.current_taxonomy(studio)
    for s in shots or ():
        taxonomy.get(s)
    chosen = {fid: shot for fid, shot in labels.final_labels(studio, include_extra=include_extra, split=split).items()
              if not shots or shot in shots}
    ids = sorted(chosen)
    with studio.db.read() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(F.c.id, F.c.source, F.c.meta).where(F.c.id.in_(ids)))} if ids else {}
        caps = dict(conn.execute(sa.select(C.c.frame_id, C.c.caption).where(C.c.frame_id.in_(ids))).all()) if ids else {}
    project, template = studio.project, studio.project.template()
    report = ClipExport(path=out, count=0, per_class={})
    with replaced_folder(out, studio.settings.data_dir) as tmp:
        (tmp / "clips").mkdir()
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as fh:
            for fid in ids:
                meta, shot = dict(rows[fid].meta or {}), chosen[fid]
                if not meta.get("clip"):
                    report.without_clip += 1
                    continue
                src = Path(studio.settings.data_dir) / meta["clip"]
                if not src.is_file():
                    report.missing.append(f"frame {fid}")
                    continue
                name = f"clips/{fid:07d}_{shot}.mp4"
                shutil.copyfile(src, tmp / name)
                caption = caps.get(fid) or ""
                report.uncaptioned += 0 if caption else 1
                first, last = (meta.get("clip_frames") or [None, None])[:2]
                fh.write(json.dumps({
                    "file_name": name, "shot": shot, "text": project.prompt(shot, caption, template),
                    "caption": caption, "frame_id": fid, "source": rows[fid].source,
                    "frames": (last - first) if first is not None else None, "fps": meta.get("clip_fps"),
                }, ensure_ascii=False) + "\n")
                report.count += 1
                report.per_class[shot] = report.per_class.get(shot, 0) + 1
    return report


def refuse_empty(report: ClipExport, shot: str) -> None:
    if not report.count:
        raise InvalidInput(f"No labeled {shot} shot has a clip to train on: import videos in the Label tab "
                           "(each detected shot keeps a short clip) and label their frames first.")
