"""Phase 3 of a run: the frozen parts computed once, before the loop.

- VAE latent distributions of every training (and class) image, both flips when random flip is on;
- text embeddings of every training prompt (unless the text encoder is trained: then only token ids);
- the embeddings of the validation prompts, so the frozen text encoder can be dropped afterwards.

With ``--cache disk`` they are stored in ``<run>/cache`` and read back on resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from training import data as tdata
from training import samples


@dataclass
class Caches:
    latents: tdata.LatentCache
    text_emb: object | None          # (n, 77, dim), None when the text encoder is trained
    text_ids: object                 # (n, 77) token ids
    class_latents: tdata.LatentCache | None = None
    class_emb: object | None = None
    class_ids: object | None = None
    validation_emb: object | None = None   # validation prompts + the empty prompt; None: encode live


def build(config, parts, examples, *, out: Path, device, dtype, status, text_cache: bool = True) -> Caches:
    """``text_cache`` False: the text encoder trains (a text-encoder LoRA, textual inversion), so only
    token ids are kept and prompts are encoded every step."""
    why = "textual inversion" if config.method == "ti" else "text-encoder LoRA"
    status.write("caching", images=len(examples), text_cache=text_cache,
                 note=None if text_cache else f"{why} is on: text embeddings are recomputed every step")
    folder = out / "cache" if config.cache == "disk" else None
    text = dict(folder=folder, device=device, dtype=dtype, cached=text_cache)
    text_emb, text_ids = _texts(config, parts, [ex.text for ex in examples], "instance", **text)
    caches = Caches(_latents(config, parts, examples, "instance", folder, device), text_emb, text_ids)
    if config.prior_preservation:
        paths = samples.class_images(config, parts, device, status, dtype=dtype)
        caches.class_latents = _latents(config, parts, [tdata.Example(p, config.class_prompt) for p in paths],
                                        "class", folder, device)
        caches.class_emb, caches.class_ids = _texts(config, parts, [config.class_prompt] * len(paths), "class",
                                                    **text)
    if text_cache:
        caches.validation_emb = samples.prompt_embeddings(parts, config.prompts(), device=device, dtype=dtype)
    return caches


def _latents(config, parts, examples, kind, folder, device) -> tdata.LatentCache:
    key = kind + "-latents-" + tdata.cache_key(examples, base_model=config.base_model, resolution=config.resolution,
                                               center_crop=config.center_crop, flip=config.random_flip)
    tensors = tdata.load_or_encode(folder, key, lambda: tdata.encode_latents(
        parts.vae, [e.path for e in examples], resolution=config.resolution, center_crop=config.center_crop,
        flip=config.random_flip, device=device, dtype=parts.vae.dtype).tensors())
    t = {k: v.to(device) for k, v in tensors.items()}
    return tdata.LatentCache(t["mean"], t["std"], t.get("flipped_mean"), t.get("flipped_std"))


def _texts(config, parts, texts, kind, *, folder, device, dtype, cached: bool):
    ids = tdata.tokenize(parts.tokenizer, texts).to(device)
    if not cached:
        return None, ids
    key = kind + "-text-" + hashlib.sha256(json.dumps([config.base_model, texts]).encode()).hexdigest()[:16]
    tensors = tdata.load_or_encode(folder, key, lambda: {"emb": tdata.encode_texts(
        parts.text_encoder, parts.tokenizer, texts, device=device, dtype=dtype)})
    return tensors["emb"].to(device, dtype), ids
