"""Tiny CLIP and DINO models built from configs (random weights; the builders of the studio's own
``demo`` models) and saved with save_pretrained, so the evaluation loads them through the same
from_pretrained code as the real checkpoints; plus a studio with held-out frames, captions and shot
LoRAs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamshot import schema
from dreamshot.storage import now

SHOTS = ("close", "medium", "long")


def build_tiny_clip(out: Path, seed: int = 0) -> Path:
    from dreamshot.evaluate.demo_models import build_tiny_clip as build

    return build(out, seed)


def build_tiny_dino(out: Path, seed: int = 0) -> Path:
    from dreamshot.evaluate.demo_models import build_tiny_dino as build

    return build(out, seed)


@pytest.fixture(scope="session")
def tiny_eval_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval-models")
    return {"clip": str(build_tiny_clip(root / "clip")), "dino": str(build_tiny_dino(root / "dino"))}


def add_held_out(studio, n_per_shot: int, *, split: str = "test", shots=SHOTS, seed: int = 0) -> list[int]:
    """Frames (blocky color PNGs) labeled and captioned, in ``split``."""
    frames_dir = Path(studio.settings.frames_dir)
    frames_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = []
    with studio.db.write() as conn:
        for shot in shots:
            for i in range(n_per_shot):
                name = f"{split}-{shot}-{i}-{seed}.png"
                Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((96, 72), Image.NEAREST) \
                    .save(frames_dir / name)
                fid = conn.execute(schema.frames.insert().values(
                    source=f"test/{name}", path=f"frames/{name}", meta={}, status="ok", split=split,
                    width=96, height=72, mode="RGB", created_at=now())).inserted_primary_key[0]
                conn.execute(schema.labels.insert().values(
                    frame_id=fid, annotator="ann", taxonomy="paper", action="label", shot=shot,
                    is_extra=False, created_at=now()))
                conn.execute(schema.captions.insert().values(
                    frame_id=fid, caption=f"a person number {i} by a window", caption_original=None,
                    reviewed=False, version=1, created_at=now(), updated_at=now()))
                ids.append(fid)
    return ids


@pytest.fixture
def eval_studio(studio, lora_files):
    """A studio with LoRAs 'close' and 'medium' and 2 held-out frames of each shot type."""
    from dreamshot.generate.loras import LoraLibrary

    lib = LoraLibrary(studio)
    lib.register(lora_files["close"], name="close", shot="close", origin="trained")
    lib.register(lora_files["medium"], name="medium", shot="medium", origin="trained")
    add_held_out(studio, 2)
    return studio


def write_metadata(folder: Path, rows: list[dict]) -> None:
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
