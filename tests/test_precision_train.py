"""Training in float16 and bfloat16 on the CPU (issue 23): ``lora``, ``ti``, ``full`` (with the LoRA
extraction) and ``motion`` keep float32 master weights under autocast, fp16 with torch's GradScaler
(what accelerate uses on a GPU), their losses follow the float32 run's, and what they produce loads
into a studio of the same precision and generates images close to those of the float32-trained
result (tolerance: ``precision_checks``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.precision_checks import REDUCED, UNIT_ROUNDOFF, as_array, assert_close
from tests.precision_fixtures import FINITE
from tests.precision_paths import Ctx, open_studio, train

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), FINITE]
PRECISION = {"float16": "fp16", "bfloat16": "bf16", "float32": "no"}


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    from tests.precision_models import build

    root = tmp_path_factory.mktemp("precision-train")
    models = build("demo", root / "models")
    made = {dtype: Ctx(open_studio(models, dtype, root), models, root / dtype, px=64, steps=2)
            for dtype in ("float32", *REDUCED)}
    yield made
    for ctx in made.values():
        ctx.studio.close()


@pytest.fixture(scope="module")
def trained32(contexts):
    done = {}

    def get(method):
        if method not in done:
            ctx = contexts["float32"]
            done[method] = (train(ctx, method), dict(ctx.notes))
        return done[method]
    return get


@pytest.mark.parametrize("method", ["lora", "ti", "full", "motion"])
@pytest.mark.parametrize("dtype", REDUCED)
def test_training_in_reduced_precision(contexts, trained32, method, dtype):
    ctx = contexts[dtype]
    images = train(ctx, method)
    notes = dict(ctx.notes)
    ref_images, ref_notes = trained32(method)
    assert notes["precision"] == PRECISION[dtype] and ref_notes["precision"] == "no"
    assert notes["master"] == ["float32"], f"{method}: trained tensors in {notes['master']}, not fp32 masters"
    if dtype == "float16":      # the loss scaler a GPU uses, on the CPU too
        assert notes["scaler"] == "GradScaler" and notes["scale"] > 0
    else:
        assert notes["scaler"] is None
    if method == "full":        # AdamW's states were dropped before the base UNet was loaded for the export
        assert notes["optimizer_states"] == ref_notes["optimizer_states"] == 0
    u = UNIT_ROUNDOFF[dtype]
    losses, ref = np.array(notes["losses"]), np.array(ref_notes["losses"])
    assert np.isfinite(losses).all() and np.allclose(losses, ref, rtol=8 * u), f"{method} losses {losses} vs {ref}"
    assert_close(as_array(images), as_array(ref_images), dtype, f"{method} trained in {dtype}")


@pytest.mark.parametrize("dtype", REDUCED)
def test_lora_extraction_from_reduced_precision_weights(dtype):
    """The SVD extraction of a fine-tune held in fp16/bf16 (as a GPU may keep a copy) is the fp32
    extraction of the same (rounded) weights: the extraction upcasts before subtracting."""
    import torch

    from training import extract

    g = torch.Generator().manual_seed(0)
    base = {"down_blocks.0.attn.to_q.weight": torch.randn(16, 12, generator=g),
            "down_blocks.0.conv.weight": torch.randn(8, 4, 3, 3, generator=g)}
    tuned = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    cast = {k: v.to(getattr(torch, dtype)) for k, v in base.items()}, {k: v.to(getattr(torch, dtype))
                                                                       for k, v in tuned.items()}
    exact = extract.extract({k: v.float() for k, v in cast[0].items()}, {k: v.float() for k, v in cast[1].items()},
                            set(base), rank=4)
    low = extract.extract(*cast, set(base), rank=4)
    assert set(low.state) == set(exact.state)
    for key, value in exact.state.items():
        assert low.state[key].dtype == torch.float32
        assert torch.equal(low.state[key], value), key
