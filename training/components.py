"""The trainer's parts before the loop: the checks that run before anything heavy loads, the
accelerator, the frozen SD 1.x components and the LoRA adapter(s).

Memory: the frozen parts stay on the training device only while they are needed. The VAE encoder
and the text encoder (unless it is trained) are needed only to fill the caches; ``after_caching``
drops them, and the VAE decoder waits on the CPU between validations (see ``on_device``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from dreamshot.errors import InvalidInput, ModelLoadError

TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def check_base_model(source: str) -> None:
    if not source:
        raise InvalidInput("No base model given (--base-model DIR|HUB_ID).")
    if Path(source).exists():
        from dreamshot.models import check_sd1_folder

        check_sd1_folder(Path(source))


# --dtype (the studio's inference precision) -> the trainer's --mixed-precision when that is "auto"
FROM_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "no", "auto": "auto"}


def precision_for(mixed_precision: str, dtype_setting: str = "auto") -> str:
    """``--mixed-precision`` with ``auto`` taken from the studio's ``--dtype`` when that is set:
    float16 -> fp16, bfloat16 -> bf16, float32 -> no; ``auto`` stays ``auto`` (decided on the device)."""
    from dreamshot.settings import parse_dtype

    if mixed_precision != "auto":
        return mixed_precision
    return FROM_DTYPE[parse_dtype(dtype_setting)]


def resolve_precision(mixed_precision: str) -> str:
    """``auto``: fp16 on a CUDA GPU, none on a CPU. fp16 and bf16 run on a CPU too (slowly: autocast
    and, for fp16, the loss scaler the GPU would use; the tests check the GPU's path there)."""
    import torch

    cuda = torch.cuda.is_available()
    if mixed_precision == "auto":
        return "fp16" if cuda else "no"
    if mixed_precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise InvalidInput("This GPU has no bfloat16: use --mixed-precision fp16 (or auto).")
    return mixed_precision


def weight_dtype(precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def make_accelerator(config, precision: str, out: Path):
    import importlib.util

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    trackers = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else None
    AcceleratorState._reset_state()  # a second run in one process (tests, benchmark) may change precision
    accelerator = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=config.grad_accum, log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    if precision == "fp16" and accelerator.device.type == "cpu" and not accelerator.native_amp:
        # accelerate leaves fp16 on a CPU without autocast or loss scaling (it expects a GPU); give it
        # the GPU's: fp16 autocast around each prepared model's forward and torch's GradScaler (which
        # has a CPU implementation), so the CPU runs the same path as CUDA.
        import torch

        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
    if trackers and accelerator.is_main_process:
        accelerator.init_trackers(config.run_name)
    return accelerator


@dataclass
class Components:
    tokenizer: object
    text_encoder: object | None     # None once its embeddings are cached (unless it is trained)
    vae: object
    unet: object
    noise_scheduler: object


def load(source: str, precision: str, device, fp32: tuple[str, ...] = ()) -> Components:
    """The frozen SD 1.x parts, in the training precision (the VAE in fp32 under fp16: fp16 VAEs overflow);
    the parts named in ``fp32`` ("unet", "text_encoder") stay in fp32: they are trained whole (their
    master weights), mixed precision then comes from autocast."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = Path(source).exists()
    dtype = weight_dtype(precision)
    try:
        kw = dict(local_files_only=local)
        parts = Components(
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
            text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw,
                                                       dtype=torch.float32 if "text_encoder" in fp32 else dtype),
            vae=AutoencoderKL.from_pretrained(source, subfolder="vae", **kw,
                                              dtype=torch.float32 if precision == "fp16" else dtype),
            unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw,
                                                      dtype=torch.float32 if "unet" in fp32 else dtype),
            noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw))
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelLoadError(f"Cannot load the base model {source!r}: {exc}") from None
    if parts.tokenizer.model_max_length > 1000:
        parts.tokenizer.model_max_length = 77
    _check_sd1(source, local, parts.unet)
    for model in (parts.vae, parts.text_encoder, parts.unet):
        model.requires_grad_(False)
        model.to(device)
    return parts


def _check_sd1(source: str, local: bool, unet) -> None:
    from dreamshot.demo_model import is_demo_model
    from dreamshot.models import SD1_CROSS_ATTENTION_DIM

    dim = unet.config.cross_attention_dim
    if not (local and is_demo_model(Path(source))) and dim != SD1_CROSS_ATTENTION_DIM:
        raise ModelLoadError(f"{source} is not a Stable Diffusion 1.x model (cross_attention_dim {dim}, "
                             "SD 1.x has 768).")


def add_adapters(parts: Components, config, precision: str) -> list:
    """LoRA on the UNet (and the text encoder when asked); returns the trainable models."""
    import torch
    from peft import LoraConfig

    # "gaussian" init of A and zeros for B: the LoRA starts as a no-op, as in diffusers' scripts.
    parts.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                      target_modules=config.target_modules))
    trainable = [parts.unet]
    if config.train_text_encoder:
        parts.text_encoder.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha,
                                                  init_lora_weights="gaussian", target_modules=TE_TARGETS))
        trainable.append(parts.text_encoder)
    if precision != "no":
        from diffusers.training_utils import cast_training_params

        cast_training_params(trainable, dtype=torch.float32)  # only the LoRA tensors become fp32
    if config.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            parts.text_encoder.gradient_checkpointing_enable()
    return trainable


def check_optimizer(name: str) -> None:
    import importlib.util

    if name == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidInput("--optimizer adamw8bit needs the bitsandbytes package (pip install bitsandbytes; "
                           "it needs a CUDA GPU). Use --optimizer adamw instead.")


def make_optimizer(groups: list[dict], config, device):
    """AdamW: one fused (CUDA) or multi-tensor update for every tensor, or bitsandbytes' 8-bit AdamW."""
    import torch

    check_optimizer(config.optimizer)
    if config.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay, **fast)


def after_caching(parts: Components, *, keep_text_encoder: bool, device) -> None:
    """Drop what only the caches needed: the VAE encoder, the frozen text encoder (unless prompts are
    encoded live); the VAE decoder waits on the CPU until a validation needs it."""
    parts.vae.encoder = None
    parts.vae.quant_conv = None
    if not keep_text_encoder:
        parts.text_encoder = None
    if getattr(device, "type", "cpu") != "cpu":
        parts.vae.to("cpu")
        empty_cache()


@contextlib.contextmanager
def on_device(model, device):
    """``model`` on ``device`` for the duration of the block, then back where it was."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        yield model
    finally:
        if home != device:
            model.to(home)
            empty_cache()


def empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
