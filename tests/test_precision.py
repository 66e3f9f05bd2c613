"""Every generation path in float16 and bfloat16 on the CPU (issue 23): the studio's ``--dtype`` reaches
each model, the images are finite and match the float32 images of the same seed (tolerance: see
``precision_fixtures``), and what each path adds (LoRA, blend, embedding, ControlNet, motion) survives
the reduced precision. Training paths: ``test_precision_train.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamshot.generate.request import ControlRequest
from dreamshot.generate.service import GenerationRequest, service
from tests.control_fixtures import control_models, reference  # noqa: F401 (fixture)
from tests.evaluate_fixtures import tiny_eval_models  # noqa: F401 (fixture)
from tests.generate_fixtures import lora_files  # noqa: F401 (fixture)
from tests.precision_fixtures import (  # noqa: F401 (fixtures)
    DTYPES, FINITE, REDUCED, UNIT_ROUNDOFF, as_array, assert_close, assert_moves, refs, studios,
)

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), FINITE]
SIZE = dict(width=64, height=64, steps=3, seed=7)


def image(studio, **kw):
    req = GenerationRequest(**{"prompt": "a woman reading a letter", **SIZE, **kw})
    return as_array(service(studio).generate(req, save=False).images[0].image)


@pytest.mark.parametrize("dtype", REDUCED)
def test_generate_lora_blend_fused_and_alpha_switch(studios, refs, dtype):
    studio = studios[dtype]
    pipe = service(studio).pipe
    assert (pipe.unet.dtype, pipe.text_encoder.dtype) == (DTYPES[dtype],) * 2
    assert pipe.vae.dtype == (torch.float32 if dtype == "float16" else DTYPES[dtype])   # fp16: VAE upcast
    assert studio.models.precision_text() == f"{dtype} on cpu"
    cases = {"base": {}, "lora": dict(shot="close", alpha=0.8), "blend": dict(blend={"close": 0.6, "medium": 0.4}),
             "alpha 0.3": dict(shot="close", alpha=0.3)}
    first = {name: image(studio, **kw) for name, kw in cases.items()}
    for name, kw in cases.items():
        assert_close(first[name], refs.get(name, lambda s, kw=kw: image(s, **kw)), dtype, name)
    assert_moves(refs.get("lora", None), refs.get("base", None), "the LoRA")
    assert_moves(refs.get("blend", None), refs.get("base", None), "the blend")
    # fused at a fixed α: the merged weights again give the same image; an α switch and back is exact
    assert np.array_equal(image(studio, shot="close", alpha=0.3), first["alpha 0.3"])
    assert np.array_equal(image(studio, shot="close", alpha=0.8), first["lora"])
    assert np.array_equal(image(studio), first["base"])              # α = 0 / no LoRA: the base weights restored


@pytest.mark.parametrize("dtype", REDUCED)
def test_embedding_alone_and_with_a_lora(studios, refs, dtype):
    studio = studios[dtype]
    svc = service(studio)
    rows = svc.pipe.text_encoder.get_input_embeddings().weight
    assert rows.dtype == DTYPES[dtype]
    cases = {"ti": dict(embedding="close_ti"), "ti+lora": dict(embedding="close_ti", shot="close", alpha=0.8)}
    for name, kw in cases.items():
        assert_close(image(studio, **kw), refs.get(name, lambda s, kw=kw: image(s, **kw)), dtype, name)
    plain = refs.get("shot words", lambda s: image(s, prompt="a high-quality close shot picture of a woman "
                                                             "reading a letter", use_template=False))
    assert_moves(refs.get("ti", None), plain, "the embedding")


@pytest.mark.parametrize("dtype", REDUCED)
def test_controlnet_canny_depth_scribble(studios, refs, control_models, dtype):
    from dreamshot.generate.control_models import controls

    studio = studios[dtype]
    for kind in ("canny", "depth", "scribble"):
        req = dict(control=ControlRequest(kind, reference(3, 64), model=control_models["controlnet"]))
        got = image(studio, **req)
        assert controls(studio).controlnet(control_models["controlnet"]).dtype == DTYPES[dtype]
        assert_close(got, refs.get(kind, lambda s, req=req: image(s, **req)), dtype, f"ControlNet {kind}")
        assert_moves(refs.get(kind, None), refs.get("base", lambda s: image(s)), f"the {kind} ControlNet")
    assert controls(studio).depth().model.dtype == torch.float32    # the depth estimator: see control_models


@pytest.mark.parametrize("dtype", REDUCED)
def test_storyboard_compare_and_alpha_sweep(studios, refs, dtype):
    from dreamshot.generate.storyboard import alpha_sweep, storyboard

    def sweep(studio):
        return as_array([c.image for row in alpha_sweep(service(studio), GenerationRequest(prompt="a man", **SIZE),
                                                         ["close", "medium"], "0, 1").cells for c in row])

    def board(studio):
        return as_array([p.image for p in storyboard(service(studio), "medium | a lighthouse\nclose | a face",
                                                      GenerationRequest(prompt="-", **SIZE)).panels])

    def compare(studio):
        base, lora = service(studio).compare_with_base(GenerationRequest(prompt="a dog", shot="close", **SIZE),
                                                       save=False)
        return as_array([base.images[0].image, lora.images[0].image])

    for name, make in (("sweep", sweep), ("storyboard", board), ("compare", compare)):
        assert_close(make(studios[dtype]), refs.get(name, make), dtype, name)
    pair = refs.get("compare", None)
    assert_moves(pair[1], pair[0], "the compared LoRA")


@pytest.mark.parametrize("dtype", REDUCED)
def test_survey_build(studios, refs, dtype):
    from dreamshot.survey import images
    from dreamshot.survey.build import SurveySpec
    from dreamshot.survey.service import service as surveys

    def build(studio):
        spec = SurveySpec(name=f"p-{studio.settings.dtype}", shots=["close", "medium"], pairs=2, per_participant=2,
                          prompts=["a woman reading", "a man on a bridge"], seed=3, steps=2, width=64, height=64)
        info = surveys(studio).build(spec)
        assert info.ready == 2
        import sqlalchemy as sa

        from dreamshot import schema

        t = schema.survey_pairs
        with studio.db.read() as conn:
            rows = conn.execute(sa.select(t.c.base_image, t.c.lora_image).order_by(t.c.position)).all()
        return as_array([images.load(studio, p) for row in rows for p in row])

    assert_close(build(studios[dtype]), refs.get("survey", build), dtype, "survey pairs")


@pytest.mark.parametrize("dtype", REDUCED)
def test_evaluate_clip_dino_in_reduced_precision(studios, refs, tiny_eval_models, tmp_path, dtype):
    """CLIP and DINO load in the studio's dtype. Their features of the same images match fp32's: a
    unit vector off by a relative error ε has cosine 1 - ε²/2 with the exact one; allowed ε = 8u
    (measured: 1 - cos ≤ 2u²). A whole evaluation's CLIP-T and DINO means (of images that differ by
    rounding too) stay within 4u of fp32's (measured: under 0.4u in bfloat16, 1u in float16)."""
    from dreamshot.evaluate.pairs import EvalOptions
    from dreamshot.evaluate.service import service as evaluation

    studio = studios[dtype]
    u = UNIT_ROUNDOFF[dtype]
    ev, ref32 = evaluation(studio), evaluation(studios["float32"])
    clip, dino = ev.clip(tiny_eval_models["clip"]), ev.dino(tiny_eval_models["dino"])
    clip32, dino32 = ref32.clip(tiny_eval_models["clip"]), ref32.dino(tiny_eval_models["dino"])
    assert clip.model.dtype == dino.model.dtype == DTYPES[dtype]
    pictures, texts = [reference(i, 64) for i in range(3)], ["a dog", "a close shot of a face"]
    for what, mine, theirs in (("CLIP image", clip.image_features(pictures), clip32.image_features(pictures)),
                               ("CLIP text", clip.text_features(texts), clip32.text_features(texts)),
                               ("DINO", dino.image_features(pictures), dino32.image_features(pictures))):
        gap = 1 - (mine * theirs).sum(axis=1)
        assert np.all(gap <= (8 * u) ** 2 / 2), f"{what} features in {dtype}: 1 - cos {gap} to fp32's"

    def run(studio, out):
        res = evaluation(studio).run(EvalOptions(
            out=str(out), clip_model=tiny_eval_models["clip"], dino_model=tiny_eval_models["dino"], pairs=2,
            width=64, height=64, steps=2, batch=2, bootstrap=100, ablation=False, alpha_values=[1.0],
            alpha_subset=1, shots=["close", "medium"]))
        assert res["complete"]
        return {(a["alpha"], k): a[k] for a in res["alpha_curve"] for k in ("clip_t", "dino")}

    mine = run(studio, tmp_path / "eval")
    theirs = refs.get("evaluate", lambda s: run(s, tmp_path / "eval32"))
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert abs(mine[key] - theirs[key]) <= 4 * u, f"{key} in {dtype}: {mine[key]:.4f} vs fp32 {theirs[key]:.4f}"


def test_fp16_vae_decodes_in_float32_where_float16_overflows(demo_model_dir):
    """SD 1.5's VAE overflows in fp16 at large sizes; in fp16 the studio keeps it in float32 (its config
    says force_upcast, as SD 1.5's does). A decoder made to overflow in float16 (its first convolution
    scaled up) decodes the same float16 latents to finite pixels once upcast."""
    import copy

    from diffusers import AutoencoderKL

    from dreamshot.precision import upcast_vae

    vae = AutoencoderKL.from_pretrained(demo_model_dir / "vae")
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)     # activations past float16's 65504
    half = copy.deepcopy(vae).to(torch.float16)
    assert not upcast_vae(copy.deepcopy(vae), torch.bfloat16)          # bf16 has float32's range: kept
    assert upcast_vae(vae, torch.float16) and vae.dtype == torch.float32
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    with torch.no_grad():
        assert not torch.isfinite(half.decode(latents).sample).all()   # what a float16 VAE does
        out = vae.decode(latents).sample
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        encoded = vae.encode(torch.zeros(1, 3, 64, 64, dtype=torch.float16)).latent_dist.mean
    assert encoded.dtype == torch.float16      # img2img and ControlNet pipelines get the UNet's dtype back


def test_ddim_never_clamps_latent_x0_predictions(demo_model_dir):
    """A DDIM scheduler made from a config without ``clip_sample`` (diffusers' default: True) clamps each
    x0 prediction to [-1, 1], which latents are not: on the demo model that made DDIM in fp16/bf16
    drift from fp32 (mean |Δ| 0.15 at 8 steps; restyle runs DDIM). SD 1.5's config says false; the
    DDIM sampler and the demo model now say so too."""
    from diffusers import PNDMScheduler

    from dreamshot.demo_model import SD15_SCHEDULER
    from dreamshot.generate.samplers import make_scheduler

    bare = dict(PNDMScheduler(**SD15_SCHEDULER).config)          # no clip_sample key, as some SD 1.x copies
    assert make_scheduler(bare, "DDIM").config.clip_sample is False
    assert PNDMScheduler.load_config(demo_model_dir / "scheduler")["clip_sample"] is False


@pytest.mark.parametrize("dtype", REDUCED)
def test_a_seed_starts_from_the_same_noise_in_every_dtype(studios, refs, dtype):
    """72 px: a latent of 4·9·9 numbers, not a multiple of 16, where torch's CPU sampler fills some
    numbers differently in float16/bfloat16 than in float32: drawn in the pipeline's dtype (the starting
    noise, DPM++ SDE's Brownian noise), the seed made another picture than in float32."""
    for sampler in ("DPM++ SDE Karras", "Euler"):   # the paper's (its Brownian noise too), and a plain ODE one
        kw = dict(width=72, height=72, sampler=sampler)
        assert_close(image(studios[dtype], **kw), refs.get(f"72 px {sampler}", lambda s, kw=kw: image(s, **kw)),
                     dtype, f"72 px, {sampler}")


def test_the_float32_noise_is_diffusers_own_draw():
    """Drawing the noise ourselves changes no float32 picture: it is what diffusers draws for the seeds."""
    from types import SimpleNamespace

    from diffusers.utils.torch_utils import randn_tensor

    from dreamshot.generate.batch import initial_noise

    pipe = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(in_channels=4), dtype=torch.float32),
                           vae_scale_factor=8, _execution_device=torch.device("cpu"))
    seeds = (3, 11)
    ours = initial_noise(pipe, [torch.Generator().manual_seed(s) for s in seeds], 72, 80)
    theirs = randn_tensor((2, 4, 10, 9), generator=[torch.Generator().manual_seed(s) for s in seeds],
                          dtype=torch.float32)
    assert torch.equal(ours, theirs)
