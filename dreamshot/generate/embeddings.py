"""Textual-inversion embeddings: checked like LoRA uploads (never unpickled), stored in the same
library (``kind="embedding"``), loaded into the shared pipeline's tokenizer and text encoder with
diffusers' ``load_textual_inversion``.

Files read (``.safetensors`` only):

- AUTOMATIC1111: ``{"emb_params": tensor[N, dim]}``, string metadata such as ``token``, ``shot``,
  ``method`` (what the studio's TI trainer writes);
- diffusers ``learned_embeds.safetensors``: ``{token: tensor[dim] or [N, dim]}``.

A token with N vectors is loaded as N tokens (``<t>``, ``<t>_1`` ...; diffusers expands the prompt).
Several library entries may share a token (two training runs of one shot type): the tokenizer holds
one of them at a time, so ``EmbeddingSet.activate`` swaps them, and ``schedule`` orders a call's
groups so that no batch needs two entries of one token. A changed file of the same name (same token,
other vectors) is unloaded and loaded again: diffusers refuses to add a token twice.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dreamshot.errors import DreamShotError, InvalidInput, ModelLoadError
from dreamshot.safety import quiet_libraries
from dreamshot.generate.loras import (
    _FAMILIES, FLOAT_DTYPES, PICKLE_SUFFIXES, LoraInfo, _split_key, clean_lora_name, file_sha256,
)

log = logging.getLogger(__name__)

MAX_EMBEDDING_BYTES = 64 << 20    # an SD 1.5 embedding of 75 vectors is 230 KB
MAX_VECTORS = 75                  # the prompt has 75 tokens
A1111_KEY = "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")
_TOKEN = re.compile(r"^\S{1,64}$")


@dataclass(frozen=True)
class EmbeddingCheck:
    format: str        # "a1111" or "diffusers"
    key: str           # the tensor's name in the file
    vectors: int
    width: int
    token: str | None  # from the file's metadata (A1111) or its key (diffusers)
    meta: dict         # the file's string metadata


def _header(path: Path):
    """(keys -> shape, keys -> dtype, metadata) of a safetensors file, or None when the file is
    not one. Nothing is unpickled."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            if len(keys) > 5000:
                return None
            return ({k: tuple(fh.get_slice(k).get_shape()) for k in keys},
                    {k: fh.get_slice(k).get_dtype() for k in keys}, dict(fh.metadata() or {}))
    except (SafetensorError, OSError):
        return None


def _looks_like_embedding(shapes: dict) -> bool:
    if A1111_KEY in shapes or (shapes and set(shapes) <= set(SDXL_KEYS)):
        return True
    if len(shapes) != 1:
        return False
    (key, shape), = shapes.items()
    return _split_key(key)[1] is None and 1 <= len(shape) <= 2


def is_embedding_file(path) -> bool:
    """True when ``path`` is a .safetensors textual-inversion embedding (judged by its content)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return False
    header = _header(path)
    return header is not None and _looks_like_embedding(header[0])


def inspect_embedding_file(path, width: int) -> EmbeddingCheck:
    """Check an embedding file against a text encoder of ``width``; InvalidInput with the reason."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise InvalidInput(f"{path.name}: {suffix} files are Python pickles, which can run code when loaded; they "
                           "are refused. Save the embedding as .safetensors and add that.")
    if suffix != ".safetensors":
        raise InvalidInput(f"{path.name}: only .safetensors embedding files are accepted.")
    if path.stat().st_size > MAX_EMBEDDING_BYTES:
        raise InvalidInput(f"{path.name} is too large for an embedding (at most {MAX_EMBEDDING_BYTES >> 20} MB).")
    header = _header(path)
    if header is None:
        raise InvalidInput(f"{path.name} is not a valid safetensors file.")
    shapes, dtypes, meta = header
    if shapes and set(shapes) <= set(SDXL_KEYS):
        raise InvalidInput(f"{path.name} is an SDXL embedding (clip_l + clip_g); the base model here is "
                           f"{_FAMILIES.get(width, 'Stable Diffusion 1.x')}.")
    if not _looks_like_embedding(shapes):
        raise InvalidInput(f"{path.name} is not a textual-inversion embedding (expected 'emb_params' or one "
                           "token's vectors).")
    key = A1111_KEY if A1111_KEY in shapes else next(iter(shapes))
    shape = shapes[key]
    if dtypes[key] not in FLOAT_DTYPES or not 1 <= len(shape) <= 2:
        raise InvalidInput(f"{path.name}: {key} must be floating-point vectors [N, width] "
                           f"(got {dtypes[key]} {list(shape)}).")
    vectors, got = (1, shape[0]) if len(shape) == 1 else shape
    if len(shape) == 1 and got != width and got not in _FAMILIES:
        raise InvalidInput(f"{path.name}: {key} holds a single vector of {got} numbers, not an embedding: this base "
                           f"model's text encoder needs vectors of {width} numbers (shape [tokens, {width}], or "
                           f"[{width}] for one token).")
    if got != width:
        made_for = _FAMILIES.get(got, f"a text encoder of width {got}")
        raise InvalidInput(f"{path.name} holds vectors of width {got} ({made_for}); this base model's text encoder "
                           f"uses width {width} ({_FAMILIES.get(width, 'another model')}). It cannot be used here.")
    if not 1 <= vectors <= MAX_VECTORS:
        raise InvalidInput(f"{path.name} has {vectors} vectors; an embedding has 1 to {MAX_VECTORS}.")
    token = meta.get("token") or (key if key != A1111_KEY else None)
    return EmbeddingCheck("a1111" if key == A1111_KEY else "diffusers", key, vectors, width, token, meta)


def read_vectors(path, key: str | None = None):
    """The [N, width] float tensor of an embedding file (safetensors only)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    key = key or (A1111_KEY if A1111_KEY in state else next(iter(state)))
    tensor = state[key]
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor


def clean_token(token: str, tokenizer=None) -> str:
    """A prompt token: no spaces, not a word the base model already knows."""
    token = (token or "").strip()
    if not _TOKEN.match(token):
        raise InvalidInput(f"The embedding token {token!r} must be 1-64 characters without spaces, e.g. close-shot.")
    if tokenizer is not None and token in tokenizer.get_vocab() and token not in tokenizer.added_tokens_encoder:
        raise InvalidInput(f"The token {token!r} is a word the base model already knows; choose a new one "
                           f"such as {token.strip('<>')}-shot.")
    return token


def stem_token(path: Path, tokenizer=None) -> str | None:
    """The file's stem as a token (how AUTOMATIC1111 names an embedding), or None when it cannot be one
    (spaces, a word the model knows)."""
    try:
        return clean_token(Path(path).stem, tokenizer)
    except InvalidInput:
        return None


def untokened(prompt: str, token: str, words: str) -> str:
    """``prompt`` with ``token`` replaced by ``words`` (the base model's prompt for a typed token)."""
    return re.sub(r"\s{2,}", " ", prompt.replace(token, words)).strip()


def text_width(pipe) -> int:
    return int(pipe.text_encoder.get_input_embeddings().weight.shape[-1])


def resolve(name: str, embeddings: list[LoraInfo]) -> LoraInfo:
    """A library embedding by name; InvalidInput naming the available ones otherwise."""
    for info in embeddings:
        if info.name == name:
            return info
    available = ", ".join(i.name for i in embeddings) or "none yet (train one with --method ti or add a file)"
    raise InvalidInput(f"Unknown embedding {name!r}. Available: {available}.")


def schedule(groups: list[list[int]], embeddings: list) -> list[tuple[list, list[int]]]:
    """[(embeddings to activate, indices)] in run order: each group split so that no part needs two
    library entries of the same token; with no such clash it is the groups as given."""
    rank: dict = {}           # (token, sha256) -> how many other entries of that token came first
    per_token: dict = {}
    for info in embeddings:
        if info is not None and (info.token, info.sha256) not in rank:
            rank[(info.token, info.sha256)] = per_token.get(info.token, 0)
            per_token[info.token] = rank[(info.token, info.sha256)] + 1
    passes = max(per_token.values(), default=1)
    out = []
    for turn in range(passes):
        for group in groups:
            part = [i for i in group if (rank[(embeddings[i].token, embeddings[i].sha256)]
                                         if embeddings[i] is not None else 0) == turn]
            if part:
                needed = {embeddings[i].name: embeddings[i] for i in part if embeddings[i] is not None}
                out.append((list(needed.values()), part))
    return out


class EmbeddingSet:
    """The library's embeddings in one pipeline's tokenizer and text encoder. Callers hold their
    service's lock."""

    def __init__(self, pipe, library):
        self.pipe = pipe
        self.library = library
        self.loaded: dict[str, tuple] = {}     # token -> (sha256, [the tokens of its vectors])
        self.active: dict[str, LoraInfo] = {}  # name -> the entry whose vectors are loaded now

    def activate(self, infos: list[LoraInfo]) -> None:
        """Make each entry's token mean its vectors (loaded once; swapped when another entry of the
        same token, or an older file of the same name, is in the tokenizer)."""
        for info in infos:
            if self.loaded.get(info.token, (None,))[0] == info.sha256:
                self.active[info.name] = info
                continue
            if not info.path.is_file():
                raise ModelLoadError(f"The embedding file of {info.name!r} is missing ({info.path.name}).")
            self._unload(info.token)
            vectors = read_vectors(info.path)
            self._load(info, vectors)

    def _load(self, info: LoraInfo, vectors) -> None:
        tokenizer = self.pipe.tokenizer
        clean_token(info.token, tokenizer)
        # transformers' notice on the new rows' initialisation: they are overwritten at once
        try:
            with quiet_libraries(transformers=True):
                vectors = vectors.to(dtype=self.pipe.text_encoder.dtype)
                self.pipe.load_textual_inversion(vectors, token=info.token)
        except Exception as exc:
            log.warning("embedding %s refused by diffusers: %s: %.500s", info.name, exc.__class__.__name__, exc)
            raise ModelLoadError(f"The embedding {info.name!r} cannot be loaded into this base model.") from None
        tokens = [info.token, *(f"{info.token}_{i}" for i in range(1, len(vectors)))]
        self.loaded[info.token] = (info.sha256, tokens)
        self.active = {n: i for n, i in self.active.items() if i.token != info.token}
        self.active[info.name] = info
        log.info("loaded embedding %s as %s (%d vectors)", info.name, info.token, len(vectors))

    def _unload(self, token: str) -> None:
        """Remove ``token`` (and its extra vector tokens) from the tokenizer and text encoder."""
        tokenizer = self.pipe.tokenizer
        _, tokens = self.loaded.pop(token, (None, []))
        added = tokenizer.added_tokens_encoder
        stale = [t for t in tokens if t in added]
        if token in added and token not in stale:  # put there by someone else: remove it as well
            stale.append(token)
            stale += [t for t in added if re.fullmatch(re.escape(token) + r"_\d+", t)]
        if stale:
            self.pipe.unload_textual_inversion(stale)
        self.active = {n: i for n, i in self.active.items() if i.token != token}

    def upload(self, path, *, name: str, shot: str | None, token: str | None, base_model: str | None) -> LoraInfo:
        """Check, store and register an embedding file, then load it once to prove it works; a
        refused file leaves nothing behind."""
        name = clean_lora_name(name)
        check = inspect_embedding_file(Path(path), text_width(self.pipe))
        token = clean_token(token or check.token or stem_token(Path(path), self.pipe.tokenizer) or f"<{name}>",
                            self.pipe.tokenizer)
        target_dir = Path(self.library.studio.settings.loras_dir) / "embeddings"
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{name}-{file_sha256(Path(path))[:8]}.safetensors"
        tmp = target.with_suffix(".part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        file_shot = check.meta.get("shot", "")
        shot = shot or (file_shot if re.fullmatch(r"[a-z0-9_]{1,40}", file_shot) else None)
        meta = {"vectors": check.vectors, "width": check.width, "file_format": check.format,
                "original_name": Path(path).name}
        info = self.library.register(target, name=name, shot=shot, origin="uploaded", fmt=check.format,
                                     base_model=base_model, meta=meta, kind="embedding", method="ti", token=token)
        try:
            self.activate([info])
        except DreamShotError:
            self.library.remove(info.name)
            target.unlink(missing_ok=True)
            raise
        return info
