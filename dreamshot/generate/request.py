"""What one generation asks for: ``GenerationRequest``, its checks (``check_inputs``), seeds and
the blend text. Pure data and validation: no torch, no pipeline."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass

from dreamshot.errors import InvalidInput
from dreamshot.generate.samplers import DEFAULT_SAMPLER, sampler_name

MAX_SIDE = 1024
MIN_SIDE = 64
MAX_IMAGES = 8
MAX_STEPS = 150
CFG_RANGE = (1.0, 30.0)
ALPHA_RANGE = (0.0, 1.5)
MAX_BLEND = 4
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1


CONTROL_KINDS = ("canny", "depth", "scribble")


@dataclass
class ControlRequest:
    """A ControlNet condition: ``image`` is the reference frame (canny edges or a depth map are made
    from it) or, for ``scribble``, the sketch itself (a PIL image or a file path). ``scale`` is the
    conditioning scale; ``start``/``end`` the fraction of the steps it acts on. ``model`` is a
    ControlNet hub id or folder (None: the default of that kind). Checked by ``control.check_control``."""
    kind: str
    image: object
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    model: str | None = None
    low: int = 100                   # canny thresholds (OpenCV)
    high: int = 200
    preprocessed: bool = False       # ``image`` is the control map itself (no edges/depth/inversion)


@dataclass
class GenerationRequest:
    """Everything one generation needs. ``shot`` is a shot type (``close``) or a LoRA name; None
    is the base model. ``blend`` ({shot or LoRA: weight}) mixes several LoRAs and overrides α.
    ``num_images`` images use the seeds seed, seed+1, ... (-1: a random first seed).
    ``embedding`` names a textual-inversion embedding of the library: its token stands where the
    shot words stand in the template (with or without a LoRA). ``control`` adds a ControlNet."""
    prompt: str
    shot: str | None = None
    alpha: float = 1.0
    use_template: bool = True
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    steps: int = 16
    cfg: float = 6.0
    width: int = 512
    height: int = 512
    seed: int = -1
    num_images: int = 1
    blend: dict | None = None
    embedding: str | None = None
    control: ControlRequest | None = None

    def replace(self, **changes) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)

    @property
    def seeds(self) -> list[int]:
        """The seed of each image (of a checked request whose seed is set)."""
        return [self.seed + i for i in range(self.num_images)]


def _text(value, label: str) -> str:
    text = "" if value is None else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"The {label} holds characters that are not valid text (a broken emoji or "
                           "surrogate); retype it.") from None
    return text.strip()


def _number(value, kind, label: str):
    """int/float of a form or API value; InvalidInput for text, NaN, inf or a fractional whole number."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"{label} must be a number (got {value!r}).") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{label} must be a finite number (got {value!r}).")
    if kind is int:
        if not number.is_integer():
            raise InvalidInput(f"{label} must be a whole number (got {value!r}).")
        return int(number)
    return number


def _check_sizes(width: int, height: int) -> None:
    for label, side in (("Width", width), ("Height", height)):
        if side % 8:
            raise InvalidInput(f"{label} {side} is not a multiple of 8 (try {max(MIN_SIDE, side // 8 * 8)}).")
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise InvalidInput(f"{label} must be between {MIN_SIDE} and {MAX_SIDE} pixels (got {side}).")


def _check_blend(blend: dict | None) -> dict | None:
    if not blend:
        return None
    if len(blend) > MAX_BLEND:
        raise InvalidInput(f"A blend mixes at most {MAX_BLEND} LoRAs.")
    out = {}
    for name, weight in blend.items():
        weight = _number(weight, float, f"Blend weight for {name!r}")
        if not ALPHA_RANGE[0] <= weight <= ALPHA_RANGE[1]:
            raise InvalidInput(f"Blend weight for {name!r} must be between 0 and {ALPHA_RANGE[1]:g}.")
        out[_text(name, "blend")] = weight
    return out


def check_inputs(req: GenerationRequest) -> GenerationRequest:
    """Validate and normalise a request (types, ranges); raises InvalidInput with the reason."""
    prompt = _text(req.prompt, "prompt")
    negative = _text(req.negative_prompt, "negative prompt")
    if not prompt:
        raise InvalidInput("The prompt is empty: describe the picture (e.g. 'a woman reading in a café').")
    if len(prompt) > MAX_PROMPT_CHARS or len(negative) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"Prompts are limited to {MAX_PROMPT_CHARS} characters.")
    width, height = _number(req.width, int, "Width"), _number(req.height, int, "Height")
    steps, n = _number(req.steps, int, "Steps"), _number(req.num_images, int, "Number of images")
    seed = _number(req.seed, int, "Seed")
    alpha, cfg = _number(req.alpha, float, "α"), _number(req.cfg, float, "CFG scale")
    _check_sizes(width, height)
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidInput(f"Steps must be between 1 and {MAX_STEPS} (got {steps}).")
    if not CFG_RANGE[0] <= cfg <= CFG_RANGE[1]:
        raise InvalidInput(f"CFG scale must be between {CFG_RANGE[0]:g} and {CFG_RANGE[1]:g} (got {cfg:g}).")
    if not ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1]:
        raise InvalidInput(f"α must be between {ALPHA_RANGE[0]:g} and {ALPHA_RANGE[1]:g} (got {alpha:g}).")
    if not 1 <= n <= MAX_IMAGES:
        raise InvalidInput(f"Number of images must be between 1 and {MAX_IMAGES} (got {n}).")
    if seed != -1 and not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"Seed must be -1 (random) or between 0 and {MAX_SEED} (got {seed}).")
    shot = _text(req.shot, "shot") or None
    if shot and shot.lower() in ("none", "base"):
        shot = None
    embedding = _text(req.embedding, "embedding") or None   # its name is checked against the library
    if embedding and embedding.lower() == "none":
        embedding = None
    return req.replace(prompt=prompt, negative_prompt=negative, width=width, height=height, steps=steps,
                       num_images=n, seed=seed, alpha=alpha, cfg=cfg, sampler=sampler_name(req.sampler),
                       shot=shot, blend=_check_blend(req.blend), use_template=bool(req.use_template),
                       control=_check_control(req.control), embedding=embedding)


def _check_control(control):
    from dreamshot.generate.control import check_control  # it imports this module

    return check_control(control)


def random_seed() -> int:
    """A random seed leaving room for seed + i of a batch."""
    return random.randint(0, MAX_SEED - MAX_IMAGES)


def with_seed(req: GenerationRequest) -> GenerationRequest:
    """The request with a random first seed drawn when it asks for one (-1)."""
    return req.replace(seed=random_seed()) if req.seed == -1 else req


def base_request(req: GenerationRequest, prompt: str) -> GenerationRequest:
    """The same request on the base model (no LoRA, no embedding) with ``prompt``: the exact prompt
    the LoRA image saw, or for an embedding the shot words where its token stood
    (``GenerationService.base_prompt``)."""
    return req.replace(prompt=prompt, shot=None, blend=None, use_template=False, alpha=1.0, embedding=None)


def parse_blend(text: str) -> dict | None:
    """``close=0.6, medium=0.4`` (or ``close:0.6``) -> {"close": 0.6, "medium": 0.4}; '' -> None."""
    text = (text or "").strip()
    if not text:
        return None
    out = {}
    for part in re.split(r"[,;\n]+", text):
        if not part.strip():
            continue
        match = re.fullmatch(r"\s*([^=:\s]+)\s*[=:]\s*([-+]?\d*\.?\d+)\s*", part)
        if not match:
            raise InvalidInput(f"Blend entry {part.strip()!r} is not 'name=weight' (e.g. close=0.6, medium=0.4).")
        out[match.group(1)] = float(match.group(2))
    return out or None


def cut_off(tokenizer, prompt: str) -> str:
    """The end of ``prompt`` the text encoder never reads (CLIP reads 75 tokens between its start and
    end tokens; diffusers drops the rest with only a log line), from the first word that does not fit
    whole, as typed; "" when the whole prompt fits."""
    limit = int(getattr(tokenizer, "model_max_length", 77)) - 2
    words = prompt.split()

    def fits(n: int) -> bool:
        return len(tokenizer(" ".join(words[:n]), truncation=False, add_special_tokens=False).input_ids) <= limit

    if fits(len(words)):
        return ""
    low, high = 0, len(words)  # fits(low), not fits(high): find the longest run of whole words that fits
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return " ".join(words[low:])
