"""The LoRA library: every LoRA the generator may use, trained by the studio or uploaded.

Rows live in the ``loras`` table; files live under ``<data>/loras/``. The generation service reads
this table on each request, so a LoRA registered here appears in the Generate tab without a restart.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput, NotFound
from dreamshot.storage import now

ORIGINS = ("trained", "uploaded")
KINDS = ("lora", "embedding")
METHODS = ("lora", "ti", "full", "motion")  # LoRA, textual inversion, LoRA extracted from a full
# fine-tune, a shot LoRA trained on clips through AnimateDiff (motion module frozen)


@dataclass(frozen=True)
class LoraInfo:
    id: int
    name: str
    shot: str | None
    path: Path          # absolute path of the .safetensors file
    format: str         # "diffusers" or "kohya"
    origin: str
    run_id: int | None
    sha256: str
    base_model: str | None
    meta: dict
    kind: str = "lora"          # "lora" or "embedding" (textual inversion)
    method: str = "lora"        # "lora", "ti" or "full" (see METHODS)
    token: str | None = None    # an embedding's placeholder in prompts, e.g. "close-shot" ("<close-shot>" before issue 22)

    @property
    def short_hash(self) -> str:
        """AUTOMATIC1111-style short hash (first 12 hex digits of the file's sha256)."""
        return self.sha256[:12]

    @property
    def a1111_file(self) -> Path:
        """The file a user moves to AUTOMATIC1111 / ComfyUI for this entry: a trained LoRA's kohya
        export (``<run>/<name>.safetensors``, beside the diffusers file the studio loads), else the
        entry's own file (an extracted LoRA and an upload are the file itself)."""
        kohya = self.meta.get("kohya_file") if self.kind == "lora" else None
        if kohya and self.path is not None:
            beside = self.path.with_name(Path(kohya).name)
            if beside.is_file():
                return beside
        return self.path

    @property
    def a1111_name(self) -> str:
        """How AUTOMATIC1111 names this entry: the stem of the file a user has (an upload's original
        file name; a trained entry's file in its run folder)."""
        original = self.meta.get("original_name") if self.origin == "uploaded" else None
        if original:
            return Path(original).stem
        return self.a1111_file.stem if self.path is not None else self.name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def a1111_lora_hash(path: Path) -> str:
    """AUTOMATIC1111's short LoRA hash for ``Lora hashes``: sha256 of a .safetensors file's data
    after its header ("addnet hash"), first 12 hex digits - what Civitai and A1111 match on."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        header = int.from_bytes(fh.read(8), "little")
        fh.seek(8 + header)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class LoraLibrary:
    def __init__(self, studio):
        self.studio = studio
        self.db = studio.db
        self.data_dir = Path(studio.settings.data_dir).resolve()

    def _row_to_info(self, row) -> LoraInfo:
        path = Path(row.path)
        if not path.is_absolute():
            path = self.data_dir / path
        return LoraInfo(row.id, row.name, row.shot, path, row.format, row.origin, row.run_id,
                        row.sha256, row.base_model, dict(row.meta or {}), row.kind, row.method, row.token)

    def register(self, path: Path, *, name: str, shot: str | None, origin: str, fmt: str = "diffusers",
                 run_id: int | None = None, base_model: str | None = None, meta: dict | None = None,
                 kind: str = "lora", method: str | None = None, token: str | None = None) -> LoraInfo:
        """Add (or replace, same name) a LoRA or embedding file. The file must already be complete on
        disk. ``method`` defaults to "lora" for a LoRA and "ti" for an embedding; an embedding needs
        its ``token``."""
        path = Path(path).resolve()
        method = method or ("ti" if kind == "embedding" else "lora")
        if origin not in ORIGINS:
            raise InvalidInput(f"origin must be one of {ORIGINS}")
        if kind not in KINDS or method not in METHODS:
            raise InvalidInput(f"kind must be one of {KINDS} and method one of {METHODS}")
        if kind == "embedding" and not token:
            raise InvalidInput(f"The embedding {name!r} needs its prompt token (e.g. close-shot).")
        if not path.is_file() or path.suffix != ".safetensors":
            raise InvalidInput(f"{path.name}: a LoRA must be an existing .safetensors file")
        stored = str(path.relative_to(self.data_dir)) if path.is_relative_to(self.data_dir) else str(path)
        values = dict(name=name, shot=shot, path=stored, format=fmt, origin=origin, run_id=run_id,
                      sha256=file_sha256(path), base_model=base_model, meta=meta or {}, created_at=now(),
                      kind=kind, method=method, token=token if kind == "embedding" else None)
        table = schema.loras
        with self.db.write() as conn:
            conn.execute(table.delete().where(table.c.name == name))
            conn.execute(table.insert().values(**values))
        return self.get(name)

    def list(self, kind: str | None = None) -> list[LoraInfo]:
        """Every entry, oldest first; only LoRAs or only embeddings when ``kind`` is given."""
        query = sa.select(schema.loras).order_by(schema.loras.c.created_at)
        if kind is not None:
            query = query.where(schema.loras.c.kind == kind)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [self._row_to_info(r) for r in rows]

    def get(self, name: str) -> LoraInfo:
        with self.db.read() as conn:
            row = conn.execute(sa.select(schema.loras).where(schema.loras.c.name == name)).first()
        if row is None:
            raise NotFound(f"No LoRA or embedding called {name!r}.")
        return self._row_to_info(row)

    def remove(self, name: str) -> None:
        with self.db.write() as conn:
            conn.execute(schema.loras.delete().where(schema.loras.c.name == name))


# ---- uploads: validate a .safetensors LoRA ourselves before diffusers ever sees it -----------------

MAX_LORA_BYTES = 1 << 30        # 1 GiB: SD 1.5 LoRAs are 1-300 MB
MAX_LORA_TENSORS = 5000         # a full-rank SD 1.5 kohya LoRA with every layer has ~3,000
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")   # safetensors' names; LoRA weights (an alpha may be an int)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]{0,63}$")
_LYCORIS = ("hada_w1", "hada_w2", "lokr_w1", "lokr_w2", "lokr_t", ".oft_", "lora_mid")
_ROLE_SUFFIXES = [  # key ending -> role; the longest match wins
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".alpha", "alpha"),
]
# Cross-attention width of the text encoder a UNet was built for -> the family, for messages.
_FAMILIES = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: "SDXL"}


@dataclass(frozen=True)
class ModelShapes:
    """(in, out) sizes of every Linear/Conv2d of the base model, by the names LoRA files use.

    ``modules`` maps ``"unet.<module path>"`` / ``"text_encoder.<module path>"`` to (in, out)."""
    modules: dict
    cross_attention_dim: int

    @classmethod
    def of_pipeline(cls, pipe) -> "ModelShapes":
        import torch

        modules = {}
        for component in ("unet", "text_encoder"):
            model = getattr(pipe, component, None)
            if model is None:
                continue
            for name, module in model.named_modules():
                if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    continue
                if ".lora_" in name or name.endswith(("lora_A", "lora_B")) or ".lora_magnitude" in name:
                    continue  # peft's own layers, once adapters are loaded
                name = name.replace(".base_layer", "")
                if isinstance(module, torch.nn.Linear):
                    modules[f"{component}.{name}"] = (module.in_features, module.out_features)
                else:
                    modules[f"{component}.{name}"] = (module.in_channels, module.out_channels)
        return cls(modules, int(pipe.unet.config.cross_attention_dim))

    def kohya_index(self) -> dict:
        """kohya's flat names (``lora_unet_down_blocks_0_..._to_q``) -> our module names."""
        index = {}
        for full in self.modules:
            component, path = full.split(".", 1)
            if component == "unet":
                index["lora_unet_" + path.replace(".", "_")] = full
                continue
            # kohya names the text encoder as transformers 4 did (text_model.encoder.layers.N...);
            # transformers 5's CLIPTextModel has no text_model level: accept both spellings.
            index["lora_te_" + path.replace(".", "_")] = full
            if not path.startswith("text_model."):
                index["lora_te_text_model_" + path.replace(".", "_")] = full
        return index


@dataclass(frozen=True)
class LoraCheck:
    format: str          # "diffusers" or "kohya"
    tensors: int
    rank: int
    components: tuple    # ("unet",) or ("unet", "text_encoder")
    bytes: int


def _split_key(key: str):
    for suffix, role in sorted(_ROLE_SUFFIXES, key=lambda s: -len(s[0])):
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return key, None


def _module_for(stem: str, kohya: dict, shapes: ModelShapes) -> str | None:
    """Our module name for a key stem, in any of the formats we read; None when unknown."""
    if stem.startswith(("lora_unet_", "lora_te_", "lora_te1_")):
        return kohya.get(stem.replace("lora_te1_", "lora_te_", 1))
    if ".processor." in stem and not stem.startswith(("unet.", "text_encoder.")):
        # diffusers' old attention-processor format: <block>.processor.to_q_lora
        block, proc = stem.split(".processor.", 1)
        proc = proc.removesuffix("_lora")
        proc = "to_out.0" if proc == "to_out" else proc
        stem = f"unet.{block}.{proc}"
    return stem if stem in shapes.modules else None


def inspect_lora_file(path: Path, shapes: ModelShapes) -> LoraCheck:
    """Check a LoRA file *without unpickling anything*: suffix, size, safetensors header, tensor
    count, key names and shapes against this base model. Raises InvalidInput with a clear message."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise InvalidInput(
            f"{path.name}: {suffix} files are Python pickles, which can run code when loaded; they are "
            "refused. Convert the LoRA to .safetensors (kohya_ss and A1111 both save it) and upload that.")
    if suffix != ".safetensors":
        raise InvalidInput(f"{path.name}: only .safetensors LoRA files are accepted.")
    size = path.stat().st_size
    if size > MAX_LORA_BYTES:
        raise InvalidInput(f"{path.name} is {size / 2**20:.0f} MB; a LoRA may be at most {MAX_LORA_BYTES >> 20} MB.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            if not 0 < len(keys) <= MAX_LORA_TENSORS:
                raise InvalidInput(f"{path.name} holds {len(keys)} tensors; a LoRA has 1 to {MAX_LORA_TENSORS}.")
            key_shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in keys}
            dtypes = {k: fh.get_slice(k).get_dtype() for k in keys}
    except SafetensorError as exc:
        raise InvalidInput(f"{path.name} is not a valid safetensors file ({exc}).") from None
    except OSError as exc:
        raise InvalidInput(f"{path.name} cannot be read ({exc.strerror or exc}).") from None

    odd = sorted({dtypes[k] for k in keys if _split_key(k)[1] in ("down", "up") and dtypes[k] not in FLOAT_DTYPES})
    if odd:
        raise InvalidInput(f"{path.name} holds {', '.join(odd)} tensors; LoRA weights are floating point "
                           "(F16, BF16 or F32).")
    if any(marker in k for k in keys for marker in _LYCORIS):
        raise InvalidInput(f"{path.name} is a LyCORIS (LoHa/LoKr) file; only plain LoRA files are supported.")
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys):
        raise InvalidInput(f"{path.name} is an SDXL LoRA (it has a second text encoder); the base model here "
                           f"is {_FAMILIES.get(shapes.cross_attention_dim, 'Stable Diffusion 1.x')}.")
    fmt = "kohya" if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) for k in keys) else "diffusers"
    kohya = shapes.kohya_index() if fmt == "kohya" else {}
    unknown, mismatched, ranks, components = [], [], set(), set()
    for key, shape in key_shapes.items():
        stem, role = _split_key(key)
        if role is None:
            if key.endswith((".dora_scale", ".diff", ".diff_b")):
                raise InvalidInput(f"{path.name} uses DoRA/full-difference layers, which are not supported.")
            unknown.append(key)
            continue
        module = _module_for(stem, kohya, shapes)
        if module is None:
            unknown.append(key)
            continue
        components.add(module.split(".", 1)[0])
        if role == "alpha":
            continue
        d_in, d_out = shapes.modules[module]
        if role == "down" and (len(shape) < 2 or shape[1] != d_in):
            mismatched.append((key, shape, d_in))
        elif role == "up" and shape[0] != d_out:
            mismatched.append((key, shape, d_out))
        ranks.add(shape[0] if role == "down" else shape[1])
    if unknown or mismatched:
        raise InvalidInput(_architecture_message(path.name, key_shapes, unknown, mismatched, shapes))
    if not ranks:
        raise InvalidInput(f"{path.name} holds no LoRA weight pairs (down/up).")
    return LoraCheck(fmt, len(keys), max(ranks), tuple(sorted(components, reverse=True)), size)


def _architecture_message(name, key_shapes, unknown, mismatched, shapes) -> str:
    base = _FAMILIES.get(shapes.cross_attention_dim, f"a model with cross-attention width {shapes.cross_attention_dim}")
    # The cross-attention key/value projections read the text encoder's width: it names the family.
    for key, shape in key_shapes.items():
        if "attn2" in key and ("to_k" in key) and _split_key(key)[1] == "down" and len(shape) >= 2:
            family = _FAMILIES.get(shape[1])
            if shape[1] != shapes.cross_attention_dim:
                made_for = family or f"a model with cross-attention width {shape[1]}"
                return f"{name} was made for {made_for}, not for this base model ({base}); it cannot be used here."
    if mismatched:
        key, shape, want = mismatched[0]
        return (f"{name} does not fit this base model ({base}): {len(mismatched)} tensors have the wrong shape, "
                f"e.g. {key} is {list(shape)} where the model needs size {want}. It was made for another architecture.")
    return (f"{name} does not fit this base model ({base}): {len(unknown)} of {len(key_shapes)} tensor names match "
            f"no layer, e.g. {unknown[0]!r}. It was made for another architecture or is not a LoRA.")


def clean_lora_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InvalidInput("A LoRA name is 1-64 letters, digits, '.', '-' or '_', starting with a letter or digit.")
    return name


def store_upload(library: "LoraLibrary", src: Path, *, name: str, shot: str | None, shapes: ModelShapes,
                 base_model: str | None = None) -> LoraInfo:
    """Validate an uploaded file, copy it under ``<data>/loras/uploads/`` and register it (origin
    "uploaded"). Nothing is written when the file is refused."""
    name = clean_lora_name(name)
    check = inspect_lora_file(Path(src), shapes)
    target_dir = Path(library.studio.settings.loras_dir) / "uploads"
    target_dir.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(Path(src))
    target = target_dir / f"{name}-{digest[:8]}.safetensors"
    tmp = target.with_suffix(".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, target)
    return library.register(target, name=name, shot=shot or None, origin="uploaded", fmt=check.format,
                            base_model=base_model, meta={"rank": check.rank, "tensors": check.tensors,
                                                         "components": list(check.components),
                                                         "original_name": Path(src).name})
