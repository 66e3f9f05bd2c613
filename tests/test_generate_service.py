"""GenerationService on the tiny demo model: seeds, α, blends, fused adapters, samplers, cancel,
PNG settings round trip, LoRAs appearing without a restart."""

from __future__ import annotations

import numpy as np
import pytest

from dreamshot.generate import pngmeta
from dreamshot.errors import InvalidInput
from dreamshot.generate.service import Cancelled, Job, check_inputs, service
from dreamshot.generate.loras import LoraLibrary, a1111_lora_hash
from tests.generate_fixtures import fast, gen_studio, lora_files, pixels, one_torch_thread  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEMPLATED = "a high-quality close shot picture of a woman reading a letter"


def test_same_seed_same_image_alpha_zero_is_base_and_alpha_matters(gen_studio):
    svc = service(gen_studio)
    base = pixels(svc.generate(fast(TEMPLATED, use_template=False)))       # before any LoRA is loaded
    lora = svc.generate(fast(shot="close"))
    assert lora.prompt == TEMPLATED
    assert np.abs(pixels(lora) - base).max() > 0                           # the LoRA changes the image
    half = pixels(svc.generate(fast(shot="close", alpha=0.5)))
    assert np.abs(half - pixels(lora)).max() > 0 and np.abs(half - base).max() > 0
    again = pixels(svc.generate(fast(shot="close")))                       # after a re-fuse: identical
    assert np.array_equal(again, pixels(lora))
    zero = pixels(svc.generate(fast(shot="close", alpha=0)))
    assert np.array_equal(zero, base)                                      # α = 0 is the base model
    after = pixels(svc.generate(fast(TEMPLATED, use_template=False)))
    assert np.array_equal(after, base)                                     # no drift from fuse/unfuse
    assert pixels(svc.generate(fast(shot="close", seed=8))).tolist() != pixels(lora).tolist()


@pytest.mark.parametrize("sampler", ["DPM++ 2M Karras", "Euler a", "DDIM"])
def test_other_samplers_are_reproducible(gen_studio, sampler):
    svc = service(gen_studio)
    a = svc.generate(fast(shot="close", sampler=sampler, steps=3))
    b = svc.generate(fast(shot="close", sampler=sampler, steps=3))
    assert np.array_equal(pixels(a), pixels(b))
    assert pngmeta.parse_parameters(a.images[0].parameters).sampler == sampler     # A1111 1.9+ spelling, read back


def test_batch_seeds_blend_and_kohya_file(gen_studio, lora_files):
    svc = service(gen_studio)
    batch = svc.generate(fast(shot="close", num_images=2, seed=100))
    assert batch.seeds == [100, 101]
    single = svc.generate(fast(shot="close", seed=101))
    assert np.abs(pixels(batch.images[1].image) - pixels(single)).max() <= 2   # image 2 = its own seed
    blend = svc.generate(fast(shot="close", blend={"close": 0.6, "medium": 0.4}))
    assert [(i.name, w) for i, w in blend.loras] == [("close", 0.6), ("medium", 0.4)]
    assert "<lora:close:0.6> <lora:medium:0.4>" in blend.images[0].parameters
    only_close = svc.generate(fast(shot="close", alpha=0.6))
    assert np.abs(pixels(blend) - pixels(only_close)).max() > 0
    LoraLibrary(gen_studio).register(lora_files["close_kohya"], name="close_k", shot=None, origin="uploaded",
                                     fmt="kohya")                         # appears without a restart
    kohya = svc.generate(fast(TEMPLATED, use_template=False, shot="close_k"))
    diffusers = svc.generate(fast(shot="close"))
    assert np.array_equal(pixels(kohya), pixels(diffusers))


def test_png_settings_round_trip_reproduces_the_image(gen_studio):
    svc = service(gen_studio)
    first = svc.generate(fast(shot="medium", alpha=0.8, negative_prompt="blurry, dark", seed=-1))
    image = first.images[0]
    assert image.path.is_file() and image.path.is_relative_to(gen_studio.settings.outputs_dir)
    text = pngmeta.read_parameters(image.path)
    assert text == image.parameters and f"Seed: {image.seed}" in text
    assert pngmeta.parse_parameters(text).lora_hashes == {"medium": a1111_lora_hash(LoraLibrary(gen_studio).get("medium").path)}
    req, notes = svc.request_from_parameters(text)
    assert notes == [] and req.shot == "medium" and req.alpha == 0.8 and req.use_template
    assert req.prompt == "a woman reading a letter" and req.negative_prompt == "blurry, dark"
    again = svc.generate(req)
    assert np.array_equal(pixels(again), pixels(image.image))


def test_bad_requests_get_clear_messages(gen_studio):
    svc = service(gen_studio)
    cases = [
        (fast(prompt="  "), "prompt is empty"),
        (fast(width=100), "multiple of 8"),
        (fast(width=2048), "between 64 and 1024"),
        (fast(steps=0), "Steps must be"),
        (fast(cfg=50), "CFG scale"),
        (fast(alpha=2), "α must be"),
        (fast(num_images=99), "Number of images"),
        (fast(sampler="LMS-ish"), "Unknown sampler"),
        (fast(seed=-5), "Seed must be"),
        (fast(blend={"close": 3}), "Blend weight"),
    ]
    for req, message in cases:
        with pytest.raises(InvalidInput, match=message):
            check_inputs(req)
    with pytest.raises(InvalidInput, match="No LoRA for the shot type 'long'"):
        svc.generate(fast(shot="long"))
    with pytest.raises(InvalidInput, match="Unknown shot type or LoRA 'dolly'"):
        svc.generate(fast(shot="dolly"))
    assert svc.generate(fast(shot="close")).images                           # still working


def test_missing_lora_file_is_an_error_for_that_lora_only(gen_studio, lora_files, tmp_path):
    import shutil

    svc = service(gen_studio)
    gone = shutil.copy(lora_files["medium"], tmp_path / "gone.safetensors")
    LoraLibrary(gen_studio).register(gone, name="gone", shot=None, origin="uploaded")
    (tmp_path / "gone.safetensors").unlink()
    with pytest.raises(Exception, match="missing"):
        svc.generate(fast(shot="gone"))
    assert svc.generate(fast(shot="close")).images


def test_cancel_stops_at_the_next_step(gen_studio):
    svc = service(gen_studio)
    seen = []

    def progress(fraction, text):
        seen.append(fraction)
        if len(seen) == 2:
            svc.cancel("me")

    with svc.job("me", progress=progress) as job:
        with pytest.raises(Cancelled):
            svc.generate(fast(shot="close", steps=40, num_images=3), job)
    assert len(seen) == 2                       # the next steps were skipped
    with svc.job("me") as job:                  # a new job of the same owner runs normally
        assert svc.generate(fast(steps=2), job).images
    cancelled_later = Job()
    progress_calls = []

    def stop_in_second_image(fraction, text):
        progress_calls.append(text)
        if text.startswith("image 2/"):
            cancelled_later.cancel()

    cancelled_later.progress = stop_in_second_image
    result = svc.generate(fast(steps=2, num_images=3), cancelled_later, batch_size=1)
    assert result.cancelled and len(result.images) == 1      # the finished batch (one image) is kept


def test_a_second_caller_waits_for_the_lock_and_says_so(gen_studio):
    import threading

    svc = service(gen_studio)
    notes = []
    with svc.lock:
        worker = threading.Thread(target=lambda: svc.generate(
            fast(steps=2), Job(progress=lambda f, text: notes.append(text))))
        worker.start()
        worker.join(timeout=2)
        assert worker.is_alive() and notes == ["waiting for another generation to finish…"]
    worker.join(timeout=60)
    assert not worker.is_alive() and len(notes) > 1


def test_compare_with_base_uses_the_same_seed_and_prompt(gen_studio):
    svc = service(gen_studio)
    base, lora = svc.compare_with_base(fast(shot="close", seed=-1))
    assert base.seeds == lora.seeds and base.prompt == lora.prompt == TEMPLATED
    plain = svc.generate(fast(TEMPLATED, use_template=False, seed=base.seeds[0]))
    assert np.array_equal(pixels(base), pixels(plain))
    with pytest.raises(InvalidInput, match="Choose a shot LoRA"):
        svc.compare_with_base(fast())


def test_conv_lora_layers_merge_and_restore_exactly(gen_studio, demo_model_dir, tmp_path):
    """LoRA on conv layers (kohya LoCon-style proj_in / resnet convs) takes peft's merge path."""
    from diffusers import UNet2DConditionModel

    from tests.generate_fixtures import random_lora

    unet = UNet2DConditionModel.from_pretrained(demo_model_dir / "unet")
    path = random_lora(unet, tmp_path / "conv", seed=5, target_modules=("proj_in", "conv1", "to_v"))
    LoraLibrary(gen_studio).register(path, name="convy", shot=None, origin="uploaded")
    svc = service(gen_studio)
    base = pixels(svc.generate(fast(TEMPLATED, use_template=False)))
    conv = svc.generate(fast(TEMPLATED, use_template=False, shot="convy"))
    assert np.abs(pixels(conv) - base).max() > 0
    blend = svc.generate(fast(TEMPLATED, use_template=False, blend={"convy": 0.5, "close": 0.5}))
    again = svc.generate(fast(TEMPLATED, use_template=False, shot="convy"))
    assert np.array_equal(pixels(again), pixels(conv)) and np.abs(pixels(blend) - pixels(conv)).max() > 0
    assert np.array_equal(pixels(svc.generate(fast(TEMPLATED, use_template=False, shot="convy", alpha=0))), base)
