"""The precision of the studio's models (``--dtype``), in one place.

``device_and_dtype(setting)`` turns the setting into the device and torch dtype every model loads in
(base pipeline, ControlNets, motion adapter, CLIP/DINO, captioner); ``precision_setting`` words the
setting for the page header, ``precision_text`` what is in use for ``/status``; ``upcast_vae`` keeps SD 1.5's VAE in float32 when the rest runs in fp16.
"""

from __future__ import annotations

from dreamshot.errors import SettingsError
from dreamshot.settings import parse_dtype


def device_and_dtype(setting: str = "auto"):
    """(device, torch dtype) of the model weights for a ``--dtype`` setting: ``auto`` is float16 on a
    CUDA GPU and float32 elsewhere; an explicit dtype is used as given (float16 and bfloat16 run on a
    CPU too, slowly: the tests use them there to catch dtype mistakes before a GPU does). Every model
    the studio loads (base pipeline, ControlNets, motion adapter, CLIP/DINO, captioner) asks here."""
    import torch

    setting = parse_dtype(setting)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if setting == "auto":
        return device, torch.float16 if device.type == "cuda" else torch.float32
    if setting == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SettingsError("This GPU has no bfloat16: use --dtype float16 (or auto).")
    return device, getattr(torch, setting)


def dtype_name(dtype) -> str:
    """``float16`` for torch.float16 (what --dtype, the banner and /status call it)."""
    return str(dtype).replace("torch.", "")


def precision_text(setting: str, loaded=None) -> str:
    """One line for /status: the dtype in use once the model is loaded, else the setting."""
    setting = parse_dtype(setting)
    if loaded is not None:
        device, dtype = loaded
        auto = " (auto)" if setting == "auto" else ""
        return f"{dtype_name(dtype)} on {getattr(device, 'type', device)}{auto}"
    return "auto: float16 on a CUDA GPU, float32 elsewhere" if setting == "auto" else setting


def precision_setting(setting: str) -> str:
    """The ``--dtype`` setting in a few words, for the page header (known before anything loads)."""
    setting = parse_dtype(setting)
    return "float16 on a GPU, float32 on a CPU (`--dtype auto`)" if setting == "auto" else f"{setting} (`--dtype`)"


def upcast_vae(vae, compute_dtype) -> bool:
    """Keep ``vae`` in float32 while the rest of the model runs in ``compute_dtype`` (float16), as
    diffusers' SDXL pipelines do for a VAE whose config says ``force_upcast`` (SD 1.5's does: its
    decoder overflows to NaN/black images in fp16 at large sizes) and AUTOMATIC1111's --no-half-vae.
    Latents are cast to float32 on the way into the decoder (images come out in float32); images are
    cast in on the way into the encoder and the latents back to ``compute_dtype`` on the way out, so
    img2img and ControlNet pipelines see the dtype they expect. Returns whether it upcast."""
    import torch

    if compute_dtype != torch.float16:
        return False
    if not getattr(vae.config, "force_upcast", True):   # a VAE made for fp16 (e.g. an "fp16-fix" VAE)
        if vae.dtype != torch.float16:
            _quiet_cast(vae, torch.float16)
        return False
    if vae.dtype != torch.float32:
        _quiet_cast(vae, torch.float32)

    def to_fp32(module, args):
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def to_compute(module, args, output):
        return output.to(compute_dtype)

    for module in (vae.post_quant_conv, vae.decoder, vae.encoder):
        if module is not None:
            module.register_forward_pre_hook(to_fp32)
    last = vae.quant_conv if vae.quant_conv is not None else vae.encoder
    if last is not None:
        last.register_forward_hook(to_compute)
    return True


def _quiet_cast(model, dtype) -> None:
    """``model.to(dtype)`` without diffusers' notice about modules kept in float32 (none are here)."""
    from dreamshot.safety import quiet_libraries

    with quiet_libraries():
        model.to(dtype=dtype)
