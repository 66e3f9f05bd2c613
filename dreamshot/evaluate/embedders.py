"""The evaluation models, loaded through ``from_pretrained`` from a Hub id or a local folder.

- CLIP (CLIP-T, the shot-type judge): ``CLIPModel`` + its tokenizer and the PIL image processor
  (``CLIPImageProcessorPil``: no torchvision on this stack). Default ``openai/clip-vit-base-patch32``,
  DreamBooth's CLIP-T model.
- DINO (DINO score): ``ViTModel`` with ``add_pooling_layer=False`` - ``facebook/dino-vits16`` ships
  no pooler weights - and the CLS token of ``last_hidden_state``. Default ``facebook/dino-vits16``.

``demo`` (either model): a tiny model with random weights built offline (``demo_models``), the
default on the demo base model, so the tab can be tried without Hub access; its ``pin`` and
``is_demo`` say so, and the results carry that label. Which model a studio uses by default:
``default_clip`` / ``default_dino`` (``DREAMSHOT_CLIP_MODEL`` / ``DREAMSHOT_DINO_MODEL``, else
``demo`` on the demo model, else the Hub default) - Evaluate's judge and the Label tab's
suggestions read the same setting.

Every embedding comes back L2-normalised (numpy float64 rows), so a cosine is a dot product.
``pin`` names exactly what was loaded (Hub id @ commit, or folder + weights hash) for the results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamshot.errors import ModelLoadError
from dreamshot.evaluate import demo_models
from dreamshot.generate.loras import file_sha256
from dreamshot.models import hub_unavailable
from dreamshot.precision import device_and_dtype

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dino-vits16"
DEMO = demo_models.DEMO
CLIP_ENV, DINO_ENV = "DREAMSHOT_CLIP_MODEL", "DREAMSHOT_DINO_MODEL"


def _default(studio, env: str, hub_default: str) -> str:
    chosen = os.environ.get(env, "").strip()
    if chosen:
        return chosen
    return DEMO if studio.model_choice().is_demo else hub_default


def default_clip(studio) -> str:
    """The CLIP a studio uses unless told otherwise (Evaluate's CLIP-T and judge, the Label tab's
    suggestions): ``DREAMSHOT_CLIP_MODEL``, else ``demo`` on the demo base model, else the Hub default."""
    return _default(studio, CLIP_ENV, DEFAULT_CLIP)


def default_dino(studio) -> str:
    return _default(studio, DINO_ENV, DEFAULT_DINO)


def _weights_hash(folder: Path) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            return file_sha256(path)[:12]
    return "no-weights"


def resolve(spec: str, what: str, models_dir: Path | None = None) -> tuple[str, str]:
    """(source for from_pretrained, pin). ``demo`` (built once under ``models_dir``), a local folder,
    or a Hub id found in the local cache (or downloadable when the Hub is reachable); ModelLoadError
    with one clear line otherwise."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelLoadError(f"No {what} model given.")
    if spec == DEMO:
        if models_dir is None:
            raise ModelLoadError(f"The demo {what} needs the studio's models folder.")
        folder = demo_models.ensure_demo(models_dir, what)
        return str(folder), f"demo {what} ({demo_models.NOTE}; weights sha256 {_weights_hash(folder)})"
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"The {what} folder {spec} has no config.json (save it with save_pretrained).")
        demo = " - a demo model: " + demo_models.NOTE if demo_models.is_demo_folder(folder) else ""
        return str(folder), f"{folder.resolve()} (weights sha256 {_weights_hash(folder)}){demo}"
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise ModelLoadError(f"The {what} model folder {spec} does not exist.")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(spec, "config.json")
    except Exception:
        raise ModelLoadError(f"{spec!r} is not a valid {what} model id (expected owner/name or a folder).") from None
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        return str(snapshot), f"{spec}@{snapshot.name}"
    if why := hub_unavailable():
        raise ModelLoadError(f"The {what} model {spec!r} is not in the local Hugging Face cache and {why}: "
                             "download it once, give a local folder, or use 'demo' (tiny, random weights, "
                             "to try the workflow).")
    return spec, spec


def _image_features(embedder, images, batch: int, forward) -> np.ndarray:
    """L2-normalised ``forward(pixel_values)`` of ``images``, ``batch`` at a time, without gradients."""
    import torch

    out = []
    for i in range(0, len(images), batch):
        pixels = embedder.processor(images=[im.convert("RGB") for im in images[i:i + batch]],
                                    return_tensors="pt")["pixel_values"].to(embedder.device)
        with torch.no_grad():
            out.append(_tensor(forward(pixels)))
    return normalize(np.concatenate(out)) if out else np.zeros((0, 0))


@dataclass
class ClipEmbedder:
    model: object
    tokenizer: object
    processor: object
    spec: str
    pin: str
    device: object = None

    @property
    def is_demo(self) -> bool:
        return _is_demo_pin(self.pin)

    def image_features(self, images, batch: int = 32) -> np.ndarray:
        return _image_features(self, images, batch, lambda pixels: self.model.get_image_features(pixel_values=pixels))

    def text_features(self, texts: list[str], batch: int = 64) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), batch):
            tokens = self.tokenizer(list(texts[i:i + batch]), padding=True, truncation=True,
                                    max_length=77, return_tensors="pt").to(self.device)
            with torch.no_grad():
                feats = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                     attention_mask=tokens["attention_mask"])
            out.append(_tensor(feats))
        return normalize(np.concatenate(out)) if out else np.zeros((0, 0))


@dataclass
class DinoEmbedder:
    model: object
    processor: object
    spec: str
    pin: str
    device: object = None

    @property
    def is_demo(self) -> bool:
        return _is_demo_pin(self.pin)

    def image_features(self, images, batch: int = 32) -> np.ndarray:
        # the CLS token of the last hidden state (DreamBooth's DINO score)
        return _image_features(self, images, batch,
                               lambda pixels: self.model(pixel_values=pixels).last_hidden_state[:, 0])


def _is_demo_pin(pin: str) -> bool:
    return demo_models.NOTE in (pin or "")


def _tensor(t) -> np.ndarray:
    if hasattr(t, "pooler_output") and not hasattr(t, "detach"):   # transformers 5 may return an output object
        t = t.pooler_output if t.pooler_output is not None else t.last_hidden_state[:, 0]
    return t.detach().float().cpu().numpy().astype(np.float64)


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def load_clip(spec: str = DEFAULT_CLIP, models_dir: Path | None = None, dtype: str = "auto") -> ClipEmbedder:
    """``dtype``: the studio's --dtype (features come back as float64 whatever it is)."""
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    source, pin = resolve(spec, "CLIP", models_dir)
    local = Path(source).is_dir()
    device, torch_dtype = device_and_dtype(dtype)
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=local, dtype=torch_dtype)
        tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=local)
        processor = CLIPImageProcessorPil.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"The CLIP model {spec!r} cannot be loaded: {_first_line(exc)}") from None
    tokenizer.model_max_length = 77
    return ClipEmbedder(model.to(device).eval(), tokenizer, processor, spec, pin, device)


def load_dino(spec: str = DEFAULT_DINO, models_dir: Path | None = None, dtype: str = "auto") -> DinoEmbedder:
    from transformers import ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    source, pin = resolve(spec, "DINO", models_dir)
    local = Path(source).is_dir()
    device, torch_dtype = device_and_dtype(dtype)
    try:
        model = ViTModel.from_pretrained(source, add_pooling_layer=False, local_files_only=local, dtype=torch_dtype)
        processor = ViTImageProcessorPil.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"The DINO model {spec!r} cannot be loaded: {_first_line(exc)}") from None
    return DinoEmbedder(model.to(device).eval(), processor, spec, pin, device)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
