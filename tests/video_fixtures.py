"""Test-only builders for tests/test_video*.py: a tiny motion adapter, a camera-move (motion) LoRA
and a steering ControlNet, all from configs with random weights, saved with save_pretrained so the
studio loads them through the same code as real checkpoints; a studio with 'long' and 'close' LoRAs
(built once per test session: the pipelines are then built once too)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

FAST = dict(width=64, height=64, steps=2, frames=8, seed=11, fps=8)
VIDEOS = None


def gradio_videos() -> Path:
    import gradio

    return Path(os.path.dirname(gradio.__file__)) / "media_assets" / "videos"


def arrays(frames) -> np.ndarray:
    return np.stack([np.asarray(f.convert("RGB"), dtype=np.float64) for f in frames])


def build_motion_adapter(out: Path, unet_dir: Path, *, inert: bool = False, seed: int = 3) -> Path:
    """A tiny MotionAdapter for the demo UNet. ``inert``: temporal layers output zero (frames are
    generated independently), for exact per-frame comparisons."""
    import torch
    from diffusers import MotionAdapter, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=tuple(unet.config.block_out_channels), motion_layers_per_block=1,
                            motion_num_attention_heads=4, motion_norm_num_groups=32, motion_max_seq_length=32)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if "proj_out" in name:
                param.zero_() if inert else param.normal_(0, 0.2)
    adapter.save_pretrained(out)
    return Path(out)


def build_camera_lora(out: Path, unet_dir: Path, adapter_dir: Path, move: str = "zoom-in") -> Path:
    """A motion LoRA (diffusers format) on the motion modules' attention, like guoyww's camera LoRAs."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from safetensors.torch import save_file

    from dreamshot.video.clip import demo_camera_lora

    motion = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(unet_dir),
                                         MotionAdapter.from_pretrained(adapter_dir))
    state = {k: v.contiguous() * 4 for k, v in demo_camera_lora(motion, move).items()}
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(state, str(Path(out) / "pytorch_lora_weights.safetensors"))
    return Path(out)


def build_controlnet(out: Path, unet_dir: Path, seed: int = 5) -> Path:
    """A tiny ControlNet whose zero convolutions are not zero, so the control image steers."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(unet_dir),
                                    conditioning_embedding_out_channels=(8, 8, 16, 16))
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "zero_conv" in name or "controlnet_down_blocks" in name or "controlnet_mid_block" in name \
                    or "conv_out" in name:
                param.normal_(0, 0.5)
    net.save_pretrained(out)
    return Path(out)


@pytest.fixture(scope="session")
def video_models(demo_model_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("video-models")
    unet_dir = demo_model_dir / "unet"
    adapter = build_motion_adapter(root / "motion", unet_dir)
    return {
        "adapter": str(adapter),
        "inert": str(build_motion_adapter(root / "inert", unet_dir, inert=True)),
        "camera": build_camera_lora(root / "camera-zoom-in", unet_dir, adapter),
        "controlnet": str(build_controlnet(root / "controlnet", unet_dir)),
    }


@pytest.fixture(scope="session")
def video_loras(demo_model_dir, tmp_path_factory) -> dict:
    from diffusers import UNet2DConditionModel

    from tests.generate_fixtures import random_lora, to_kohya

    out = tmp_path_factory.mktemp("video-loras")
    unet = UNet2DConditionModel.from_pretrained(demo_model_dir / "unet")
    close = random_lora(unet, out / "close", seed=21, scale=3.0)
    return {"long": random_lora(unet, out / "long", seed=22, scale=3.0), "close": close,
            "close_kohya": to_kohya(close, out / "close_kohya.safetensors")}


@pytest.fixture(scope="session")
def vstudio(demo_model_dir, video_loras, video_models, tmp_path_factory):
    """A studio (demo model) with LoRAs 'long' and 'close' and the camera LoRA under models/."""
    from dreamshot.generate.loras import LoraLibrary
    from dreamshot.settings import Settings
    from dreamshot.studio import Studio

    data = tmp_path_factory.mktemp("video-data")
    shutil.copytree(demo_model_dir, data / "models" / "demo-sd")
    shutil.copytree(video_models["camera"], data / "models" / "motion-loras" / "zoom-in")
    studio = Studio.open(Settings(data_dir=data, model="demo"))
    lib = LoraLibrary(studio)
    lib.register(video_loras["long"], name="long", shot="long", origin="trained")
    lib.register(video_loras["close"], name="close", shot="close", origin="trained")
    yield studio
    studio.close()
