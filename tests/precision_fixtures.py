"""Shared by tests/test_precision*.py (issue 23): one studio per precision on the demo model, with the
same library (LoRAs 'close' and 'medium', embedding 'close_ti'), the comparison with float32 and its
tolerance, and fp32 references computed once per module.

Tolerance. An image made in float16 or bfloat16 differs from the float32 image of the same seed by
rounding alone: every weight and activation is rounded to a unit roundoff u (float16: 2^-11 ≈ 4.9e-4,
bfloat16: 2^-8 ≈ 3.9e-3) and the errors travel through the text encoder, each sampler step and the
VAE, then the pixels are rounded to 8 bits (1/255 = 8u in float16, 1u in bfloat16). Measured on the
demo model (64 px, 2-3 steps, pixels in [0, 1]), over every path: mean |Δ| ≤ 1.3u, largest pixel
error ≤ 2/255 in float16 and ≤ 18u in bfloat16. Allowed: mean ≤ 3u, max ≤ 32u (a margin of 2× or
more). Each test also checks that what it exercises (a LoRA, a blend, an embedding, a ControlNet ...)
moves the fp32 image by more than the bfloat16 tolerance, so a path that silently lost it in
reduced precision would fail.
Non-finite values are caught where diffusers turns the decoded images into pixels: NaN or inf makes
numpy's cast warn ("invalid value encountered"), which these tests turn into an error.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from dreamshot.generate.loras import LoraLibrary
from dreamshot.settings import Settings
from dreamshot.studio import Studio

REDUCED = ["float16", "bfloat16"]
DTYPES = {name: getattr(torch, name) for name in ("float16", "bfloat16", "float32")}
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
MEAN_U, MAX_U = 3, 32
# NaN/inf reaching the pixels: numpy's cast warns; make it an error in every precision test.
FINITE = pytest.mark.filterwarnings("error:invalid value encountered:RuntimeWarning")


def tolerance(dtype: str) -> tuple[float, float]:
    u = UNIT_ROUNDOFF[dtype]
    return MEAN_U * u, MAX_U * u


def as_array(images) -> np.ndarray:
    """Pixels in [0, 1] (float64) of a PIL image or a list of them."""
    if isinstance(images, (list, tuple)):
        return np.stack([as_array(im) for im in images])
    return np.asarray(images.convert("RGB"), dtype=np.float64) / 255.0


def assert_close(got, ref, dtype: str, what: str) -> None:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != fp32's {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite values in {dtype}"
    diff = np.abs(got - ref)
    mean_tol, max_tol = tolerance(dtype)
    if os.environ.get("PRECISION_STATS"):
        u = UNIT_ROUNDOFF[dtype]
        print(f"\nSTATS {what:30s} {dtype:9s} mean {diff.mean() / u:6.2f}u max {diff.max() / u:6.2f}u")
    assert diff.mean() <= mean_tol and diff.max() <= max_tol, (
        f"{what} in {dtype} is not the fp32 image: mean |Δ| {diff.mean():.2e} (allowed {mean_tol:.2e}), "
        f"max {diff.max():.2e} (allowed {max_tol:.2e})")


def assert_moves(changed, unchanged, what: str) -> None:
    """``what`` changes the fp32 image by more than the bfloat16 tolerance (so losing it would show)."""
    diff = np.abs(np.asarray(changed, dtype=np.float64) - np.asarray(unchanged, dtype=np.float64))
    mean_tol, max_tol = tolerance("bfloat16")
    assert diff.mean() > mean_tol or diff.max() > max_tol, f"{what} barely changes the fp32 image: test is blind"


def open_studio(root, demo_model_dir, dtype: str, lora_files: dict, embedding=None, depth_model=None) -> Studio:
    """A studio on the demo model in ``dtype`` with LoRAs 'close' and 'medium' (and embedding
    'close_ti', the depth model, one held-out frame per shot type when given)."""
    from dreamshot.generate.control import setting_key

    data = root / f"data-{dtype}"
    shutil.copytree(demo_model_dir, data / "models" / "demo-sd")
    studio = Studio.open(Settings(data_dir=data, model="demo", dtype=dtype))
    lib = LoraLibrary(studio)
    lib.register(lora_files["close"], name="close", shot="close", origin="trained")
    lib.register(lora_files["medium"], name="medium", shot="medium", origin="trained")
    if embedding is not None:
        from dreamshot.generate.service import service

        service(studio).upload_lora(embedding, name="close_ti")
    if depth_model is not None:
        studio.db.set_setting(setting_key("depth_model"), depth_model)
    return studio


@pytest.fixture(scope="session")
def studios(tmp_path_factory, demo_model_dir, lora_files, control_models):
    """One studio per precision (float32 for the references), the same library in each."""
    from tests.evaluate_fixtures import add_held_out

    root = tmp_path_factory.mktemp("precision")
    ti = embedding_file(root / "close_ti.safetensors")
    made = {}
    for dtype in ("float32", *REDUCED):
        made[dtype] = open_studio(root, demo_model_dir, dtype, lora_files, ti, control_models["depth"])
        add_held_out(made[dtype], 1, shots=("close", "medium"))
    yield made
    for studio in made.values():
        studio.close()


@pytest.fixture(scope="session")
def refs(studios):
    return References(studios["float32"])


def embedding_file(path, width: int = 32, vectors: int = 2, seed: int = 0):
    """An AUTOMATIC1111-style embedding (float32 rows large enough to change the image)."""
    import torch
    from safetensors.torch import save_file

    rows = torch.randn(vectors, width, generator=torch.Generator().manual_seed(seed)) * 2.0
    save_file({"emb_params": rows}, str(path), metadata={"token": "<close-shot>", "shot": "close", "method": "ti"})
    return path


class References:
    """fp32 results by name, computed once on the float32 studio (``get(name, make)``)."""

    def __init__(self, studio):
        self.studio = studio
        self._done: dict = {}

    def get(self, name: str, make):
        if name not in self._done:
            self._done[name] = make(self.studio)
        return self._done[name]
