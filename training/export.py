"""Writing a trained LoRA in the two formats people use:

- diffusers/PEFT ``pytorch_lora_weights.safetensors`` (``pipe.load_lora_weights(path)``), with the
  alpha / rank scale baked into the up weights so it loads right with or without its metadata;
- kohya ``<name>.safetensors`` for AUTOMATIC1111 / ComfyUI / kohya_ss: ``lora_unet_<module>`` /
  ``lora_te_text_model_encoder_layers_<N>_...`` keys (``kohya_key``) with ``.lora_down.weight``,
  ``.lora_up.weight`` and one ``.alpha`` tensor per module (= LoRA alpha), and ``ss_*`` training
  metadata. (Checked with those tools' own loaders: ``benchmarks/interop_check.py``.)

Every file is written under a temporary name and renamed when complete, so a crash never leaves a
half-written LoRA with a final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from dreamshot.shots import training_prompt

DIFFUSERS_NAME = "pytorch_lora_weights.safetensors"


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def lora_state(unet, text_encoder=None) -> dict:
    """The LoRA weights in diffusers' key format (``unet.*.lora.down.weight`` / ``.lora.up.weight``),
    unscaled (the effective update is alpha / rank * up @ down)."""
    from diffusers.utils import convert_state_dict_to_diffusers

    return convert_state_dict_to_diffusers(peft_state(unet, text_encoder))


def peft_state(unet, text_encoder=None) -> dict:
    """The LoRA weights by PEFT's names with a component prefix (``unet.<module>.lora_A.weight``,
    ``text_encoder.<module>.lora_B.weight``), unscaled, float32 on the CPU."""
    from peft.utils import get_peft_model_state_dict

    out = {}
    for prefix, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is not None:
            out.update({f"{prefix}.{k}": v.detach().float().cpu().contiguous()
                        for k, v in get_peft_model_state_dict(model).items()})
    return out


def _scale(model) -> tuple[int, float]:
    cfg = model.peft_config["default"]
    return int(cfg.r), float(cfg.lora_alpha)


def save_diffusers(out_dir: Path, unet, text_encoder=None) -> Path:
    """``out_dir/pytorch_lora_weights.safetensors`` from PEFT-adapted models.

    The alpha / rank scale is baked into the up weights and the metadata says lora_alpha = rank, so
    the file gives the trained result however it is loaded: from its path (metadata read) or as a
    plain state dict (metadata lost, alpha assumed = rank), as the Generate tab does."""
    from diffusers import StableDiffusionPipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = lora_state(unet, text_encoder)
    kwargs = {}
    for prefix, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is None:
            continue
        rank, alpha = _scale(model)
        part = {k[len(prefix) + 1:]: (v * (alpha / rank) if k.endswith("lora.up.weight") else v)
                for k, v in state.items() if k.startswith(prefix + ".")}
        meta = {**model.peft_config["default"].to_dict(), "lora_alpha": rank}
        kwargs[f"{prefix}_lora_layers"] = part
        kwargs[f"{prefix}_lora_adapter_metadata"] = meta
    staging = Path(tempfile.mkdtemp(prefix=".lora-", dir=out_dir))
    try:
        StableDiffusionPipeline.save_lora_weights(str(staging), safe_serialization=True, **kwargs)
        final = out_dir / DIFFUSERS_NAME
        os.replace(staging / DIFFUSERS_NAME, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def kohya_key(component: str, module: str) -> str:
    """kohya's flat name of a LoRA'd layer, as kohya_ss, AUTOMATIC1111 and ComfyUI address it.

    ``component`` is "unet" or "text_encoder"; ``module`` the layer's path in that model. The text
    encoder is named as in transformers 4's ``CLIPTextModel`` (``text_model.encoder.layers.N...``);
    transformers 5 dropped the ``text_model.`` level, so it is put back:
    ``encoder.layers.0.self_attn.k_proj`` -> ``lora_te_text_model_encoder_layers_0_self_attn_k_proj``."""
    if component == "unet":
        return "lora_unet_" + module.replace(".", "_")
    if not module.startswith("text_model."):
        module = "text_model." + module
    return "lora_te_" + module.replace(".", "_")


_PEFT_ROLES = ((".lora_A.weight", "lora_down.weight"), (".lora_B.weight", "lora_up.weight"))


def peft_to_kohya(state_dict: dict, alpha: float, te_alpha: float | None = None) -> dict:
    """A LoRA state dict with ``unet.`` / ``text_encoder.`` prefixes (PEFT ``lora_A``/``lora_B`` names,
    unscaled: ``peft_state``) -> kohya keys:
    ``<kohya_key>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (the real LoRA alpha, so the
    scale is alpha / rank as trained; diffusers' own converter writes alpha = rank)."""
    import torch

    out = {}
    for key, value in state_dict.items():
        component, rest = key.split(".", 1)
        if component not in ("unet", "text_encoder"):
            raise ValueError(f"LoRA key {key!r} names neither the UNet nor the text encoder")
        for suffix, role in _PEFT_ROLES:
            if rest.endswith(suffix):
                break
        else:
            raise ValueError(f"LoRA key {key!r} is not a LoRA down/up weight")
        name = kohya_key(component, rest[: -len(suffix)])
        out[f"{name}.{role}"] = value.contiguous()
        a = alpha if component == "unet" or te_alpha is None else te_alpha
        out[f"{name}.alpha"] = torch.tensor(float(a), dtype=torch.float32)
    return out


def kohya_metadata(*, config, base_model: str, dataset_hash: str, num_images: int, steps: int,
                   started_at: float, finished_at: float) -> dict[str, str]:
    """``ss_*`` training metadata as kohya_ss writes it (all values are strings), plus modelspec."""
    res = f"({config.resolution}, {config.resolution})"
    te_lr = config.text_encoder_lr or config.learning_rate
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": f"{config.alpha:g}",
        "ss_network_args": json.dumps({"target": config.target, "target_modules": config.target_modules}),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_sd_model_name": base_model,
        "ss_output_name": config.run_name,
        "ss_max_train_steps": str(steps),
        "ss_steps": str(steps),
        "ss_resolution": res,
        "ss_num_train_images": str(num_images),
        "ss_dataset_hash": dataset_hash,
        "ss_shot_type": config.shot,
        "ss_training_prompt_template": training_prompt(config.phrase, "{caption}", config.prompt_template),
        "ss_learning_rate": f"{config.learning_rate:g}",
        "ss_unet_lr": f"{config.learning_rate:g}",
        "ss_text_encoder_lr": f"{te_lr:g}" if config.train_text_encoder else "0",
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.grad_accum),
        "ss_mixed_precision": config.mixed_precision,
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_seed": str(config.seed),
        "ss_flip_aug": str(config.random_flip),
        "ss_noise_offset": f"{config.noise_offset:g}",
        "ss_min_snr_gamma": f"{config.snr_gamma:g}",
        "ss_prior_loss_weight": f"{config.prior_loss_weight:g}" if config.prior_preservation else "0",
        "ss_training_started_at": f"{started_at:.0f}",
        "ss_training_finished_at": f"{finished_at:.0f}",
        "ss_training_comment": f"DreamShot: one LoRA per shot type ({config.shot})",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": config.run_name,
        "modelspec.resolution": f"{config.resolution}x{config.resolution}",
    }
    return meta


def save_kohya(out_path: Path, unet, text_encoder=None, *, metadata: dict[str, str] | None = None) -> Path:
    """The kohya file of PEFT-adapted models (atomically): unscaled weights, alpha tensors = LoRA alpha."""
    from safetensors.torch import save_file

    alpha = _scale(unet)[1]
    te_alpha = _scale(text_encoder)[1] if text_encoder is not None else None
    kohya = peft_to_kohya(peft_state(unet, text_encoder), alpha, te_alpha)
    out_path = Path(out_path)
    tmp = _atomic_target(out_path)
    save_file(kohya, str(tmp), metadata={"format": "pt", **(metadata or {})})
    os.replace(tmp, out_path)
    return out_path


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return dict(fh.metadata() or {})
