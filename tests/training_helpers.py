"""Tiny synthetic imagefolders for tests and the benchmark (no download needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_imagefolder(folder: Path, shots=("close",), per_shot: int = 3, size=(48, 40), seed: int = 0) -> Path:
    """``folder`` with random-texture PNGs and a metadata.jsonl in the studio's export format
    (file_name, shot, text = full training prompt, caption)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for shot in shots:
        for i in range(per_shot):
            name = f"{shot}/{shot}-{i:03d}.png"
            (folder / shot).mkdir(exist_ok=True)
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name)
            caption = f"a person number {i} in a room"
            rows.append({"file_name": name, "shot": shot, "caption": caption,
                         "text": f"a high-quality {shot.replace('_', ' ')} shot picture of {caption}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def smoke_config(dataset, base_model, out, **changes):
    """The smoke preset for the shot type 'close' on ``dataset`` and ``base_model``, writing ``out``."""
    from training import config as tconfig

    return tconfig.preset("smoke", shot="close", dataset=str(dataset), base_model=str(base_model),
                          output_dir=str(out), **changes)


def status_events(out: Path) -> list[dict]:
    """The run's status.jsonl, one dict per event."""
    return [json.loads(line) for line in (Path(out) / "status.jsonl").read_text().splitlines()]
