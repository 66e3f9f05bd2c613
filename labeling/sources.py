"""Where frames come from: a folder (recursive), a ``.zip``, a Hugging Face ``datasets`` image dataset or
imagefolder, and video files (one frame per detected shot, plus a short clip of the shot: see
``labeling.clips``).

Every source yields :class:`Item` objects *one at a time* in a deterministic order, so an import can
resume after item N and never holds the pool in memory. ``Item.read()`` returns the encoded bytes of
one image (bounded in size); decoding and filtering happen in ``labeling.pool``. Files that are not
images (``notes.txt``, an SVG, a symbolic link) come as items with ``skipped`` set, so the import
report can say what it left out; they are not read and not counted as seen.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dreamshot.errors import InvalidInput

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg"}
MAX_FILE_BYTES = 100 * 1024 * 1024        # one image file; larger is refused as absurd
MAX_ZIP_MEMBER_BYTES = 100 * 1024 * 1024  # one zip member, uncompressed
MAX_ZIP_TOTAL_BYTES = 20 * 1024 ** 3      # the whole archive, uncompressed
MAX_ZIP_RATIO = 200                       # uncompressed / compressed; more looks like a zip bomb


class Refused(Exception):
    """An item the import refuses (unsafe path, too large, ...); reported, never fatal."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Item:
    key: str                         # stable id inside the source, e.g. a relative path
    read: Callable[[], bytes]        # the encoded image; may raise Refused or OSError
    meta: dict = field(default_factory=dict)
    skipped: str | None = None       # why this entry is not an image (never read)
    clip: Callable[[], bytes] | None = None   # a video shot's short clip (MP4), stored beside the frame


def not_an_image(key: str, why: str) -> Item:
    return Item(key, _never, {"file": key}, skipped=why)


def _never() -> bytes:
    raise Refused("not_image", "not an image")


def skip_reason(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in (".svg", ".svgz"):
        return "SVG (a vector drawing, not a film frame)"
    return f"not an image ({suffix or 'no extension'})"


def detect_kind(source: str) -> str:
    if source.startswith("hf:"):
        return "hf"
    if source.startswith("imagefolder:"):
        return "imagefolder"
    path = Path(source)
    if not path.exists():
        raise InvalidInput(f"Source {source!r} does not exist (a folder, .zip, video file, "
                           "'imagefolder:DIR' or 'hf:DATASET_ID_OR_PATH').")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return "hf"
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return "zip"
    if suffix in VIDEO_EXTS:
        return "video"
    if suffix in IMAGE_EXTS:
        return "folder"
    raise InvalidInput(f"Cannot import {path.name!r}: expected a folder, a .zip, a video or a dataset.")


def iter_items(source: str, kind: str, start: int = 0) -> Iterator[tuple[int, Item]]:
    """(index, item) pairs from index ``start`` on; the order is the same on every run."""
    if kind == "folder":
        yield from _folder(Path(source), start)
    elif kind == "zip":
        yield from _zip(Path(source), start)
    elif kind == "video":
        yield from _enumerate(_video(Path(source), Path(source).name), start)
    elif kind in ("hf", "imagefolder"):
        yield from _hf(source, kind, start)
    else:
        raise InvalidInput(f"Unknown source kind {kind!r}")


def _enumerate(items: Iterator[Item], start: int) -> Iterator[tuple[int, Item]]:
    for i, item in enumerate(items):
        if i >= start:
            yield i, item


def _read_file(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise Refused("too_large", f"{size / 1e6:.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit")
        return path.read_bytes()
    return read


# ---- folder (recursive; videos inside are expanded into their shots) --------------------------------
def _folder_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _folder(root: Path, start: int) -> Iterator[tuple[int, Item]]:
    def items() -> Iterator[Item]:
        base = root if root.is_dir() else root.parent
        for path in _folder_files(root):
            rel = path.relative_to(base).as_posix()
            suffix = path.suffix.lower()
            if path.is_symlink():  # never followed: it could point anywhere on the server
                yield not_an_image(rel, "symbolic link (not followed)")
            elif suffix in VIDEO_EXTS:
                yield from _video(path, rel)
            elif suffix in IMAGE_EXTS:
                yield Item(rel, _read_file(path), {"file": rel})
            else:
                yield not_an_image(rel, skip_reason(rel))
    yield from _enumerate(items(), start)


# ---- zip: member by member, unsafe names and bombs refused, nothing extracted to disk ----------------
def unsafe_member_name(name: str) -> bool:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    return ".." in PurePosixPath(name.replace("\\", "/")).parts


# What zipfile raises for one bad entry: a bad CRC or header (BadZipFile), an encrypted entry
# (RuntimeError), an unknown compression method (NotImplementedError), broken deflate data
# (zlib.error), data cut short (EOFError), a malformed header field (ValueError).
ZIP_ENTRY_ERRORS = (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError, ValueError,
                    OSError)


def zip_entry_problem(name: str, exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, RuntimeError) and "encrypted" in text:
        return f"zip entry {name!r} is encrypted (password protected)"
    if isinstance(exc, NotImplementedError):
        return f"zip entry {name!r} uses a compression method that cannot be read"
    return f"zip entry {name!r} is damaged ({exc.__class__.__name__}: {text[:120]})"


def _zip(path: Path, start: int) -> Iterator[tuple[int, Item]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"{path.name} is not a readable zip file ({exc}).") from None
    with archive:
        members = sorted((m for m in archive.infolist() if not m.is_dir()), key=lambda m: m.filename)
        total = 0
        for i, member in enumerate(members):
            total += member.file_size
            if i < start:
                continue
            name = member.filename
            suffix = PurePosixPath(name).suffix.lower()
            if not unsafe_member_name(name) and suffix not in IMAGE_EXTS:
                yield i, not_an_image(name, skip_reason(name))
                continue

            def read(member=member, name=name, total=total) -> bytes:
                if unsafe_member_name(name):
                    raise Refused("unsafe_path", f"zip entry {name!r} points outside the archive")
                if member.file_size > MAX_ZIP_MEMBER_BYTES or total > MAX_ZIP_TOTAL_BYTES:
                    raise Refused("too_large", f"zip entry {name!r} is too large")
                if member.compress_size and member.file_size / member.compress_size > MAX_ZIP_RATIO:
                    raise Refused("too_large", f"zip entry {name!r} looks like a zip bomb "
                                               f"(compressed {member.file_size // member.compress_size}:1)")
                try:
                    with archive.open(member) as fh:  # the header may lie: never read past the limit
                        data = fh.read(MAX_ZIP_MEMBER_BYTES + 1)
                except ZIP_ENTRY_ERRORS as exc:
                    raise Refused("corrupt", zip_entry_problem(name, exc)) from None
                if len(data) > MAX_ZIP_MEMBER_BYTES:
                    raise Refused("too_large", f"zip entry {name!r} is too large")
                return data

            yield i, Item(name, read, {"file": name})


# ---- video: PySceneDetect (PyAV backend) finds the cuts, PyAV decodes the middle frame of each shot ----
# and the clip window around it (labeling.clips), in one pass over the video.
def shot_ranges(path: Path) -> list[tuple[int, int]]:
    """[start, end) frame numbers of each detected shot (the whole video when there is no cut)."""
    from scenedetect import ContentDetector, SceneManager, open_video

    try:
        video = open_video(str(path), backend="pyav")
    except Exception:  # the backend's own error types vary; the caller reports the file
        video = open_video(str(path))
    manager = SceneManager()
    manager.add_detector(ContentDetector())
    manager.detect_scenes(video, show_progress=False)
    scenes = manager.get_scene_list(start_in_scene=True)
    if not scenes:
        frames = max(1, int(video.duration.frame_num) if video.duration else 1)
        return [(0, frames)]
    return [(a.frame_num, b.frame_num) for a, b in scenes]


def shot_middles(path: Path) -> list[int]:
    """Frame numbers of the middle of each detected shot (the whole video when there is no cut)."""
    return [(a + b - 1) // 2 for a, b in shot_ranges(path)]


def _video_shots(path: Path, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, bytes, list, tuple, float]]:
    """(middle frame number, its PNG, the clip window's frames, the window, fps) per shot, in order."""
    import av

    from labeling import clips

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 24)
        shots = []
        for a, b in ranges:
            middle = (a + b - 1) // 2
            shots.append((middle, clips.window(middle, a, b, fps)))
        if not shots:
            return
        at, png, window_frames = 0, None, []
        for index, frame in enumerate(container.decode(stream)):
            middle, (first, last) = shots[at]
            if index == middle:
                buf = io.BytesIO()
                frame.to_image().save(buf, format="PNG")
                png = buf.getvalue()
            if first <= index < last:
                window_frames.append(clips.bounded(frame.to_image()))
            if index >= max(middle, last - 1):
                if png is not None:
                    yield middle, png, window_frames, (first, last), fps
                at, png, window_frames = at + 1, None, []
                if at >= len(shots):
                    return
        if png is not None:  # the container's frame count was an estimate: the video ended early
            yield shots[at][0], png, window_frames, shots[at][1], fps


def _video(path: Path, rel: str) -> Iterator[Item]:
    try:
        ranges = shot_ranges(path)
    except Exception as exc:  # unreadable video: one reported item, never a crash
        message = f"cannot read video: {exc.__class__.__name__}"

        def fail() -> bytes:
            raise Refused("corrupt", message)
        yield Item(rel, fail, {"file": rel})
        return
    from labeling import clips

    for index, data, frames, (first, last), fps in _video_shots(path, ranges):
        meta = {"file": rel, "video_frame": index, "clip_frames": [first, first + len(frames)],
                "clip_fps": round(fps, 3)}
        make = (lambda frames=frames, fps=fps: clips.encode(frames, fps)) if frames else None
        yield Item(f"{rel}#frame={index}", (lambda data=data: data), meta, clip=make)


# ---- Hugging Face datasets: streamed, one row at a time -----------------------------------------
def _open_dataset(datasets, spec: str, kind: str):
    if kind == "imagefolder":
        return datasets.load_dataset("imagefolder", data_dir=spec, split="train", streaming=True)
    if Path(spec).is_dir() and ((Path(spec) / "dataset_info.json").exists() or (Path(spec) / "state.json").exists()):
        ds = datasets.load_from_disk(spec)
        return ds[next(iter(ds))] if isinstance(ds, datasets.DatasetDict) else ds
    return datasets.load_dataset(spec, split="train", streaming=True)


def _hf(source: str, kind: str, start: int) -> Iterator[tuple[int, Item]]:
    import datasets

    spec = source.split(":", 1)[1] if source.startswith(("hf:", "imagefolder:")) else source
    try:
        stream = _open_dataset(datasets, spec, kind)
    except Exception as exc:  # datasets raises many types (offline, missing split, bad files)
        raise InvalidInput(f"Cannot open the dataset {spec!r}: {exc.__class__.__name__}: {str(exc)[:300]}") from None
    features = stream.features or {}
    column = next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)
    if column is None:
        raise InvalidInput(f"The dataset {spec!r} has no image column.")
    stream = stream.cast_column(column, datasets.Image(decode=False))
    if start:
        stream = stream.skip(start) if hasattr(stream, "skip") else stream.select(range(start, len(stream)))
    for i, row in enumerate(stream, start=start):
        image = row.pop(column) or {}
        meta = {k: v for k, v in row.items() if isinstance(v, (str, int, float, bool)) or v is None}
        name = os.path.basename(image.get("path") or "") or f"{i}"
        meta["file"] = name

        def read(image=image) -> bytes:
            if image.get("bytes"):
                return image["bytes"]
            if image.get("path"):
                return _read_file(Path(image["path"]))()
            raise Refused("corrupt", "dataset row has no image")
        yield i, Item(f"{spec}[{i}]", read, meta)
