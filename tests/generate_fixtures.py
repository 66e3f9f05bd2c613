"""Fixtures and builders shared by tests/test_generate*.py (and benchmarks/bench_generate.py):
LoRA files made here on the demo UNet (random, non-zero weights, so they change the image), in
diffusers and kohya formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    import pytest
except ImportError:  # a bare GPU image runs benchmarks/bench_generate.py without pytest: builders only
    pytest = None

from dreamshot.generate.service import GenerationRequest

FAST = dict(width=64, height=64, steps=4, seed=7)


def fixture(*args, **kwargs):
    """``pytest.fixture``, or a no-op where pytest is not installed."""
    if pytest is not None:
        return pytest.fixture(*args, **kwargs)
    return args[0] if args and callable(args[0]) else (lambda fn: fn)


def fast(prompt="a woman reading a letter", **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, **{**FAST, **kw})


def pixels(result_or_image) -> np.ndarray:
    image = result_or_image.images[0].image if hasattr(result_or_image, "images") else result_or_image
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def random_lora(unet, out_dir: Path, *, seed: int = 0, rank: int = 4, scale: float = 1.0,
                target_modules=("to_q", "to_k", "to_v", "to_out.0")) -> Path:
    """A LoRA with random non-zero weights for ``unet`` (e.g. ``pipe.unet``; it is copied, not
    changed), saved in diffusers format as ``out_dir/pytorch_lora_weights.safetensors``."""
    import copy

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(unet)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules),
                                init_lora_weights=False), adapter_name="random")
    state = get_peft_model_state_dict(unet, adapter_name="random")
    state = {k: v * scale if "lora_B" in k else v for k, v in state.items()}
    StableDiffusionPipeline.save_lora_weights(str(out_dir), unet_lora_layers=convert_state_dict_to_diffusers(state))
    return Path(out_dir) / "pytorch_lora_weights.safetensors"


def to_kohya(diffusers_file: Path, out_file: Path) -> Path:
    """Write the kohya / A1111 / ComfyUI form of a diffusers-format UNet LoRA file."""
    from diffusers.utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft
    from safetensors.torch import load_file, save_file

    state = convert_state_dict_to_kohya(convert_unet_state_dict_to_peft(load_file(str(diffusers_file))))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_file), metadata={"format": "pt"})
    return Path(out_file)


@fixture(scope="session")
def lora_files(demo_model_dir, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    out = tmp_path_factory.mktemp("loras")
    unet = UNet2DConditionModel.from_pretrained(demo_model_dir / "unet")
    close = random_lora(unet, out / "close", seed=1)
    medium = random_lora(unet, out / "medium", seed=2)
    return {"close": close, "medium": medium, "close_kohya": to_kohya(close, out / "close_kohya.safetensors")}


@fixture
def gen_studio(studio, lora_files):
    """A studio whose library has trained LoRAs 'close' and 'medium' (like the Train tab leaves)."""
    from dreamshot.generate.loras import LoraLibrary

    lib = LoraLibrary(studio)
    lib.register(lora_files["close"], name="close", shot="close", origin="trained")
    lib.register(lora_files["medium"], name="medium", shot="medium", origin="trained")
    return studio


@fixture
def one_torch_thread():
    """Tiny-model runs are fastest on one thread, and several test runs share 2 cores here: with
    two OpenMP threads each, a 64 px image took seconds instead of 0.15 s. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
