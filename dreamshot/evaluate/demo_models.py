"""The ``demo`` CLIP and DINO: tiny models with random weights, built offline from configs.

They exist so Evaluate (and the Label tab's suggestions) can be tried without Hub access, as the
demo base model, the ``demo`` captioner, ControlNets and motion adapter can. Each is written once
with ``save_pretrained`` under ``<data>/models/demo-clip`` / ``demo-dino`` (SD 1.5's real CLIP
tokenizer, built offline) and loaded back through the same ``from_pretrained`` code as a real
checkpoint. Their scores are not measurements: results made with them say so.
"""

from __future__ import annotations

import json
from pathlib import Path

from dreamshot.demo_model import built_once, replace_folder

DEMO = "demo"
MARKER = "dreamshot-demo.json"
VERSION = 1
SEED = 0
NOTE = "tiny, random weights, built offline: not a measurement"


def build_tiny_clip(out: Path, seed: int = SEED) -> Path:
    """CLIP's architecture shrunk to ~100 k parameters (32 px images, 16-dim embeddings)."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from dreamshot.clip_tokenizer import write_clip_tokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(out)
    write_clip_tokenizer(out)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return Path(out)


def build_tiny_dino(out: Path, seed: int = SEED) -> Path:
    """DINO's ViT shrunk the same way (no pooler, like ``facebook/dino-vits16``)."""
    import torch
    from transformers import ViTConfig, ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8)
    ViTModel(config, add_pooling_layer=False).save_pretrained(out)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    return Path(out)


BUILDERS = {"CLIP": ("demo-clip", build_tiny_clip), "DINO": ("demo-dino", build_tiny_dino)}


def is_demo_folder(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def _current(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text()).get("version") == VERSION and (path / "config.json").is_file()
    except (OSError, ValueError):
        return False


def ensure_demo(models_dir: Path, what: str) -> Path:
    """The demo ``what`` ("CLIP" or "DINO") under ``models_dir``, built once (``demo_model.built_once``:
    one thread or process builds it, none loads a half-written one)."""
    from dreamshot.models import import_libraries

    name, build = BUILDERS[what]

    def write(folder: Path) -> None:
        build(folder)
        (folder / MARKER).write_text(json.dumps({"version": VERSION, "seed": SEED, "note": NOTE}))

    def build_it(path: Path) -> None:
        import_libraries()
        replace_folder(path, write)

    return built_once(Path(models_dir) / name, _current, build_it)
