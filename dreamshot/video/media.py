"""Video files in and out, with PyAV: probe and refuse bad inputs, decode frames, encode MP4 (H.264,
the original frame rate, the original audio copied over) and GIF.

Limits are arguments (``Limits``), so a caller may configure them; a refused input raises
``InvalidInput`` with the reason and leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from dreamshot.errors import InvalidInput

log = logging.getLogger(__name__)

MAX_SECONDS = 120.0            # default limit on an input's duration
MAX_BYTES = 500 * 1024 * 1024  # default limit on an input's file size
MAX_PIXELS = 4096 * 2160       # default limit on an input's frame size (4K DCI)


@dataclass(frozen=True)
class Limits:
    max_seconds: float = MAX_SECONDS
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: Fraction
    frames: int          # decoded count if the container does not say
    seconds: float
    has_audio: bool


def probe(path: Path, limits: Limits = Limits(), *, max_frames: int | None = None) -> VideoInfo:
    """The input's size, frame rate and length; InvalidInput if it is not a video or too big. With
    ``max_frames`` only that many frames will be used, and the length limit applies to them."""
    import av

    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path.name}: no such file.")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise InvalidInput(f"{path.name} is {size / 2**20:.0f} MB; videos are limited to "
                           f"{limits.max_bytes / 2**20:.0f} MB.")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InvalidInput(f"{path.name} has no video stream.")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = Fraction(stream.average_rate or stream.guessed_rate or 0)
            seconds = float(stream.duration * stream.time_base) if stream.duration else (
                container.duration / 1e6 if container.duration else 0.0)
            frames = stream.frames or (round(seconds * fps) if fps else 0)
            has_audio = bool(container.streams.audio)
    except InvalidInput:
        raise
    except Exception as exc:  # av.error.InvalidDataError and friends: not a video we can read
        raise InvalidInput(f"{path.name} is not a video file PyAV can read ({exc.__class__.__name__}).") from None
    if not width or not height or not fps:
        raise InvalidInput(f"{path.name}: the video stream has no frame size or frame rate.")
    if width * height > limits.max_pixels:
        raise InvalidInput(f"{path.name} is {width}×{height}; frames are limited to {limits.max_pixels:,} pixels.")
    if min(seconds, (max_frames / fps) if max_frames else seconds) > limits.max_seconds:
        raise InvalidInput(f"{path.name} lasts {seconds:.1f} s; videos are limited to {limits.max_seconds:g} s "
                           "(restyle a part with Max frames, --max-frames; or raise --max-seconds).")
    return VideoInfo(path, width, height, fps, frames, seconds, has_audio)


def read_frames(path: Path, *, start: int = 0, count: int | None = None):
    """Yield (index, PIL.Image RGB) for frames start .. start+count-1 of the first video stream."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index < start:
                continue
            if count is not None and index >= start + count:
                break
            yield index, frame.to_image().convert("RGB")


def fit_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) with the input's aspect ratio, the long side ``long_side``, both multiples of 8."""
    scale = long_side / max(width, height)
    return max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8)


def write_mp4(frames, fps, path: Path, *, audio_from: Path | None = None,
              comment: str | None = None) -> Path:
    """Encode PIL frames (any iterable, streamed) as H.264 MP4 at ``fps``, exactly one video frame
    per image; copy the audio of ``audio_from`` (cut to the video's length) when it has any."""
    import itertools

    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = Fraction(fps).limit_denominator(100000)
    frames = iter(frames)
    first = next(frames)
    frames = itertools.chain([first], frames)
    width, height = first.size
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as out:
        if comment:
            out.metadata["comment"] = comment
        stream = out.add_stream("libx264", rate=fps)
        if width % 2 or height % 2:
            raise ValueError(f"H.264 (yuv420p) needs even frame sizes, got {width}x{height}")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # No time_base of our own: with one set here libx264's delayed frames (past its lookahead,
        # e.g. frames 12-15 of 16) come back with broken timestamps and the muxer refuses them.
        stream.options = {"crf": "18", "preset": "veryfast"}
        audio_in = _open_audio(audio_from)
        audio_out = out.add_stream_from_template(audio_in[1]) if audio_in else None
        count = 0
        for i, image in enumerate(frames):
            count += 1
            frame = av.VideoFrame.from_image(image.convert("RGB"))
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if audio_in:
            _copy_audio(audio_in, audio_out, out, seconds=count / fps)
    tmp.replace(path)
    return path


def _open_audio(path: Path | None):
    import av

    if path is None:
        return None
    container = av.open(str(path))
    if not container.streams.audio:
        container.close()
        return None
    return container, container.streams.audio[0]


def _copy_audio(audio_in, audio_out, out, *, seconds: float) -> None:
    container, stream = audio_in
    try:
        for packet in container.demux(stream):
            if packet.dts is None or packet.pts is None:
                continue
            if float(packet.pts * stream.time_base) >= seconds:
                break
            packet.stream = audio_out
            out.mux(packet)
    finally:
        container.close()


def write_gif(frames: list, fps: float, path: Path, *, comment: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    duration = max(20, round(100 / float(fps)) * 10)   # GIF counts in centiseconds
    extra = {"comment": comment.encode("utf-8")} if comment else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0, **extra)
    return path


def count_frames(path: Path) -> int:
    """Decoded video frames (tests and checks: containers may only estimate)."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))
