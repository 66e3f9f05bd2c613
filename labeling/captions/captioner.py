"""The machine captioner: BLIP-2 (default ``Salesforce/blip2-flan-t5-xl``) or BLIP, run in batches.
Loading is done here; keeping the loaded one is the studio's captioning service
(``labeling.captions.jobs.CaptionWorker.captioner``).

``load_captioner(spec)`` accepts a Hub id or a local folder holding a ``save_pretrained`` checkpoint
(model + processor). The architecture is read from ``config.json`` (``model_type`` ``blip-2`` or
``blip``); the weights load in fp16 on CUDA and float32 on the CPU. A spec that cannot be had (a
folder that does not exist, a Hub id neither cached nor reachable, a folder that is not a BLIP
checkpoint) raises :class:`ModelLoadError` with a message for the user; nothing else is affected.

Phases of :meth:`Captioner.caption`: 1. preprocess the batch, 2. generate, 3. decode and clean.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from dreamshot.errors import InvalidInput, ModelLoadError
from dreamshot.models import HUB_ID, _hub_reachable, device_and_dtype, hub_snapshot

log = logging.getLogger(__name__)

DEFAULT_CAPTIONER = "Salesforce/blip2-flan-t5-xl"
DEMO_CAPTIONER = "demo"
CAPTIONERS = [  # (id, what it is) offered in the UI; any local folder works too
    ("Salesforce/blip2-flan-t5-xl", "BLIP-2 FlanT5-XL (the paper's; ~16 GB fp32 / 8 GB fp16)"),
    ("Salesforce/blip2-opt-2.7b", "BLIP-2 OPT-2.7b (~8 GB fp16)"),
    ("Salesforce/blip-image-captioning-large", "BLIP large (~1.9 GB, fast on CPU)"),
    (DEMO_CAPTIONER, "tiny untrained BLIP-2 built offline: random words, to try the workflow"),
]
MODEL_CLASSES = {"blip-2": "Blip2ForConditionalGeneration", "blip": "BlipForConditionalGeneration"}
MAX_NEW_TOKENS_LIMIT = 75


@dataclass(frozen=True)
class GenerationOptions:
    prefix: str = ""            # prompt for the captioner, e.g. "a photo of"; not kept in the caption
    max_new_tokens: int = 30    # length limit
    min_new_tokens: int = 0     # tests use it: random weights often stop at once
    num_beams: int = 1

    def check(self) -> "GenerationOptions":
        if not 1 <= int(self.max_new_tokens) <= MAX_NEW_TOKENS_LIMIT:
            raise InvalidInput(f"The caption length limit must be 1-{MAX_NEW_TOKENS_LIMIT} tokens.")
        if not 0 <= int(self.min_new_tokens) <= int(self.max_new_tokens):
            raise InvalidInput("min_new_tokens must be between 0 and the length limit.")
        if not 1 <= int(self.num_beams) <= 8:
            raise InvalidInput("num_beams must be 1-8.")
        if len(self.prefix) > 200:
            raise InvalidInput("The captioner prompt prefix is limited to 200 characters.")
        return self


def _local_folder(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if path.exists():
        return path
    if looks_like_path:
        raise ModelLoadError(f"cannot load captioner {spec!r}: the folder does not exist.")
    return None


def resolve_source(spec: str, *, models_dir: Path | None = None, probe_hub=_hub_reachable) -> tuple[str, bool]:
    """(source, is_local) for a captioner spec, or ModelLoadError saying why it cannot be loaded.
    ``demo`` is the tiny untrained BLIP-2, built once under ``models_dir``."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelLoadError("No captioner given: choose one from the list or enter a local folder.")
    if spec == DEMO_CAPTIONER:
        if models_dir is None:
            raise ModelLoadError("The demo captioner needs the studio's models folder.")
        from labeling.captions.tiny_blip2 import ensure_tiny_blip2

        return str(ensure_tiny_blip2(models_dir).resolve()), True
    folder = _local_folder(spec)
    if folder is not None:
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"cannot load captioner {spec!r}: no config.json in that folder.")
        return str(folder.resolve()), True
    if not HUB_ID.match(spec):
        raise ModelLoadError(f"cannot load captioner {spec!r}: neither a local folder nor a Hub id like owner/name.")
    if hub_snapshot(spec, "config.json"):
        return spec, False
    if not probe_hub():
        raise ModelLoadError(f"cannot load captioner {spec}: not in the local cache and the Hub is unreachable.")
    return spec, False


def _model_type(source: str, local: bool) -> str:
    if local:
        try:
            return json.loads((Path(source) / "config.json").read_text()).get("model_type", "")
        except (OSError, ValueError):
            raise ModelLoadError(f"cannot load captioner {source!r}: config.json is unreadable.") from None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source).model_type


class Captioner:
    """A loaded captioner. ``caption(images, options)`` is thread-safe (one batch at a time)."""

    def __init__(self, spec: str, source: str, model, processor, device, dtype):
        self.spec, self.source = spec, source
        self.model, self.processor = model, processor
        self.device, self.dtype = device, dtype
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self._lock = threading.Lock()

    def caption(self, images: list, options: GenerationOptions = GenerationOptions()) -> list[str]:
        import torch

        options.check()
        if not images:
            return []
        # 1. preprocess: the same prompt for every image, so no padding is needed
        prefix = options.prefix.strip()
        text = [prefix] * len(images) if prefix else None
        inputs = self.processor(images=[im.convert("RGB") for im in images], text=text, return_tensors="pt")
        inputs = {k: (v.to(self.device, self.dtype) if k == "pixel_values" else v.to(self.device))
                  for k, v in inputs.items()}
        # 2. generate
        kwargs = dict(max_new_tokens=int(options.max_new_tokens), num_beams=int(options.num_beams))
        if options.min_new_tokens:
            kwargs["min_new_tokens"] = int(options.min_new_tokens)
        with self._lock, torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        # 3. decode: drop the echoed prompt of decoder-only models, then the prefix text
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and not self.is_encoder_decoder and out.shape[1] >= prompt_ids.shape[1] \
                and torch.equal(out[:, : prompt_ids.shape[1]].cpu(), prompt_ids.cpu()):
            out = out[:, prompt_ids.shape[1]:]
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [clean_caption(t, prefix) for t in texts]


def clean_caption(text: str, prefix: str = "") -> str:
    """One line, single spaces, no control characters, without the captioner prompt it may echo."""
    text = "".join(" " if unicodedata.category(ch).startswith("C") or ch == "\ufffd" else ch for ch in text or "")
    text = re.sub(r"\s+", " ", text).strip()
    if prefix and text.lower().startswith(prefix.lower()):
        text = text[len(prefix):].strip()
    return text


def load_captioner(spec: str = DEFAULT_CAPTIONER, *, models_dir: Path | None = None, dtype: str = "auto") -> Captioner:
    """Load the captioner for ``spec`` in the studio's ``--dtype`` (ModelLoadError with a message when
    it cannot be had)."""
    source, local = resolve_source(spec, models_dir=models_dir)
    return _load(spec, source, local, dtype)


def _load(spec: str, source: str, local: bool, dtype_setting: str = "auto") -> Captioner:
    import transformers

    model_type = _model_type(source, local)
    class_name = MODEL_CLASSES.get(model_type)
    if class_name is None:
        raise ModelLoadError(
            f"cannot load captioner {spec!r}: its model_type is {model_type or 'missing'!r}; "
            "expected a BLIP-2 or BLIP captioning checkpoint."
        )
    device, dtype = device_and_dtype(dtype_setting)
    transformers.utils.logging.disable_progress_bar()
    try:
        processor = transformers.AutoProcessor.from_pretrained(source, local_files_only=local)
        model = getattr(transformers, class_name).from_pretrained(source, local_files_only=local, dtype=dtype)
    except Exception as exc:  # missing files, network, mismatched weights: all mean "cannot load"
        log.warning("captioner %s failed to load", spec, exc_info=exc)
        raise ModelLoadError(f"cannot load captioner {spec!r}: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
    model.to(device).eval()
    log.info("captioner %s loaded (%s, %s on %s)", spec, class_name, dtype, device)
    return Captioner(spec, source, model, processor, device, dtype)
