"""Test-only builders for tests/test_generate_control.py: a tiny steering ControlNet and a tiny
Depth Anything model, both from configs with random weights and saved with save_pretrained, so the
studio loads them through the same code as real checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw



def build_controlnet(out: Path, unet_dir: Path, seed: int = 9) -> Path:
    """A tiny ControlNet that steers: zero convolutions not zero, and a conditioning embedding whose
    output depends on the control image (its default initialisation all but ignores it)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(unet_dir),
                                    conditioning_embedding_out_channels=(8, 8, 16, 16))
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "controlnet_down_blocks" in name or "controlnet_mid_block" in name:
                param.normal_(0, 0.3)
            elif name.startswith("controlnet_cond_embedding") and name.endswith("weight"):
                fan_in = param[0].numel()
                param.normal_(0, 3.0 / fan_in ** 0.5)
    net.save_pretrained(out)
    return Path(out)


def build_depth_model(out: Path, seed: int = 2) -> Path:
    """A ~0.1 M-parameter DepthAnythingForDepthEstimation (DINOv2 backbone) + its PIL processor."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, reshape_hidden_states=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                 head_hidden_size=8, reassemble_hidden_size=32, patch_size=14)
    DepthAnythingForDepthEstimation(config).save_pretrained(out)
    DPTImageProcessorPil(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         do_pad=False).save_pretrained(out)
    return Path(out)


def reference(seed: int = 0, size: int = 64) -> Image.Image:
    """A frame with shapes (edges and areas for every kind of control map)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(120, 255, 3)))
    return image


@pytest.fixture(scope="session")
def control_models(demo_model_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("control-models")
    return {"controlnet": str(build_controlnet(root / "controlnet", demo_model_dir / "unet")),
            "depth": str(build_depth_model(root / "depth"))}


@pytest.fixture(scope="session")
def cstudio(demo_model_dir, tmp_path_factory):
    """A studio on the demo model (one per test session: its pipelines are built once)."""
    from dreamshot.settings import Settings
    from dreamshot.studio import Studio

    data = tmp_path_factory.mktemp("control-data")
    shutil.copytree(demo_model_dir, data / "models" / "demo-sd")
    studio = Studio.open(Settings(data_dir=data, model="demo"))
    yield studio
    studio.close()
