"""The models and data every GPU path needs, at two sizes, built from configs with random weights and
saved with ``save_pretrained`` (the studio loads them through the same code as real checkpoints):

- ``demo``: the studio's demo model and tiny companions (seconds on a CPU; the GPU smoke);
- ``sd15``: Stable Diffusion 1.5's real architecture - UNet 860 M, VAE, the CLIP ViT-L/14 text encoder -
  with a ControlNet made ``from_unet`` (SD 1.5 ControlNet size), a MotionAdapter of the v1.5 adapters'
  dimensions, Depth Anything V2 Small, CLIP ViT-B/32 and DINO ViT-S/16 (Evaluate's defaults).

Needs no pytest: ``benchmarks/bench_sd15_paths.py`` (and through it ``gpu_check.sh``) uses it too.
``build(size, folder)`` writes everything and returns the manifest (paths and parameter counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIZES = ("demo", "sd15")


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def base_model(size: str, out: Path) -> Path:
    if size == "demo":
        from dreamshot.demo_model import build_tiny_sd

        return build_tiny_sd(out)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_train import build_full_sd15

    return build_full_sd15(out)


def controlnet(size: str, unet, out: Path, seed: int = 5) -> int:
    """A ControlNet made from the base UNet (SD 1.5's ControlNets have this shape); its zero
    convolutions get small random weights so its residuals reach the UNet (a trained one's do)."""
    import torch
    from diffusers import ControlNetModel

    kw = {"conditioning_embedding_out_channels": (8, 8, 16, 16)} if size == "demo" else {}
    net = ControlNetModel.from_unet(unet, **kw)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "controlnet_down_blocks" in name or "controlnet_mid_block" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if size == "demo" else 0.02))
    net.save_pretrained(out)
    return _params(net)


def motion_adapter(size: str, unet, out: Path) -> int:
    """demo: one motion layer per block; sd15: MotionAdapter's defaults, the v1.5 adapters' dimensions
    (block channels 320-1280, two motion layers per block, 8 heads, a motion mid block, 32 frames)."""
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(3)
    if size == "demo":
        adapter = MotionAdapter(block_out_channels=tuple(unet.config.block_out_channels), motion_layers_per_block=1,
                                motion_num_attention_heads=4, motion_norm_num_groups=32, motion_max_seq_length=32)
        with torch.no_grad():
            for name, param in adapter.named_parameters():
                if "proj_out" in name:
                    param.normal_(0, 0.2)
    else:
        adapter = MotionAdapter(motion_max_seq_length=32)
    adapter.save_pretrained(out)
    return _params(adapter)


def depth_model(size: str, out: Path) -> int:
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    torch.manual_seed(2)
    if size == "demo":
        backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                image_size=56, patch_size=14, reshape_hidden_states=False,
                                out_features=["stage1", "stage2", "stage3", "stage4"])
        config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                     head_hidden_size=8, reassemble_hidden_size=32, patch_size=14)
        side = 56
    else:  # Depth-Anything-V2-Small-hf's config
        backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                                image_size=518, patch_size=14, reshape_hidden_states=False,
                                out_indices=[3, 6, 9, 12], out_features=["stage3", "stage6", "stage9", "stage12"])
        config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[48, 96, 192, 384],
                                     fusion_hidden_size=64, head_hidden_size=32, reassemble_hidden_size=384,
                                     patch_size=14, depth_estimation_type="relative")
        side = 518
    model = DepthAnythingForDepthEstimation(config)
    model.save_pretrained(out)
    DPTImageProcessorPil(size={"height": side, "width": side}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         do_pad=False).save_pretrained(out)
    return _params(model)


def _saved_params(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


def clip_model(size: str, out: Path) -> int:
    """demo: the studio's demo CLIP (``dreamshot.evaluate.demo_models``); sd15: CLIPConfig's defaults,
    openai/clip-vit-base-patch32's architecture."""
    if size == "demo":
        from dreamshot.evaluate.demo_models import build_tiny_clip

        return _saved_params(build_tiny_clip(out))
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from dreamshot.clip_tokenizer import write_clip_tokenizer

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig())
    model.save_pretrained(out)
    write_clip_tokenizer(out)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(out)
    return _params(model)


def dino_model(size: str, out: Path) -> int:
    """demo: the studio's demo DINO; sd15: facebook/dino-vits16's architecture (ViT-S/16, no pooler)."""
    if size == "demo":
        from dreamshot.evaluate.demo_models import build_tiny_dino

        return _saved_params(build_tiny_dino(out))
    import torch
    from transformers import ViTConfig, ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                               image_size=224, patch_size=16), add_pooling_layer=False)
    model.save_pretrained(out)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(out)
    return _params(model)


def embedding(path: Path, width: int, vectors: int = 2, seed: int = 0) -> Path:
    """An AUTOMATIC1111-style textual-inversion file (float32 rows) for the token <close-shot>."""
    import torch
    from safetensors.torch import save_file

    rows = torch.randn(vectors, width, generator=torch.Generator().manual_seed(seed)) * 2.0
    save_file({"emb_params": rows}, str(path), metadata={"token": "<close-shot>", "shot": "close", "method": "ti"})
    return path


def clips(folder: Path, n: int = 2, frames: int = 6, side: int = 64, seed: int = 0) -> Path:
    """Clips of a texture sliding sideways with metadata.jsonl, as ``export_clips`` writes them."""
    from PIL import Image

    from labeling.clips import encode

    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = rng.integers(0, 255, (side, side, 3))
        images = [Image.fromarray(np.roll(base, 3 * k, axis=1).astype(np.uint8)) for k in range(frames)]
        name = f"clips/{i:07d}_close.mp4"
        (folder / name).write_bytes(encode(images, 8))
        rows.append({"file_name": name, "shot": "close", "text": f"a high-quality close shot picture of thing {i}",
                     "caption": f"thing {i}", "frames": frames, "fps": 8})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def held_out(folder: Path, side: int = 64) -> Path:
    """Evaluate's held-out frames as an imagefolder: one close and one medium frame with captions."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, shot in enumerate(("close", "medium")):
        Image.new("RGB", (side, side), (i * 90, 30, 200)).save(folder / f"{shot}.png")
        rows.append({"file_name": f"{shot}.png", "shot": shot, "caption": f"a dog number {i}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def build(size: str, folder: Path) -> dict:
    """Every model and data set of ``size`` under ``folder`` (reused when its manifest exists)."""
    import gc

    folder = Path(folder)
    manifest_file = folder / "manifest.json"
    if manifest_file.is_file():
        return json.loads(manifest_file.read_text())
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from tests.generate_fixtures import random_lora
    from tests.training_helpers import make_imagefolder

    folder.mkdir(parents=True, exist_ok=True)
    base = base_model(size, folder / "base")
    sizes = {"text_encoder": _params(CLIPTextModel.from_pretrained(base / "text_encoder")),
             "vae": _params(AutoencoderKL.from_pretrained(base / "vae"))}
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    sizes["unet"] = _params(unet)
    loras = {shot: str(random_lora(unet, folder / f"lora-{shot}", seed=seed, scale=1.0 if size == "demo" else 0.05))
             for shot, seed in (("close", 1), ("medium", 2))}
    sizes["controlnet"] = controlnet(size, unet, folder / "controlnet")
    sizes["motion_adapter"] = motion_adapter(size, unet, folder / "motion")
    del unet
    gc.collect()
    sizes["depth"] = depth_model(size, folder / "depth")
    sizes["clip"] = clip_model(size, folder / "clip")
    sizes["dino"] = dino_model(size, folder / "dino")
    width = json.loads((base / "text_encoder" / "config.json").read_text())["hidden_size"]
    manifest = {
        "size": size, "base": str(base), "loras": loras, "controlnet": str(folder / "controlnet"),
        "motion_adapter": str(folder / "motion"), "depth": str(folder / "depth"), "clip": str(folder / "clip"),
        "dino": str(folder / "dino"), "embedding": str(embedding(folder / "close_ti.safetensors", width)),
        "images": str(make_imagefolder(folder / "images", per_shot=2, size=(64, 64))),
        "clips": str(clips(folder / "clips")), "held_out": str(held_out(folder / "held-out")), "params": sizes,
    }
    manifest_file.write_text(json.dumps(manifest, indent=2))
    return manifest
