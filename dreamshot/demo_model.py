"""The built-in demo model: Stable Diffusion 1.5's architecture shrunk to ~1 M parameters, random
weights, and SD 1.5's real CLIP tokenizer built offline.

It exists so the studio starts and every feature can be exercised without a GPU or Hub access. It is
saved with ``save_pretrained`` under ``<data>/models/demo-sd`` and loaded back with
``StableDiffusionPipeline.from_pretrained`` - the same code path as a real model. Its images are
noise-like: the UI says so in a banner.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from dreamshot.clip_tokenizer import write_clip_tokenizer

DEMO_VERSION = 2   # 2: the scheduler config says clip_sample false, as SD 1.5's does
MARKER = "dreamshot-demo.json"
SEED = 1234

# SD 1.5's scheduler settings (PNDM with the scaled-linear betas it was trained with).
SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    steps_offset=1, skip_prk_steps=True, set_alpha_to_one=False,
)


def is_demo_model(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def build_tiny_sd(out_dir: Path, seed: int = SEED) -> Path:
    """Write a tiny SD-1.x-architecture pipeline to out_dir (atomically) and return the path."""
    from dreamshot.models import import_libraries

    import_libraries()
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # Attention only at the lower resolution keeps 512 px fast on a CPU.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    # Four blocks: the latent is 8x smaller than the image, as in SD (a 2-block VAE makes 512 px slow).
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu",
    ))
    scheduler = PNDMScheduler(**SD15_SCHEDULER)
    # SD 1.5's scheduler_config.json also carries "clip_sample": false (PNDM ignores it; a DDIM scheduler
    # made from this config reads it: without it DDIM clamps every x0 prediction to [-1, 1]).
    scheduler.register_to_config(clip_sample=False)

    def write(folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".demo-sd-tokenizer-", dir=folder.parent) as tok:
            from transformers import CLIPTokenizer

            tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(Path(tok))), local_files_only=True)
        tokenizer.model_max_length = 77
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(str(folder), safe_serialization=True)
        (folder / MARKER).write_text(json.dumps({
            "version": DEMO_VERSION, "seed": seed,
            "note": "Untrained demo model with random weights: SD 1.5 architecture, tiny sizes.",
        }))

    return replace_folder(out_dir, write)


def replace_folder(path: Path, write) -> Path:
    """``write(folder)`` fills a new folder beside ``path``, which then replaces ``path`` whole: nobody
    ever sees a half-written model. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        write(tmp / "model")
        if path.exists():
            shutil.rmtree(path)
        (tmp / "model").rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def built_once(path: Path, current, build) -> Path:
    """``path`` as ``build(path)`` makes it, built only when ``current(path)`` is false. Threads and
    processes sharing the data folder (the app's warm-up, a request, a CLI) take a file lock, so one
    builds it and none ever loads a folder another is replacing (``build`` should write through
    ``replace_folder``)."""
    import fcntl

    path = Path(path)
    if current(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not current(path):
            build(path)
    return path


def _is_current(path: Path) -> bool:
    try:
        return (json.loads((path / MARKER).read_text()).get("version") == DEMO_VERSION
                and (path / "model_index.json").is_file())
    except (OSError, ValueError):
        return False


def ensure_demo_model(models_dir: Path) -> Path:
    """The demo model folder under models_dir, built once and reused (``built_once``)."""
    return built_once(Path(models_dir) / "demo-sd", _is_current, build_tiny_sd)
