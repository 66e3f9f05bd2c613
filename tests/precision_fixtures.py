"""Fixtures of tests/test_precision*.py (issue 23): one studio per precision on the demo model, with
the same library (LoRAs 'close' and 'medium', embedding 'close_ti', the depth model), and the fp32
references computed once. How images are compared, and the tolerance: ``precision_checks``.

Non-finite values are caught where diffusers turns the decoded images into pixels: NaN or inf makes
numpy's cast warn ("invalid value encountered"), which these tests turn into an error (``FINITE``).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from dreamshot.generate.loras import LoraLibrary
from dreamshot.settings import Settings
from dreamshot.studio import Studio
from tests.precision_checks import (  # noqa: F401 (re-exported)
    REDUCED, UNIT_ROUNDOFF, as_array, assert_close, assert_moves, tolerance,
)

DTYPES = {name: getattr(torch, name) for name in ("float16", "bfloat16", "float32")}
# NaN/inf reaching the pixels: numpy's cast warns; make it an error in every precision test.
FINITE = pytest.mark.filterwarnings("error:invalid value encountered:RuntimeWarning")


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
