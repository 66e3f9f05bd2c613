"""Training settings: one ``TrainConfig`` per run (one shot type), presets, and range checks.

Every field is also a ``python -m training`` flag (``--learning-rate 1e-4``, ``--no-random-flip``,
...), so the tab, the job runner and the CLI all describe a run the same way. ``validate()`` refuses
out-of-range values *before* any process starts, with one message listing every problem.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.shots import DEFAULT_TEMPLATE, check_template, training_prompt

TARGETS = {
    # The paper's choice: the cross-attention projections (text -> image) of every UNet block.
    "cross": ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"],
    # Self- and cross-attention, as kohya_ss / the diffusers LoRA script do by default.
    "all": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
            "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"],
}
PRECISIONS = ("auto", "no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
CACHES = ("memory", "disk")
METHODS = ("lora", "ti", "full", "motion")
OPTIMIZERS = ("adamw", "adamw8bit")
# Learning rates that suit each method (a preset's value is the LoRA's): textual inversion as
# AUTOMATIC1111's default, a full fine-tune as diffusers' DreamBooth script.
METHOD_DEFAULTS = {"ti": {"learning_rate": 5e-3}, "full": {"learning_rate": 5e-6}}
_TOKEN = re.compile(r"^[^\s,]{2,48}$")
DEFAULT_VALIDATION_PROMPTS = (  # captions: the prompt template puts the shot type around them
    "a woman in a red coat standing in the rain",
    "an old man reading a newspaper in a cafe",
)
SECRET_FIELDS = ()  # no field ever holds a secret: the Hub token travels only in HF_TOKEN
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]{0,99}$")


def _number(value) -> str:
    """1000000 as 1,000,000 (not 1e+06); other numbers as %g."""
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else f"{value:g}"


def _f(default, help: str, **meta):
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def setting_name(field: str, names: dict | None = None) -> str:
    """How a message names a setting: as the caller shows it (``names``: field -> label, e.g. the Train
    tab's ``Steps``), else its command-line flag (``--max-steps``)."""
    return (names or {}).get(field) or "--" + field.replace("_", "-")


@dataclass
class TrainConfig:
    # ---- what and where -----------------------------------------------------------------------
    shot: str = _f("close", "shot type this LoRA teaches (close, medium, long, ...)")
    shot_phrase: str = _f("", "the shot's words in prompts (default: the shot name with spaces, + ' shot')")
    prompt_template: str = _f(DEFAULT_TEMPLATE, "training prompt of a caption ({shot} and {caption}); "
                              "the studio fills in its project's template")
    dataset: str = _f("", "imagefolder with metadata.jsonl (file_name, text or caption, optional shot)")
    output_dir: str = _f("", "run folder: checkpoints/, samples/, status.jsonl, final LoRA files")
    base_model: str = _f("", "SD 1.x base: a local diffusers folder or a Hub id")
    name: str = _f("", "run/LoRA name (default: dreamshot-<shot>)")
    preset: str = _f("paper", "preset the other values started from (paper, smoke)")
    method: str = _f("lora", "lora (a LoRA), ti (textual inversion: a learned token), full (full UNet "
                     "fine-tune, extracted to a LoRA) or motion (clips)", choices=METHODS)
    # ---- LoRA ---------------------------------------------------------------------------------
    rank: int = _f(4, "LoRA rank r", lo=1, hi=256)
    alpha: float = _f(4.0, "LoRA alpha (scale = alpha / rank)", lo=0.01, hi=1024)
    target: str = _f("cross", "UNet attention layers: cross (paper) or all (self + cross)", choices=tuple(TARGETS))
    train_text_encoder: bool = _f(False, "also train a LoRA on the text encoder (disables the text-embedding cache)")
    text_encoder_lr: float = _f(0.0, "text-encoder learning rate (0: same as --learning-rate)", lo=0, hi=1)
    # ---- textual inversion (--method ti) ------------------------------------------------------
    token: str = _f("", "the learned token (default SHOT-shot, e.g. close-shot: the embedding file's name, "
                     "which AUTOMATIC1111 and ComfyUI use as its token)")
    init_word: str = _f("", "word(s) the token's vectors start from (default: the shot words, e.g. close)")
    num_vectors: int = _f(1, "vectors per token (close-shot, close-shot_1, ...)", lo=1, hi=32)
    # ---- full fine-tune (--method full) -------------------------------------------------------
    extract_rank: int = _f(64, "rank of the LoRA extracted from the fine-tuned UNet", lo=1, hi=4096)
    freeze_non_lora: bool = _f(False, "freeze what a LoRA cannot carry (biases, norms, conv_in/out, time "
                               "embedding); off trains every UNet weight, as kohya does")
    # ---- motion (--method motion: shot LoRAs on clips, training/motion.py) ---------------------
    motion_adapter: str = _f("", "AnimateDiff motion adapter, a Hub id or folder (default as the Video tab: "
                             "$DREAMSHOT_MOTION_ADAPTER, 'demo' on the demo model, else guoyww v1-5-3)")
    clip_frames: int = _f(8, "frames sampled evenly from each training clip", lo=2, hi=32)
    # ---- optimisation -------------------------------------------------------------------------
    optimizer: str = _f("adamw", "adamw (fused on CUDA) or adamw8bit (needs bitsandbytes)", choices=OPTIMIZERS)
    learning_rate: float = _f(1e-4, "AdamW learning rate", lo=1e-8, hi=1.0, gt=0)
    max_steps: int = _f(8000, "optimizer steps (ignored when --epochs > 0)", lo=1, hi=1_000_000)
    epochs: int = _f(0, "train for this many passes over the data instead of --max-steps", lo=0, hi=100_000)
    batch_size: int = _f(1, "images per step per process", lo=1, hi=64)
    grad_accum: int = _f(1, "gradient accumulation steps", lo=1, hi=128)
    lr_scheduler: str = _f("constant", "learning-rate schedule", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _f(0, "warm-up steps", lo=0, hi=1_000_000)
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0: off)", lo=0, hi=1000)
    weight_decay: float = _f(1e-2, "AdamW weight decay", lo=0, hi=1)
    mixed_precision: str = _f("auto", "auto (the studio's --dtype: float16 fp16, bfloat16 bf16, float32 no; with "
                              "--dtype auto fp16 on a CUDA GPU, none on a CPU), no, fp16, bf16", choices=PRECISIONS)
    gradient_checkpointing: bool = _f(False, "trade compute for memory in the UNet")
    seed: int = _f(0, "seed for data order, noise, timesteps and flips", lo=0, hi=2**31 - 1)
    # ---- data ---------------------------------------------------------------------------------
    resolution: int = _f(512, "training resolution in pixels (square, multiple of 8)", lo=32, hi=2048)
    random_flip: bool = _f(True, "random horizontal flip (both flips are cached)")
    center_crop: bool = _f(True, "center crop (off: top-left crop after resizing)")
    cache: str = _f("memory", "where VAE latents and text embeddings are cached", choices=CACHES)
    # ---- loss ---------------------------------------------------------------------------------
    snr_gamma: float = _f(0.0, "min-SNR weighting gamma (0: off; 5 is the usual value)", lo=0, hi=100)
    noise_offset: float = _f(0.0, "noise offset (0: off; ~0.05 helps dark/bright images)", lo=0, hi=1)
    prior_preservation: bool = _f(False, "DreamBooth prior-preservation loss with class images")
    class_dir: str = _f("", "folder of class images (missing ones are generated with the base model)")
    class_prompt: str = _f("a high-quality picture", "prompt of the class images")
    num_class_images: int = _f(50, "class images wanted for prior preservation", lo=1, hi=10_000)
    prior_loss_weight: float = _f(1.0, "weight of the prior-preservation loss", lo=0, hi=100)
    # ---- monitoring ---------------------------------------------------------------------------
    validation_steps: int = _f(500, "sample validation images every N steps (0: only at the end)", lo=0, hi=1_000_000)
    validation_prompts: list = _f(DEFAULT_VALIDATION_PROMPTS, "validation captions, put through the prompt "
                                  "template (an entry with {shot} is a whole prompt)")
    validation_seeds: list = _f([0, 1], "one seed per validation image")
    validation_inference_steps: int = _f(16, "sampling steps of validation images", lo=1, hi=200)
    checkpoint_steps: int = _f(500, "save a resumable checkpoint every N steps (0: off)", lo=0, hi=1_000_000)
    checkpoints_keep: int = _f(3, "keep the last K checkpoints", lo=1, hi=100)
    push_to_hub: str = _f("", "Hub repo id to upload the LoRA to (token from HF_TOKEN only)")

    # ---- derived --------------------------------------------------------------------------------
    @property
    def run_name(self) -> str:
        return self.name or f"dreamshot-{self.shot}"

    @property
    def phrase(self) -> str:
        return self.shot_phrase or f"{self.shot.replace('_', ' ')} shot"

    @property
    def placeholder(self) -> str:
        """Textual inversion's token, e.g. ``close-shot``: a plain word, so that the embedding file
        named after it (``close-shot.safetensors``) is triggered by the same word in AUTOMATIC1111
        (which names an embedding after its file), ComfyUI (``embedding:close-shot``) and diffusers.
        Runs before issue 22 used ``<close-shot>``; their library entries keep their token."""
        return self.token or f"{self.shot}-shot"

    @property
    def prompt_phrase(self) -> str:
        """What stands where the shot words stand in prompts: the token for textual inversion."""
        return self.placeholder if self.method == "ti" else self.phrase

    @property
    def initializer(self) -> str:
        """Textual inversion's init word(s): the shot phrase without its trailing 'shot'."""
        words = self.phrase.split()
        return self.init_word.strip() or " ".join(words[:-1] if len(words) > 1 and words[-1] == "shot" else words)

    @property
    def target_modules(self) -> list[str]:
        return list(TARGETS[self.target])

    def prompts(self) -> list[str]:
        """The validation prompts: built like the training prompts, so they show what generation gets."""
        phrase = self.prompt_phrase
        return [p.replace("{shot}", phrase) if "{shot}" in p  # a whole prompt (configs before 2026-11)
                else training_prompt(phrase, p, self.prompt_template) for p in self.validation_prompts]

    def total_steps(self, num_examples: int, num_processes: int = 1) -> int:
        if self.epochs > 0:
            per_epoch = math.ceil(num_examples / (self.batch_size * num_processes * self.grad_accum))
            return max(1, self.epochs * per_epoch)
        return self.max_steps

    # ---- checks ---------------------------------------------------------------------------------
    def problems(self, names: dict | None = None) -> list[str]:
        """Every out-of-range or inconsistent value, as sentences for the user. Each setting is
        named as the caller shows it: ``names`` (field -> label, e.g. the Train tab's ``Steps``),
        else its command-line flag (``--max-steps``)."""
        n = (lambda name: setting_name(name, names))
        out = []
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            flag = n(f.name)
            if "choices" in meta and value not in meta["choices"]:
                out.append(f"{flag} must be one of {', '.join(meta['choices'])} (got {value!r}).")
            if "lo" in meta:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                    out.append(f"{flag} must be a number (got {value!r}).")
                elif not (meta["lo"] <= value <= meta["hi"]) or ("gt" in meta and value <= meta["gt"]):
                    out.append(f"{flag} must be between {_number(meta['lo'])} and {_number(meta['hi'])} "
                               f"(got {_number(value)}).")
                elif f.type in ("int", int) and int(value) != value:
                    out.append(f"{flag} must be a whole number (got {value!r}).")
        if isinstance(self.resolution, int) and self.resolution % 8:
            out.append(f"{n('resolution')} must be a multiple of 8 (got {self.resolution}).")
        if not re.match(r"^[a-z0-9_]{1,64}$", self.shot or ""):
            out.append(f"{n('shot')} must be a shot-type name like close, medium or long.")
        if self.name and not _NAME.match(self.name):
            out.append(f"{n('name')} may only use letters, digits, '.', '-' and '_' (100 at most).")
        if self.prior_preservation and not self.class_dir:
            out.append(f"{n('prior_preservation')} needs {n('class_dir')} (a folder for the class images).")
        if len(self.validation_seeds) != len(self.validation_prompts):
            out.append(f"{n('validation_seeds')} needs one seed per validation prompt.")
        if not self.validation_prompts:
            out.append("At least one validation prompt is needed.")
        if self.lr_warmup_steps > self.max_steps and self.epochs == 0:
            out.append(f"{n('lr_warmup_steps')} cannot exceed {n('max_steps')}.")
        try:
            check_template(self.prompt_template)
        except InvalidInput as exc:
            out.append(f"{n('prompt_template')}: {exc}")
        out += self._method_problems(n)
        if self.push_to_hub and not re.match(r"^[\w.\-]+/[\w.\-]+$", self.push_to_hub):
            out.append(f"{n('push_to_hub')} must be a Hub repo id like user/name.")
        return out

    def _method_problems(self, n) -> list[str]:
        out = []
        if self.train_text_encoder and self.method in ("ti", "full"):
            method = "textual inversion" if self.method == "ti" else "a full fine-tune"
            out.append(f"{n('train_text_encoder')} is for LoRA runs ({method} trains "
                       + ("the token's embedding)." if self.method == "ti" else "the UNet)."))
        if self.method == "ti":
            if not _TOKEN.match(self.placeholder):
                out.append(f"{n('token')} must be 2-48 characters without spaces or commas, like close-shot.")
            if not self.initializer:
                out.append(f"{n('init_word')} is needed (a word the token starts from, e.g. close).")
        return out

    def validate(self, names: dict | None = None) -> "TrainConfig":
        """Self, or InvalidInput listing every problem (``names``: as in ``problems``)."""
        problems = self.problems(names)
        if problems:
            raise InvalidInput("Training settings refused: " + " ".join(problems))
        return self

    # ---- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"Unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"Cannot read the training config {path}: {exc}") from None

    def updated(self, **changes) -> "TrainConfig":
        return replace(self, **changes)


PRESETS: dict[str, dict] = {
    # DreamShot section 3.2 / the Stanford seed: 8,000 steps, lr 1e-4, fp16, 512 px,
    # LoRA on the cross-attention layers, no identifier token.
    "paper": dict(rank=4, alpha=4.0, target="cross", learning_rate=1e-4, max_steps=8000, epochs=0,
                  batch_size=1, grad_accum=1, mixed_precision="auto", resolution=512, random_flip=True,
                  validation_steps=500, checkpoint_steps=500, checkpoints_keep=3,
                  validation_inference_steps=16),
    # A few seconds on a CPU with the demo model: checks the whole pipeline end to end.
    "smoke": dict(rank=4, alpha=4.0, target="cross", learning_rate=1e-4, max_steps=4, epochs=0,
                  batch_size=1, grad_accum=1, mixed_precision="auto", resolution=64, random_flip=True,
                  validation_steps=2, checkpoint_steps=2, checkpoints_keep=2, validation_inference_steps=4),
}


def preset(preset_name: str, /, **overrides) -> TrainConfig:
    """The preset's values, the method's learning rate (``METHOD_DEFAULTS``), then ``overrides``."""
    if preset_name not in PRESETS:
        raise InvalidInput(f"Unknown preset {preset_name!r}; choose one of: {', '.join(PRESETS)}")
    method = METHOD_DEFAULTS.get(overrides.get("method", "lora"), {})
    return TrainConfig(**{**PRESETS[preset_name], **method, "preset": preset_name, **overrides})


# ---- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; a flag left out keeps the preset's value."""
    group = parser.add_argument_group("training settings (defaults: the --preset)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text += f" [default {default!r}]" if f.name not in PRESETS["paper"] else ""
        kwargs = dict(dest=f"cfg_{f.name}", default=None, help=help_text)
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if "choices" not in f.metadata:
            kwargs["metavar"] = f.name.upper()
        if f.type in ("list", list):
            caster = int if f.name == "validation_seeds" else str
            group.add_argument(flag, nargs="+", type=caster, **kwargs)
        else:
            caster = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            group.add_argument(flag, type=caster, choices=f.metadata.get("choices"), **kwargs)


def from_namespace(ns: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The preset (or ``base``) with every flag that was given applied on top."""
    overrides = {f.name: getattr(ns, f"cfg_{f.name}") for f in fields(TrainConfig)
                 if getattr(ns, f"cfg_{f.name}", None) is not None}
    if base is None:
        base = preset(overrides.pop("preset", "paper"), method=overrides.get("method", "lora"))
    return replace(base, **overrides)
