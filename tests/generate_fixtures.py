"""Fixtures shared by tests/test_generate*.py: LoRA files made here on the demo UNet (random,
non-zero weights, so they change the image), in diffusers and kohya formats."""

from __future__ import annotations

import numpy as np
import pytest

from dreamshot.generate.service import GenerationRequest

FAST = dict(width=64, height=64, steps=4, seed=7)


def fast(prompt="a woman reading a letter", **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, **{**FAST, **kw})


def pixels(result_or_image) -> np.ndarray:
    image = result_or_image.images[0].image if hasattr(result_or_image, "images") else result_or_image
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def lora_files(demo_model_dir, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    from dreamshot.generate.loras import random_lora, to_kohya

    out = tmp_path_factory.mktemp("loras")
    unet = UNet2DConditionModel.from_pretrained(demo_model_dir / "unet")
    close = random_lora(unet, out / "close", seed=1)
    medium = random_lora(unet, out / "medium", seed=2)
    return {"close": close, "medium": medium, "close_kohya": to_kohya(close, out / "close_kohya.safetensors")}


@pytest.fixture
def gen_studio(studio, lora_files):
    """A studio whose library has trained LoRAs 'close' and 'medium' (like the Train tab leaves)."""
    from dreamshot.generate.loras import LoraLibrary

    lib = LoraLibrary(studio)
    lib.register(lora_files["close"], name="close", shot="close", origin="trained")
    lib.register(lora_files["medium"], name="medium", shot="medium", origin="trained")
    return studio


@pytest.fixture
def one_torch_thread():
    """Tiny-model runs are fastest on one thread, and several test runs share 2 cores here: with
    two OpenMP threads each, a 64 px image took seconds instead of 0.15 s. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
