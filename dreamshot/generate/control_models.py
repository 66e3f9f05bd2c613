"""The studio's ControlNets, ControlNet pipelines and depth model (``ControlModels``, one per studio:
``controls(studio)``), each loaded once and shared by Generate and the video restyle. Which model a
request gets, and the control images, are ``control.py``'s."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from dreamshot.errors import ModelLoadError
from dreamshot.generate.control import (
    DEFAULT_CONTROLNETS, DEFAULT_DEPTH_MODEL, DEMO, DEPTH_ENV, LEGACY_ENV, control_map, env_name, fit, setting_key,
)
from dreamshot.generate.request import ControlRequest
from dreamshot.models import hub_unavailable, local_or_cached

DEPTH_DTYPE = "float32"   # the depth estimator's precision (see _load_depth)


def _missing(what: str, source: str, fix: str, why: str | None = None) -> ModelLoadError:
    where = "this folder does not hold one" if Path(source).expanduser().exists() else \
        "it is not a folder here and not in the local Hub cache" + (f", and {why}" if why else "")
    return ModelLoadError(f"The {what} {source!r} is not available: {where}. {fix}")


class ControlModels:
    """The studio's ControlNets, ControlNet pipelines and depth model, each loaded once."""

    def __init__(self, studio):
        self.studio = studio
        self._lock = threading.RLock()
        self._nets: dict = {}
        self._pipes: dict = {}
        self._depth: dict = {}

    def close(self) -> None:
        self._nets, self._pipes, self._depth = {}, {}, {}

    # -- which model ------------------------------------------------------------------------------
    def _setting(self, key: str) -> str:
        try:
            return str(self.studio.db.get_setting(key, None) or "").strip()
        except Exception:  # a studio without settings storage (a bare test double)
            return ""

    def source(self, kind: str, override: str | None = None) -> str:
        """The ControlNet of ``kind`` a request gets (see the module docstring)."""
        chosen = (override or "").strip() or os.environ.get(env_name(kind), "").strip()
        if not chosen and kind == "canny":
            chosen = os.environ.get(LEGACY_ENV, "").strip()
        chosen = chosen or self._setting(setting_key(kind))
        if chosen:
            return chosen
        return DEMO if self.studio.models.status.is_demo else DEFAULT_CONTROLNETS[kind]

    def depth_source(self) -> str:
        return os.environ.get(DEPTH_ENV, "").strip() or self._setting(setting_key("depth_model")) or DEFAULT_DEPTH_MODEL

    # -- loading ------------------------------------------------------------------------------------
    def _once(self, store: dict, key: str, load):
        """``store[key]``, made by ``load(key)`` the first time (under the lock: loaded once)."""
        with self._lock:
            if key not in store:
                store[key] = load(key)
            return store[key]

    def controlnet(self, source: str):
        """The ControlNetModel of ``source`` on the base UNet's device and dtype (loaded once)."""
        return self._once(self._nets, source, self._load_controlnet)

    def _load_controlnet(self, source: str):
        from dreamshot.models import import_libraries

        import_libraries()
        from diffusers import ControlNetModel

        unet = self.studio.models.pipeline().unet
        if source == DEMO:
            net = demo_controlnet(self.studio.models.status.source)
        else:
            folder = local_or_cached(source, "config.json")
            fix = ("Give a local diffusers ControlNet folder (--controlnet DIR, or DREAMSHOT_CONTROLNET_<KIND>), "
                   "or run once with Hub access to cache it.")
            if folder is None and (why := hub_unavailable()):
                raise _missing("ControlNet", source, fix, why)
            try:
                net = ControlNetModel.from_pretrained(folder or source, local_files_only=folder is not None,
                                                      dtype=unet.dtype)  # fp16 on a GPU straight from disk
            except Exception:
                raise _missing("ControlNet", source, fix) from None
        dims = (net.config.cross_attention_dim, unet.config.cross_attention_dim)
        if dims[0] != dims[1]:
            raise ModelLoadError(f"The ControlNet {source!r} is for a model with cross_attention_dim {dims[0]}; "
                                 f"the base model has {dims[1]} (SD 1.5 ControlNets need an SD 1.5 model).")
        if net.dtype != unet.dtype:   # (a cast of the same dtype would only make diffusers warn)
            net = net.to(dtype=unet.dtype)
        return net.to(unet.device)

    def pipeline(self, source: str):
        """A StableDiffusionControlNetPipeline on the shared base pipeline's components."""
        with self._lock:
            if source not in self._pipes:
                from diffusers import StableDiffusionControlNetPipeline

                base = self.studio.models.pipeline()
                parts = {**base.components, "safety_checker": None, "feature_extractor": None}
                pipe = StableDiffusionControlNetPipeline(**parts, controlnet=self.controlnet(source),
                                                         requires_safety_checker=False)
                pipe.set_progress_bar_config(disable=True)
                self._pipes[source] = pipe
            return self._pipes[source]

    def depth(self, source: str | None = None):
        """The transformers depth-estimation pipeline (loaded once)."""
        return self._once(self._depth, source or self.depth_source(), self._load_depth)

    def _load_depth(self, source: str):
        from dreamshot.models import import_libraries

        import_libraries()
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation, pipeline

        folder = local_or_cached(source, "config.json")
        fix = (f"Set {DEPTH_ENV} to a local transformers depth-estimation folder (a copy of this model, "
               "say), or run once with Hub access to cache it.")   # the message names the model once
        if folder is None and (why := hub_unavailable()):
            raise _missing("depth model", source, fix, why)
        # float32 whatever --dtype says: its map is min-max normalised to 8 bits (half precision gains
        # nothing there, and amplifies rounding of a flat depth), and transformers' depth pipeline
        # fails on bfloat16 outputs ("unsupported ScalarType BFloat16" in its numpy post-processing).
        device, _ = self.studio.models.device_and_dtype()
        try:
            processor = AutoImageProcessor.from_pretrained(folder or source, local_files_only=folder is not None)
            model = AutoModelForDepthEstimation.from_pretrained(folder or source, local_files_only=folder is not None,
                                                                dtype=DEPTH_DTYPE)
        except Exception:
            raise _missing("depth model", source, fix) from None
        return pipeline("depth-estimation", model=model.to(device).eval(), image_processor=processor, device=device)

    # -- control images -------------------------------------------------------------------------------
    def prepare(self, control: ControlRequest, width: int, height: int):
        """The control image of a checked request's control, at the output size."""
        image = fit(control.image, width, height)
        depth = self.depth() if control.kind == "depth" and not control.preprocessed else None
        return control_map(control.kind, image, low=control.low, high=control.high, depth=depth,
                           preprocessed=control.preprocessed)

    def pipeline_kwargs(self, control: ControlRequest, maps: list) -> dict:
        return dict(image=maps, controlnet_conditioning_scale=float(control.scale),
                    control_guidance_start=float(control.start), control_guidance_end=float(control.end))


def demo_controlnet(demo_dir: str, seed: int = 4321):
    """A random-weight ControlNet shaped for the demo UNet (read from disk, never a LoRA-merged copy):
    its zero convolutions get small random weights, so the control image steers the demo's noise as
    a trained ControlNet steers a real model."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(demo_dir) / "unet")
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "controlnet_down_blocks" in name or "controlnet_mid_block" in name or "conv_out" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return net


def controls(studio) -> ControlModels:
    """The one ControlModels of a studio."""
    return studio.service(ControlModels)
