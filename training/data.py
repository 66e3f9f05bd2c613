"""Training data: a Hugging Face imagefolder (images + ``metadata.jsonl``) read and checked, images
preprocessed without torchvision, and the frozen parts computed once:

- VAE latent distributions (mean and std; both flips when random flip is on), sampled each step;
- text embeddings of every prompt (unless the text encoder is being trained).

Caches live in memory on the training device, or on disk in ``<run>/cache`` (reused on resume).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamshot.errors import InvalidInput
from dreamshot.shots import DEFAULT_TEMPLATE, training_prompt

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
CACHE_VERSION = 1
ENCODE_PIXELS = 512 * 512  # pixels per VAE encoder call: its activations at 512 px are ~1 GiB per image


@dataclass(frozen=True)
class Example:
    path: Path
    text: str        # the full training prompt


def _prompt(entry: dict, phrase: str, template: str, placeholder: str | None = None) -> str:
    caption = str(entry.get("caption") or "").strip()
    if placeholder is not None:  # the token stands where the shot words stand
        if caption:
            return training_prompt(placeholder, caption, template)
        text = str(entry.get("text") or "")
        return text.replace(phrase, placeholder) if phrase in text else ""
    if entry.get("text"):
        return str(entry["text"])
    if not caption:
        return ""
    return training_prompt(phrase, caption, template)


def read_imagefolder(folder: Path, *, shot: str | None = None, phrase: str = "close shot",
                     template: str = DEFAULT_TEMPLATE, placeholder: str | None = None) -> list[Example]:
    """The examples of ``folder/metadata.jsonl`` (rows of another shot type are skipped). A row's
    ``text`` is its training prompt; a row with only a ``caption`` gets ``template`` around it.
    With a ``placeholder`` (textual inversion's token) it stands where the shot words stand: the
    caption in ``template``, or a ``text`` with ``phrase`` replaced by it.

    Raises InvalidInput for a missing folder or metadata file, unreadable lines, images missing on
    disk, rows without a prompt, or no example at all for the shot type."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not folder.is_dir():
        raise InvalidInput(f"The training data folder {folder} does not exist.")
    if not meta.is_file():
        raise InvalidInput(f"{folder} has no metadata.jsonl: export the labeled set (Label tab or "
                           "`python -m labeling export`) or give an imagefolder with one.")
    examples, missing, no_text, other_shots = [], [], [], 0
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            name = entry["file_name"]
        except (ValueError, KeyError, TypeError):
            raise InvalidInput(f"{meta}, line {number}: not a JSON object with a file_name.") from None
        if shot and entry.get("shot") not in (None, "", shot):
            other_shots += 1
            continue
        path = (folder / name).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise InvalidInput(f"{meta}, line {number}: file_name {name!r} points outside the folder.")
        if not path.is_file():
            missing.append(name)
            continue
        text = _prompt(entry, phrase, template, placeholder)
        if not text:
            no_text.append(name)
            continue
        examples.append(Example(path, text))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InvalidInput(f"{len(missing)} training image(s) listed in metadata.jsonl are missing on disk: {shown}.")
    if no_text:
        where = (f" (or a text with the shot words {phrase!r} for the token to replace)" if placeholder else "")
        raise InvalidInput(f"{len(no_text)} image(s) have no caption{where or ' or text'}, e.g. {no_text[0]}: "
                           "caption them in the Captions tab first.")
    if not examples:
        what = f"shot type {shot!r}" if shot else "this folder"
        hint = f" ({other_shots} image(s) of other shot types were skipped)" if other_shots else ""
        raise InvalidInput(f"The class is empty: no training image for {what}{hint}. Label some first.")
    return examples


def read_class_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def dataset_hash(examples: list[Example]) -> str:
    """sha256 over every prompt and image file, in order (the kohya ``ss_dataset`` fingerprint)."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(ex.text.encode())
        digest.update(hashlib.sha256(ex.path.read_bytes()).digest())
    return digest.hexdigest()


def load_pixels(path: Path, resolution: int, center_crop: bool = True) -> np.ndarray:
    """RGB image resized (shorter side = resolution), cropped square, as CHW float32 in [-1, 1]."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInput(f"Cannot read the training image {path.name}: {exc}") from None
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = ((nw - resolution) // 2, (nh - resolution) // 2) if center_crop else (0, 0)
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return arr.transpose(2, 0, 1).copy()


class LatentCache:
    """Per example: latent mean/std for the plain image and (random flip) its mirror."""

    def __init__(self, mean, std, flipped_mean=None, flipped_std=None):
        self.mean, self.std = mean, std
        self.flipped_mean, self.flipped_std = flipped_mean, flipped_std

    def __len__(self) -> int:
        return self.mean.shape[0]

    def sample(self, idx, flip, generator):
        """Latents of examples ``idx`` (flip: bool tensor), one draw from each distribution."""
        import torch

        mean, std = self.mean[idx], self.std[idx]
        if self.flipped_mean is not None:
            f = flip.view(-1, 1, 1, 1)
            mean = torch.where(f, self.flipped_mean[idx], mean)
            std = torch.where(f, self.flipped_std[idx], std)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * noise

    def tensors(self) -> dict:
        out = {"mean": self.mean, "std": self.std}
        if self.flipped_mean is not None:
            out.update(flipped_mean=self.flipped_mean, flipped_std=self.flipped_std)
        return out


def encode_batch(resolution: int, most: int = 8) -> int:
    """Images per VAE encoder call: the peak memory of caching stays below the training step's."""
    return max(1, min(most, ENCODE_PIXELS // (resolution * resolution)))


def encode_latents(vae, paths: list[Path], *, resolution: int, center_crop: bool, flip: bool,
                   device, dtype, batch: int | None = None) -> LatentCache:
    """Run the frozen VAE once over every image (and its mirror when ``flip``)."""
    import torch

    batch = batch or encode_batch(resolution)
    means, stds, fmeans, fstds = [], [], [], []
    scale = vae.config.scaling_factor
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            pixels = np.stack([load_pixels(p, resolution, center_crop) for p in paths[start:start + batch]])
            x = torch.from_numpy(pixels).to(device=device, dtype=dtype)
            variants = [(x, means, stds)] + ([(torch.flip(x, dims=[3]), fmeans, fstds)] if flip else [])
            for images, m_out, s_out in variants:
                dist = vae.encode(images).latent_dist
                m_out.append((dist.mean * scale).float())
                s_out.append((dist.std * scale).float())
    cat = torch.cat
    return LatentCache(cat(means), cat(stds), cat(fmeans) if flip else None, cat(fstds) if flip else None)


def tokenize(tokenizer, texts: list[str]):
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def encode_texts(text_encoder, tokenizer, texts: list[str], *, device, dtype, batch: int = 32):
    """Text embeddings (last hidden state, as SD 1.x uses) of each text."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            ids = tokenize(tokenizer, texts[start:start + batch]).to(device)
            out.append(text_encoder(ids)[0].to(dtype))
    return torch.cat(out)


def cache_key(examples: list[Example], *, base_model: str, resolution: int, center_crop: bool, flip: bool) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, base_model, resolution, center_crop, flip]).encode())
    for ex in examples:
        digest.update(str(ex.path).encode())
        st = ex.path.stat()
        digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_or_encode(cache_dir: Path | None, key: str, compute):
    """``compute()`` -> dict of tensors, stored as ``cache_dir/<key>.safetensors`` when a folder is
    given and read back from there next time (e.g. on resume)."""
    from safetensors.torch import load_file, save_file

    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return load_file(str(path))
    tensors = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
    return tensors
