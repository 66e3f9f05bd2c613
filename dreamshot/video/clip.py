"""AnimateDiff on the studio's base model: the motion adapter, the motion pipeline built from the
loaded base pipeline's components, and camera moves (AnimateDiff motion LoRAs).

- The motion adapter is loaded once per studio (``VideoService`` keeps it) from a Hub id or a local
  diffusers folder; ``demo`` builds a tiny random adapter shaped for the base UNet (the offline demo
  model's counterpart: it moves, it does not mean anything).
- ``motion_pipeline`` wraps the base VAE, text encoder, tokenizer and UNet: AnimateDiff copies the
  2D UNet's weights into a UNetMotionModel; ``share_weights`` then points those parameters back at the
  base UNet's own tensors, so SD's weights sit in memory once. The base weights must be clean (no
  LoRA merged) while a clip runs: the service holds the generation lock and restores them first.
- Camera moves are the eight guoyww motion LoRAs; each resolves to ``<models>/motion-loras/<move>``
  when that folder exists, else to its Hub id.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dreamshot.errors import InvalidInput, ModelLoadError
from dreamshot.models import HUB_ID, hub_unavailable, local_or_cached
from dreamshot.safety import quiet_libraries

log = logging.getLogger(__name__)

DEFAULT_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-3"
DEMO = "demo"
CAMERA_MOVES = ("zoom-in", "zoom-out", "pan-left", "pan-right", "tilt-up", "tilt-down",
                "rolling-clockwise", "rolling-anticlockwise")
CAMERA_REPO = "guoyww/animatediff-motion-lora-{move}"
MAX_CLIP_FRAMES = 32      # AnimateDiff v1.5 motion modules are trained on 16 frames, positions up to 32


def camera_move(name: str | None) -> str | None:
    text = (name or "").strip().lower().replace("_", "-").replace(" ", "-")
    if text in ("", "none", "static"):
        return None
    aliases = {"roll-cw": "rolling-clockwise", "roll-ccw": "rolling-anticlockwise",
               "roll-clockwise": "rolling-clockwise", "roll-anticlockwise": "rolling-anticlockwise"}
    text = aliases.get(text, text)
    if text not in CAMERA_MOVES:
        raise InvalidInput(f"Unknown camera move {name!r}; choose one of: {', '.join(CAMERA_MOVES)}.")
    return text


def camera_source(models_dir: Path, move: str) -> str:
    local = Path(models_dir) / "motion-loras" / move
    return str(local) if local.is_dir() else CAMERA_REPO.format(move=move)


def load_motion_adapter(source: str, base_unet):
    """A MotionAdapter on the base UNet's device and dtype; ModelLoadError with the fix when missing."""
    import torch
    from diffusers import MotionAdapter

    if source == DEMO:
        adapter = demo_motion_adapter(base_unet)
    else:
        local = Path(source).expanduser()
        # Asked only for a Hub id neither here nor cached (a probe of 3 s at most); an invalid id is
        # left to from_pretrained, which says so.
        why = None if local_or_cached(source, "config.json") or not HUB_ID.match(source) else hub_unavailable()
        try:
            with quiet():
                adapter = MotionAdapter.from_pretrained(str(local) if local.exists() else source,
                                                        local_files_only=local.exists() or why is not None)
        except Exception as exc:
            raise ModelLoadError(
                f"Cannot load the motion adapter {source!r} ({exc.__class__.__name__}"
                + (f"; it is not in the local Hub cache and {why}" if why else "") + "). Give a local "
                f"diffusers folder or a Hub id reachable from here (Motion adapter field, --motion-adapter; "
                f"default {DEFAULT_MOTION_ADAPTER}); the demo model can use 'demo'.") from None
    channels = tuple(base_unet.config.block_out_channels)
    if tuple(adapter.config.block_out_channels) != channels:
        raise ModelLoadError(f"The motion adapter {source!r} is for UNet channels "
                             f"{tuple(adapter.config.block_out_channels)}, the base model has {channels}.")
    with quiet():
        return adapter.to(base_unet.device, dtype=base_unet.dtype if base_unet.dtype != torch.float32 else None)


def demo_motion_adapter(base_unet, seed: int = 1234):
    """A tiny random motion adapter shaped for ``base_unet`` (the demo model's)."""
    import torch
    from diffusers import MotionAdapter

    groups = base_unet.config.norm_num_groups or 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MotionAdapter(block_out_channels=tuple(base_unet.config.block_out_channels),
                             motion_layers_per_block=1, motion_num_attention_heads=4,
                             motion_norm_num_groups=groups, motion_max_seq_length=MAX_CLIP_FRAMES)


def motion_pipeline(base, adapter):
    """An AnimateDiffPipeline on the base pipeline's components (weights shared, see module doc)."""
    from diffusers import AnimateDiffPipeline

    try:
        with quiet():
            pipe = AnimateDiffPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                       unet=base.unet, motion_adapter=adapter, scheduler=base.scheduler)
    except Exception as exc:
        raise ModelLoadError(f"The motion adapter does not fit the base model ({exc.__class__.__name__}: {exc}).") from None
    shared = share_weights(pipe.unet, base.unet)
    log.info("motion UNet shares %d weight tensors with the base UNet", shared)
    with quiet():
        pipe.unet.to(base.unet.device, dtype=base.unet.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def share_weights(motion_unet, base_unet) -> int:
    """Point the motion UNet's copies of the 2D weights at the base UNet's tensors; returns how many."""
    base = dict(base_unet.named_parameters())
    shared = 0
    for module_name, module in motion_unet.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            full = f"{module_name}.{name}" if module_name else name
            source = base.get(full)
            if source is not None and source.shape == param.shape:
                setattr(module, name, source)
                shared += 1
    return shared


def demo_camera_lora(motion_unet, move: str, rank: int = 4) -> dict:
    """A random motion LoRA for the demo adapter (seeded by the move's name), as a diffusers-format
    state dict: lets the demo model exercise camera moves offline. It moves pixels, not a camera."""
    import torch

    seed = sum(ord(c) for c in move)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in motion_unet.named_modules():
        if "motion_modules" in name and name.endswith(("attn1.to_q", "attn1.to_v")) and hasattr(module, "in_features"):
            down = torch.randn(rank, module.in_features, generator=generator) * 0.5
            up = torch.randn(module.out_features, rank, generator=generator) * 0.5
            state[f"unet.{name}.lora.down.weight"] = down
            state[f"unet.{name}.lora.up.weight"] = up
    return state


def quiet():
    """Silence the notices every tiny or fp32 build prints (diffusers' 'modules kept in float32',
    peft's 'multiple adapters'): expected here, and noise on the CLI."""
    return quiet_libraries(".*(multiple adapters|peft_config).*")
