"""Files and PNG texts as AUTOMATIC1111 (v1.10), ComfyUI and kohya sd-scripts read them (issue 22).

These tests need none of those tools: they hold golden key lists and infotext strings in the tools'
formats (the formats, not their code). ``benchmarks/interop_check.py --peers DIR`` runs the tools' own
loaders and parsers on the same files and texts.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from dreamshot.generate import pngmeta
from dreamshot.generate.loras import LoraInfo, LoraLibrary, ModelShapes, inspect_lora_file
from dreamshot.generate.params import parameters_text, request_from_parameters
from dreamshot.generate.request import GenerationRequest
from dreamshot.generate.samplers import SAMPLERS
from dreamshot.generate.service import service
from dreamshot.shots import get_taxonomy
from tests.generate_fixtures import fast, lora_files, one_torch_thread  # noqa: F401 (fixtures)
from training import export, extract

# ---- golden: SD 1.5's LoRA layer names as kohya / A1111 / ComfyUI spell them ------------------------------
# The 16 transformer blocks of SD 1.5's UNet (kohya names; A1111 maps them to input_blocks 1,2,4,5,7,8,
# middle_block 1 and output_blocks 3..11).
SD15_TRANSFORMERS = [
    "down_blocks_0_attentions_0", "down_blocks_0_attentions_1", "down_blocks_1_attentions_0",
    "down_blocks_1_attentions_1", "down_blocks_2_attentions_0", "down_blocks_2_attentions_1",
    "mid_block_attentions_0",
    "up_blocks_1_attentions_0", "up_blocks_1_attentions_1", "up_blocks_1_attentions_2",
    "up_blocks_2_attentions_0", "up_blocks_2_attentions_1", "up_blocks_2_attentions_2",
    "up_blocks_3_attentions_0", "up_blocks_3_attentions_1", "up_blocks_3_attentions_2",
]
PROJ = ("to_q", "to_k", "to_v", "to_out_0")
CROSS = {f"lora_unet_{b}_transformer_blocks_0_attn2_{p}" for b in SD15_TRANSFORMERS for p in PROJ}
SELF = {f"lora_unet_{b}_transformer_blocks_0_attn1_{p}" for b in SD15_TRANSFORMERS for p in PROJ}
# CLIP ViT-L/14's 12 layers as kohya names them (transformers 4's text_model.encoder.layers.N).
TE = {f"lora_te_text_model_encoder_layers_{i}_self_attn_{p}" for i in range(12)
      for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
# Convolutions an extracted LoRA carries, SD 1.5 names (shortcuts where the channels change).
SD15_CONVS = {"lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
              "lora_unet_down_blocks_2_resnets_0_conv_shortcut", "lora_unet_down_blocks_0_downsamplers_0_conv",
              "lora_unet_down_blocks_2_downsamplers_0_conv", "lora_unet_down_blocks_3_resnets_1_conv2",
              "lora_unet_mid_block_resnets_1_time_emb_proj", "lora_unet_up_blocks_0_resnets_2_conv_shortcut",
              "lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_up_blocks_2_upsamplers_0_conv",
              "lora_unet_up_blocks_3_resnets_2_conv_shortcut", "lora_unet_up_blocks_1_attentions_2_proj_in",
              "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj"}
NOT_IN_SD15 = {"lora_unet_up_blocks_3_upsamplers_0_conv", "lora_unet_down_blocks_3_downsamplers_0_conv",
               "lora_unet_down_blocks_0_resnets_0_conv_shortcut"}


@pytest.fixture(scope="module")
def sd15_shaped():
    """SD 1.5's UNet and text-encoder layout (blocks, layers, heads, 12 CLIP layers: every LoRA key
    name is SD 1.5's) at small widths, random weights."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64, 96, 96), layers_per_block=2, cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32, sample_size=8)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=12,
                                      num_attention_heads=4, vocab_size=1000, max_position_embeddings=77))
    return unet, te


def _trained(unet, te, targets, with_te: bool, rank: int = 4, alpha: float = 8.0):
    import copy

    import torch
    from peft import LoraConfig

    from training.components import TE_TARGETS

    unet, te = copy.deepcopy(unet), copy.deepcopy(te)
    torch.manual_seed(1)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=targets))
    if with_te:
        te.add_adapter(LoraConfig(r=rank, lora_alpha=alpha / 2, init_lora_weights=False, target_modules=TE_TARGETS))
    return unet, (te if with_te else None), te


def _modules(keys) -> dict:
    out: dict = {}
    for key in keys:
        module, role = key.split(".", 1)
        out.setdefault(module, set()).add(role)
    return out


@pytest.mark.parametrize("target,with_te", [("all", True), ("cross", False)])
def test_trained_lora_keys_are_kohya_names_that_the_studio_reads_back(sd15_shaped, tmp_path, target, with_te):
    """Item 1: the kohya file names every layer as kohya/A1111/ComfyUI do, text encoder included
    (``lora_te_text_model_encoder_layers_N_...`` with ``.alpha``), and ``loras add`` accepts it."""
    from safetensors.torch import load_file

    from training.config import TARGETS

    unet, te, plain_te = _trained(*sd15_shaped, TARGETS[target], with_te)
    path = export.save_kohya(tmp_path / "close.safetensors", unet, te)
    state = load_file(str(path))
    modules = _modules(state)
    want = (CROSS | SELF if target == "all" else CROSS) | (TE if with_te else set())
    assert set(modules) == want
    assert all(roles == {"lora_down.weight", "lora_up.weight", "alpha"} for roles in modules.values())
    te_alphas = {float(state[f"{m}.alpha"]) for m in modules if m.startswith("lora_te_")}
    assert {float(state[f"{m}.alpha"]) for m in modules if m.startswith("lora_unet_")} == {8.0}
    assert te_alphas == ({4.0} if with_te else set())
    check = inspect_lora_file(path, ModelShapes.of_pipeline(SimpleNamespace(unet=sd15_shaped[0], text_encoder=plain_te)))
    assert check.format == "kohya" and check.components == (("unet", "text_encoder") if with_te else ("unet",))


def test_a_text_encoder_lora_loads_through_diffusers_to_the_trained_weights(demo_model_dir, tmp_path):
    """The converted text-encoder part is not only named right: diffusers applies it to the same
    text-encoder output as the trained model."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    pipe = StableDiffusionPipeline.from_pretrained(str(demo_model_dir), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    ids = pipe.tokenizer(["a close shot"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    unet, te, _ = _trained(pipe.unet, pipe.text_encoder, ["to_k", "to_v"], True, alpha=2.0)
    with torch.no_grad():
        trained, base = te(ids)[0], pipe.text_encoder(ids)[0]
    pipe.load_lora_weights(load_file(str(export.save_kohya(tmp_path / "k.safetensors", unet, te))), adapter_name="k")
    pipe.set_adapters(["k"], [1.0])
    with torch.no_grad():
        loaded = pipe.text_encoder(ids)[0]
    assert float((trained - base).abs().max()) > 1e-2
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-5)


def test_extracted_lora_keys_are_sd15_kohya_names(sd15_shaped):
    import torch

    unet = sd15_shaped[0]
    names = extract.lora_weight_names(unet)
    modules = {extract.kohya_name(n[: -len(".weight")]) for n in names}
    assert SD15_CONVS <= modules and not NOT_IN_SD15 & modules and CROSS | SELF <= modules
    # every Linear/Conv2d of the blocks: 16 transformers x 12 + resnets 3 each (8 down, 2 mid, 12 up) +
    # 14 shortcuts + 3 down- and 3 upsamplers = 192 + 66 + 14 + 6
    assert len(modules) == 278
    some = {n for n in names if "up_blocks_0_upsamplers" in extract.kohya_name(n[:-7]) or "attn2.to_k" in n}
    base = {n: unet.state_dict()[n].clone() for n in some}
    torch.manual_seed(2)
    result = extract.extract(base, {n: v + 0.01 * torch.randn_like(v) for n, v in base.items()}, some, 4)
    assert all(roles == {"lora_down.weight", "lora_up.weight", "alpha"} for roles in _modules(result.state).values())
    assert len(_modules(result.state)) == len(some) == 17


# ---- golden: AUTOMATIC1111 1.10 infotext (modules/processing.py, sd_samplers_kdiffusion.py) ----------------
A1111_TAIL = ", CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
# What A1111 1.10 writes for each sampler the studio offers, and how it reads its own texts.
WRITTEN = {"DPM++ SDE Karras": "Sampler: DPM++ SDE, Schedule type: Karras",
           "DPM++ 2M Karras": "Sampler: DPM++ 2M, Schedule type: Karras",
           "DPM++ 2M": "Sampler: DPM++ 2M, Schedule type: Uniform",
           "DPM++ 2M SDE Karras": "Sampler: DPM++ 2M SDE, Schedule type: Karras",
           "Euler a": "Sampler: Euler a, Schedule type: Automatic",
           "Euler": "Sampler: Euler, Schedule type: Automatic",
           "DDIM": "Sampler: DDIM, Schedule type: Automatic",
           "UniPC": "Sampler: UniPC, Schedule type: Automatic"}
A1111_READS = {"Sampler: DPM++ 2M, Schedule type: Automatic": "DPM++ 2M Karras",    # Automatic = Karras
               "Sampler: DPM++ SDE, Schedule type: Automatic": "DPM++ SDE Karras",
               "Sampler: DPM++ 2M Karras, Schedule type: Automatic": "DPM++ 2M Karras",  # the suffix wins
               "Sampler: Euler a, Schedule type: Uniform": "Euler a",
               "Sampler: UniPC, Schedule type: Karras": "UniPC"}                   # ignored by UniPC
OLD_FORMS = {"Sampler: DPM++ 2M Karras": "DPM++ 2M Karras", "Sampler: DPM++ 2M": "DPM++ 2M",
             "Sampler: DPM++ SDE Karras": "DPM++ SDE Karras", "Sampler: Euler a": "Euler a"}


def _req(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a lighthouse", "use_template": False, "seed": 1, **kw})


def test_every_sampler_is_written_and_read_in_a1111_19_form():
    """Item 3: ``Sampler: DPM++ 2M, Schedule type: Karras|Uniform|...`` written for every sampler."""
    assert set(WRITTEN) == set(SAMPLERS)
    for sampler, pair in WRITTEN.items():
        text = parameters_text(_req(sampler=sampler), "a lighthouse", [], 1, model_name="m", model_hash="",
                               lora_hashes={}, template="")
        assert f"Steps: 16, {pair}, CFG scale: 6," in text
        assert request_from_parameters(text, [], get_taxonomy(None))[0].sampler == sampler
        req, notes = request_from_parameters(f"a lighthouse\nSteps: 20, {pair}{A1111_TAIL}", [], get_taxonomy(None))
        assert (req.sampler, notes) == (sampler, [])


def test_a1111_automatic_and_old_spellings_read_as_written():
    for settings, sampler in {**A1111_READS, **OLD_FORMS}.items():
        tail = A1111_TAIL if "Schedule type" in settings else ", CFG scale: 7, Seed: 1, Size: 512x512, Version: v1.6.0"
        req, notes = request_from_parameters(f"a lighthouse\nSteps: 20, {settings}{tail}", [], get_taxonomy(None))
        assert (req.sampler, notes) == (sampler, []), settings
    req, notes = request_from_parameters(f"x\nSteps: 20, Sampler: DPM++ 2M SDE, Schedule type: Automatic{A1111_TAIL}",
                                         [], get_taxonomy(None))
    assert req.sampler == "DPM++ 2M SDE Karras" and "Exponential schedule is not offered here" in notes[0]


# ---- item 2: Lora hashes = A1111's hash of the kohya file it loads ----------------------------------------------
def addnet_hash(path: Path) -> str:
    """A1111's LoRA hash (modules/hashes.py addnet_hash_safetensors): sha256 of a .safetensors file
    after its JSON header, first 12 hex digits."""
    data = Path(path).read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]


def test_lora_hashes_name_the_kohya_file_and_old_pngs_still_read_back(studio, lora_files, tmp_path,
                                                                      one_torch_thread):
    run = tmp_path / "0007-close-run7"
    run.mkdir()
    diffusers_file = shutil.copy(lora_files["close"], run / "pytorch_lora_weights.safetensors")
    kohya_file = shutil.copy(lora_files["close_kohya"], run / "close-run7.safetensors")
    LoraLibrary(studio).register(diffusers_file, name="close-run7", shot="close", origin="trained",
                                     meta={"kohya_file": str(kohya_file)})
    svc = service(studio)
    text = svc.generate(fast(shot="close-run7", alpha=0.7, steps=2)).images[0].parameters
    assert pngmeta.parse_parameters(text).lora_hashes == {"close-run7": addnet_hash(kohya_file)}
    assert addnet_hash(kohya_file) != addnet_hash(diffusers_file)
    # a renamed LoRA is found by its hash, as A1111 does: the new hash, and the one PNGs carried before
    for short in (addnet_hash(kohya_file), addnet_hash(diffusers_file)):
        old = re.sub(r'Lora hashes: "[^"]*"', f'Lora hashes: "renamed: {short}"', text).replace(
            "<lora:close-run7:", "<lora:renamed:")
        req, notes = svc.request_from_parameters(old)
        assert (req.shot, req.alpha) == ("close-run7", 0.7) and notes == ["LoRA 'renamed' found by its hash as 'close-run7'."]


# ---- item 4: textual inversion as A1111 names it ------------------------------------------------------------
def _embedding(path: Path, token: str, origin: str = "trained", meta=None) -> LoraInfo:
    return LoraInfo(3, "close-ti-run3", "close", path, "a1111", origin, 3, "ab" * 32, None, meta or {},
                    kind="embedding", method="ti", token=token)


def test_ti_prompt_uses_the_name_a1111_gives_the_file_and_reads_back(tmp_path):
    """A1111 names an embedding after its file and ignores the stored token: the PNG prompt must
    carry that name. New runs: file close-shot.safetensors, token close-shot (nothing to rewrite);
    older runs (token <close-shot>, file <run>.safetensors) and uploads are rewritten to the file's name."""
    from training import config as tconfig
    from training.ti import embedding_stem

    cfg = tconfig.preset("smoke", method="ti", shot="close", name="close-ti-run3")
    assert cfg.placeholder == "close-shot" and embedding_stem(cfg) == "close-shot"
    assert embedding_stem(cfg.updated(token="<close-shot>")) == "close-ti-run3"    # not a file name: the run's
    taxonomy = get_taxonomy("paper")
    for info, shown in [(_embedding(tmp_path / "close-shot.safetensors", "close-shot"), "close-shot"),
                        (_embedding(tmp_path / "close-ti-run3.safetensors", "<close-shot>"), "close-ti-run3"),
                        (_embedding(tmp_path / "x-1a2b3c4d.safetensors", "<close-shot>", "uploaded",
                                    {"original_name": "film noir.safetensors"}), "film noir")]:
        prompt = f"a high-quality {info.token} picture of a woman"
        text = parameters_text(_req(prompt=prompt, embedding=info.name), prompt, [], 5, model_name="m",
                               model_hash="", lora_hashes={}, template="t", embedding=info)
        params = pngmeta.parse_parameters(text)
        assert params.prompt == f"a high-quality {shown} picture of a woman"
        assert params.ti_hashes == {shown: "abababababab"}
        req, notes = request_from_parameters(text, [], taxonomy, [info])
        assert (req.embedding, req.prompt, notes) == (info.name, prompt, [])
