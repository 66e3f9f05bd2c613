"""Video paths in float16 and bfloat16 on the CPU (issue 23): a shot clip with its LoRA, a shot-to-shot
transition (per-frame LoRA weights and prompt blend), and the restyle (img2img and ControlNet canny)
match the float32 frames of the same seed (tolerance: ``precision_checks``)."""

from __future__ import annotations

import pytest
import torch

from dreamshot.video.restyle import RestyleRequest
from dreamshot.video.service import ClipRequest, service
from tests.control_fixtures import control_models  # noqa: F401 (fixture)
from tests.generate_fixtures import lora_files  # noqa: F401 (fixture)
from tests.precision_fixtures import DTYPES, FINITE, REDUCED, as_array, assert_close, assert_moves, refs, studios  # noqa: F401
from tests.video_fixtures import build_motion_adapter, gradio_videos, video_loras  # noqa: F401 (fixture)

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), FINITE]
CLIP = dict(prompt="a woman on a bridge", width=64, height=64, steps=2, frames=8, seed=11, use_template=False)


@pytest.fixture(scope="module")
def strong_loras(studios, video_loras):
    """The video tests' stronger LoRAs 'vlong', 'vclose' (a clip at 2 steps moves less than an image)."""
    from dreamshot.generate.loras import LoraLibrary

    for studio in studios.values():
        lib = LoraLibrary(studio)
        if not any(i.name == "vlong" for i in lib.list()):
            lib.register(video_loras["long"], name="vlong", shot="long", origin="trained")
            lib.register(video_loras["close"], name="vclose", shot="close", origin="trained")


@pytest.fixture(scope="module")
def adapter(strong_loras, demo_model_dir, tmp_path_factory) -> str:
    return str(build_motion_adapter(tmp_path_factory.mktemp("precision-motion") / "adapter", demo_model_dir / "unet"))


def frames(studio, adapter, **kw):
    return as_array(service(studio).clip(ClipRequest(motion_adapter=adapter, **{**CLIP, **kw}), save=False).frames)


@pytest.mark.parametrize("dtype", REDUCED)
def test_clip_and_transition(studios, refs, adapter, dtype):
    studio = studios[dtype]
    cases = {"clip": dict(shot="vclose", alpha=0.8), "transition": dict(shot="vlong", to_shot="vclose"),
             "templated transition": dict(shot="vlong", to_shot="vclose", use_template=True)}
    for name, kw in cases.items():
        assert_close(frames(studio, adapter, **kw), refs.get(name, lambda s, kw=kw: frames(s, adapter, **kw)),
                     dtype, f"video {name}")
    motion = service(studio).motion_pipeline(adapter)
    assert motion.unet.dtype == DTYPES[dtype]
    assert {p.dtype for n, p in motion.unet.named_parameters() if "motion_modules" in n} == {DTYPES[dtype]}
    plain = refs.get("plain clip", lambda s: frames(s, adapter))
    assert_moves(refs.get("clip", None), plain, "the clip's LoRA")
    assert_moves(refs.get("transition", None), refs.get("clip", None), "the transition")


def restyled(studio, out, **kw):
    # 4 steps at strength 0.75: 3 denoising steps. (With 1 step, from t ≈ 750, the image is the UNet's
    # x0 prediction: its rounding is multiplied by sqrt(1 - ᾱ)/sqrt(ᾱ) ≈ 5, in any precision.)
    req = RestyleRequest(video=gradio_videos() / "b.mp4", out_dir=out, max_frames=2, chunk=2, width=64, height=64,
                         steps=4, seed=4, strength=0.75, shot="vclose", **kw)
    result = service(studio).restyle(req)
    return as_array([__import__("PIL.Image").Image.open(p) for p in sorted((result.folder / "frames").glob("*.png"))])


@pytest.mark.parametrize("dtype", REDUCED)
def test_restyle_img2img_and_canny(studios, refs, strong_loras, control_models, tmp_path, dtype):
    studio = studios[dtype]
    for control in ("none", "canny"):
        kw = dict(control=control, controlnet=control_models["controlnet"] if control == "canny" else None)
        ref = refs.get(f"restyle {control}", lambda s, kw=kw: restyled(s, tmp_path / f"ref-{kw['control']}", **kw))
        assert_close(restyled(studio, tmp_path / control, **kw), ref, dtype, f"restyle {control}")
    assert_moves(refs.get("restyle canny", None), refs.get("restyle none", None), "the restyle's ControlNet")
    assert service(studio).gen.pipe.unet.dtype == DTYPES[dtype] and torch.is_floating_point(
        service(studio).gen.pipe.unet.conv_in.weight)
