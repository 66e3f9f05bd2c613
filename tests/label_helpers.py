"""Pools for the labeling tests: real photos shipped in the gradio wheel mixed with grayscale,
corrupt, truncated, duplicate, near-duplicate and too-small files, plus small synthetic frames."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import gradio

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = Path(gradio.__file__).parent / "media_assets" / "images"
REAL = ["tower.jpg", "groot.jpeg", "cheetah.jpg", "lion.jpg", "cheetah1.jpg"]  # all >= 256 px, color


def make_mixed_pool(folder: Path) -> dict:
    """The 'new user' pool. Returns the expected counts of the import report (min side 256)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in REAL:
        shutil.copyfile(PHOTOS / name, folder / name)
    sub = folder / "more"
    sub.mkdir()
    Image.open(PHOTOS / "tower.jpg").convert("L").save(folder / "gray_tower.jpg")           # 1 channel
    Image.open(PHOTOS / "cheetah.jpg").convert("L").convert("RGB").save(sub / "bw_as_rgb.png")  # B&W film in RGB
    (folder / "corrupt.jpg").write_bytes(b"this is not an image")
    data = (PHOTOS / "groot.jpeg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    shutil.copyfile(PHOTOS / "lion.jpg", sub / "lion_copy.jpg")                              # exact duplicate
    Image.open(PHOTOS / "groot.jpeg").resize((700, 394)).save(sub / "groot_resized.jpg", quality=85)  # near dup
    shutil.copyfile(PHOTOS / "bus.png", folder / "bus_small.png")                            # 61x68: too small
    (folder / "notes.txt").write_text("ignored: not an image")
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')   # not a raster image
    (folder / "link.jpg").symlink_to(folder / "tower.jpg")                         # never followed
    return {"seen": 12, "kept": 5, "filtered": {"grayscale": 2, "corrupt": 2, "duplicate": 1,
                                                "near_duplicate": 1, "too_small": 1}}


MIXED_FILTERED = {  # file -> (reason, words its report line must contain)
    "gray_tower.jpg": ("grayscale", "mode L"),
    "more/bw_as_rgb.png": ("grayscale", "no color"),
    "more/lion_copy.jpg": ("duplicate", "same content as lion.jpg"),
    "more/groot_resized.jpg": ("near_duplicate", "near-duplicate of groot.jpeg"),
    "bus_small.png": ("too_small", "< 256 px"),
}
MIXED_NOT_IMAGES = {"notes.txt": "(.txt)", "logo.svg": "SVG", "link.jpg": "symbolic link"}


def corrupt_zip(path: Path) -> dict[str, str]:
    """A stored (uncompressed) zip with one good photo and three bad entries; returns what each bad
    entry is: a flipped byte (bad CRC), an entry marked encrypted, an entry longer than declared."""
    import struct
    import zipfile

    good = (PHOTOS / "tower.jpg").read_bytes()
    other = {name: (PHOTOS / name).read_bytes() for name in ("lion.jpg", "cheetah.jpg", "groot.jpeg")}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a_good.jpg", good)
        zf.writestr("b_flipped.jpg", other["lion.jpg"])
        zf.writestr("c_encrypted.jpg", other["cheetah.jpg"])
        zf.writestr("d_longer.jpeg", other["groot.jpeg"])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    for name, info in infos.items():
        local = info.header_offset
        name_len, extra_len = struct.unpack("<HH", data[local + 26: local + 30])
        start = local + 30 + name_len + extra_len
        central = _central_entry(data, name)
        if name == "b_flipped.jpg":
            data[start + info.file_size // 2] ^= 0xFF
        elif name == "c_encrypted.jpg":
            for at in (local + 6, central + 8):
                data[at] |= 0x01
        elif name == "d_longer.jpeg":
            short = info.file_size // 2
            struct.pack_into("<II", data, local + 18, short, short)
            struct.pack_into("<II", data, central + 20, short, short)
    path.write_bytes(bytes(data))
    return {"b_flipped.jpg": "damaged", "c_encrypted.jpg": "encrypted", "d_longer.jpeg": "damaged"}


def _central_entry(data: bytearray, name: str) -> int:
    import struct

    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        name_len = struct.unpack("<H", data[at + 28: at + 30])[0]
        if data[at + 46: at + 46 + name_len] == name.encode():
            return at
        at += 4
    raise ValueError(name)


def synthetic_frames(folder: Path, n: int, size=(320, 240), seed: int = 0) -> list[Path]:
    """``n`` distinct color frames (blocky random patterns: distinct perceptual hashes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize(size, Image.NEAREST)
        path = folder / f"frame_{i:04d}.png"
        image.save(path)
        paths.append(path)
    return paths


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def run_cli(*args: str, data: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "labeling", "--data", str(data), "--model", "demo", *args],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"CLI failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


VIDEO_COLORS = [(220, 30, 30), (30, 200, 40), (40, 40, 210)]


def write_video(path, colors=VIDEO_COLORS, frames_per_shot=20, size=(160, 120), fps=12):
    """An MP4 of shots of solid colours (a little noise) with hard cuts between them: each shot's
    frames can be told from the others' by colour alone."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for color in colors:
            for _ in range(frames_per_shot):
                noise = rng.integers(-8, 8, size=(size[1], size[0], 3))
                arr = np.clip(np.array(color)[None, None, :] + noise, 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
