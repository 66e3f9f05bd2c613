"""The studio side of ``interop_check.py``: write, with the studio's own code, every file and PNG text
that a user moves to AUTOMATIC1111, ComfyUI or kohya, plus what each should mean (``expected.json``,
``expected_deltas.safetensors``). Runs in the studio's environment; imports no peer code.

Models: an SD 1.5-shaped UNet and CLIP text encoder (SD 1.5's blocks, layers, heads and 12 CLIP
layers, so every LoRA key is SD 1.5's; small widths, random weights) for the LoRA and embedding
files, and the demo model for the PNGs (real generations through the studio's service).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SAMPLE_PROMPTS = {  # odd prompts: quotes, commas, newlines, unicode, ':'
    "quotes": 'she said "cut!", then: the end',
    "newline": "a woman at the window,\nrain outside",
    "unicode": "café — 東京の夜 🎬, ümlaut",
    "colon": "scene 4: take 2, 35mm: wide",
}


def sd15_shaped():
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64, 96, 96), layers_per_block=2, cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32, sample_size=8)
    te_config = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=12, num_attention_heads=4,
                     vocab_size=49408, max_position_embeddings=77, projection_dim=32)
    te = CLIPTextModel(CLIPTextConfig(**te_config))
    return unet, te, te_config


def te_state(te) -> dict:
    """The text encoder's weights by transformers 4's names (``text_model.`` level), as the tools use."""
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v.detach().clone().contiguous()
            for k, v in te.state_dict().items()}


def peft_deltas(model, prefix: str) -> dict:
    """``prefix.<module>`` -> the weight change a PEFT LoRA makes (scale · B·A)."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            path = name if prefix == "unet" or name.startswith("text_model.") else f"text_model.{name}"
            out[f"{prefix}.{path}"] = module.get_delta_weight("default").detach().float().contiguous()
    return out


def make_loras(work: Path, cases: dict) -> dict:
    import copy

    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from training import export, extract
    from training.components import TE_TARGETS
    from training.config import TARGETS

    unet, te, te_config = sd15_shaped()
    (work / "model").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(work / "model" / "unet.safetensors"))
    (work / "model" / "unet.json").write_text(json.dumps(dict(unet.config)))
    save_file(te_state(te), str(work / "model" / "te.safetensors"))
    (work / "model" / "te.json").write_text(json.dumps({k: v for k, v in te.config.to_dict().items()
                                                        if k in te_config or k in ("hidden_act", "eos_token_id",
                                                                                   "layer_norm_eps", "bos_token_id",
                                                                                   "pad_token_id")}))
    lora_dir = work / "Lora"
    lora_dir.mkdir(exist_ok=True)
    deltas, files = {}, {}
    for name, (target, with_te) in cases.items():
        u, t = copy.deepcopy(unet), copy.deepcopy(te)
        torch.manual_seed(len(name))
        u.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=TARGETS[target]))
        if with_te:
            t.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=TE_TARGETS))
        export.save_kohya(lora_dir / f"{name}.safetensors", u, t if with_te else None,
                          metadata={"ss_output_name": name, "ss_network_dim": "4", "ss_network_alpha": "8",
                                    "ss_base_model_version": "sd_v1"})
        part = {**peft_deltas(u, "unet"), **(peft_deltas(t, "text_encoder") if with_te else {})}
        deltas.update({f"{name}/{k}": v for k, v in part.items()})
        files[name] = {"kind": "lora", "modules": len(part)}
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    torch.manual_seed(7)
    names = extract.lora_weight_names(unet)
    tuned = {k: (v + 0.02 * torch.randn_like(v) if k in names else v) for k, v in base.items()}
    for rank in (4, 4096):
        result = extract.extract(base, tuned, names, rank)
        name = f"full-r{rank}"
        extract.save_atomic(result.state, lora_dir / f"{name}.safetensors", {"ss_output_name": name})
        for module in result.ranks:
            key = extract.kohya_name(module)
            up, down = result.state[f"{key}.lora_up.weight"], result.state[f"{key}.lora_down.weight"]
            delta = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)) * (result.alpha / down.shape[0])
            deltas[f"{name}/unet.{module}"] = delta.reshape(base[f"{module}.weight"].shape).contiguous()
            if rank == 4096:
                deltas[f"{name}/true/unet.{module}"] = (tuned[f"{module}.weight"] - base[f"{module}.weight"]).contiguous()
        files[name] = {"kind": "lora", "modules": len(result.ranks), "mean_error": result.summary()["mean_error"]}
    save_file(deltas, str(work / "expected_deltas.safetensors"))
    return files


def make_embeddings(work: Path, width: int, folder: str = "embeddings") -> dict:
    """Textual-inversion files as the TI trainer writes them (name from the token, A1111 format)."""
    import torch

    from training import config as tconfig
    from training.extract import save_atomic
    from training.ti import embedding_stem

    out, made = work / folder, {}
    out.mkdir(parents=True, exist_ok=True)
    for shot, vectors in (("close", 1), ("medium", 3)):
        cfg = tconfig.preset("smoke", method="ti", shot=shot, num_vectors=vectors)
        rows = torch.randn(vectors, width, generator=torch.Generator().manual_seed(vectors)) * 2
        path = save_atomic({"emb_params": rows}, out / f"{embedding_stem(cfg)}.safetensors",
                           {"token": cfg.placeholder, "shot": shot, "method": "ti"})
        made[path.stem] = {"token": cfg.placeholder, "vectors": vectors, "file": str(path.relative_to(work))}
    return made


def _demo_lora(pipe, run_dir: Path, name: str, seed: int):
    import copy

    import torch
    from peft import LoraConfig

    from training import export

    unet = copy.deepcopy(pipe.unet)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_k", "to_v"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    diffusers_file = export.save_diffusers(run_dir, unet)
    kohya = export.save_kohya(run_dir / f"{name}.safetensors", unet, metadata={"ss_output_name": name})
    return diffusers_file, kohya


def make_pngs(work: Path) -> dict:
    """Real generations on the demo model through the studio's service, one PNG per case."""
    from PIL import Image

    from dreamshot.clip_tokenizer import write_clip_tokenizer
    from dreamshot.generate.loras import LoraLibrary, a1111_lora_hash
    from dreamshot.generate.request import ControlRequest, GenerationRequest
    from dreamshot.generate.samplers import SAMPLERS, a1111_form
    from dreamshot.generate.service import service
    from dreamshot.settings import Settings
    from dreamshot.studio import Studio

    studio = Studio.open(Settings(data_dir=work / "studio", model="demo"))
    svc = service(studio)
    lib = LoraLibrary(studio)
    a1111 = work / "a1111-demo"
    (a1111 / "Lora").mkdir(parents=True, exist_ok=True)
    hashes = {}
    for i, name in enumerate(("close-run1", "medium-run2")):
        diffusers_file, kohya = _demo_lora(svc.pipe, work / "studio" / "runs" / f"000{i + 1}-{name}", name, i)
        lib.register(diffusers_file, name=name, shot=name.split("-")[0], origin="trained",
                     meta={"kohya_file": str(kohya)})
        shutil.copy(kohya, a1111 / "Lora")
        hashes[name] = a1111_lora_hash(kohya)
    write_clip_tokenizer(work / "tokenizer")          # SD 1.5's CLIP tokenizer (vocab.json + merges.txt)
    width = int(svc.pipe.text_encoder.get_input_embeddings().weight.shape[-1])
    embeddings = make_embeddings(work, width, "a1111-demo/embeddings")
    for stem, e in embeddings.items():
        lib.register(work / e["file"], name=f"{stem}-ti", shot=stem.split("-")[0], origin="trained",
                     kind="embedding", token=e["token"])
    old = a1111 / "embeddings" / "close-ti-run9.safetensors"   # a TI run from before #22: token <close-shot>
    shutil.copy(work / embeddings["close-shot"]["file"], old)
    lib.register(old, name="close-ti-run9", shot="close", origin="trained", kind="embedding", token="<close-shot>")
    Image.new("RGB", (64, 64), "white").save(work / "ref.png")
    base = dict(prompt="a woman reading a letter", steps=2, width=64, height=64, seed=11, cfg=6.0)
    cases = {f"sampler {s}": dict(sampler=s, shot="close-run1", alpha=0.8) for s in SAMPLERS}
    cases.update({
        "blend": dict(blend={"close-run1": 0.6, "medium-run2": 0.4}),
        "TI 1 vector": dict(embedding="close-shot-ti"),
        "TI 3 vectors + LoRA": dict(embedding="medium-shot-ti", shot="close-run1", alpha=0.5),
        "TI old token": dict(embedding="close-ti-run9"),
        "ControlNet canny": dict(shot="close-run1", alpha=1.0, control=ControlRequest("canny", image=str(work / "ref.png"),
                                                                                     scale=0.7, start=0.1, end=0.9)),
        **{f"prompt {k}": dict(prompt=v, use_template=False, negative_prompt='blurry, "bad", 2: low') for k, v in
           SAMPLE_PROMPTS.items()},
    })
    out, expected = work / "png", {}
    out.mkdir(exist_ok=True)
    for name, extra in cases.items():
        req = GenerationRequest(**{**base, **extra})
        result = svc.generate(req)
        image = result.images[0]
        path = image.save(out / f"{name.replace(' ', '_')}.png")
        mix = [(info.name, w) for info, w in result.loras]
        emb = svc.embeddings.active.get(req.embedding) if req.embedding else None
        expected[name] = {"png": str(path.relative_to(work)), "prompt": result.prompt, "negative": req.negative_prompt,
                          "seed": image.seed, "steps": req.steps, "cfg": req.cfg, "size": [req.width, req.height],
                          "sampler": list(a1111_form(req.sampler)), "studio_sampler": req.sampler,
                          "loras": mix, "lora_hashes": {n: hashes[n] for n, _ in mix},
                          "ti": ({"name": emb.a1111_name, "token": emb.token, "file": str(Path("a1111-demo") / "embeddings" /
                                  f"{emb.a1111_name}.safetensors")} if emb else None),
                          "control": ({"module": "canny", "weight": 0.7, "start": 0.1, "end": 0.9}
                                      if req.control else None)}
    return expected


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    cases = {"lora-all-te": ("all", True), "lora-cross": ("cross", False)}
    files = make_loras(work, cases)
    files.update({f"ti/{k}": v for k, v in make_embeddings(work, 32).items()})
    pngs = make_pngs(work)
    (work / "expected.json").write_text(json.dumps({"files": files, "pngs": pngs}, indent=1, ensure_ascii=False))
