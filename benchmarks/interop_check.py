"""Do the studio's files and PNG texts work in AUTOMATIC1111, ComfyUI and kohya exactly as here?
(issue 22) Runs *their* loaders and parsers on what the studio writes and prints a table.

    python benchmarks/interop_check.py --peers /work/peers [--python /work/peers/venv/bin/python]

``--peers`` holds checkouts of the peers' public sources: ``a1111`` (AUTOMATIC1111 v1.10.x),
``comfyui``, ``sd-scripts`` (kohya) and ``sd-webui-controlnet``; ``--python`` an environment with
what their modules import (kohya pins transformers 4.54 and A1111 4.30: both name CLIP's layers
``text_model.encoder.layers.N``; ``diffusers``, ``einops``, ``lark``). This script holds no peer code:
the studio side (``interop_make.py``) writes the files with the studio's own code, then this script
runs again under ``--python`` and imports the peers from ``--peers`` (stand-ins for their web apps'
state: ``interop_stubs.py``). Not part of the test suite (it needs the peers).

Checked: kohya ``networks/lora.py create_network_from_weights`` + ``merge_to``; ComfyUI
``comfy.lora.model_lora_keys_unet/clip`` + ``load_lora`` + ``calculate_weight`` (what
``comfy.sd.load_lora_for_models`` runs) and ``comfy.sd1_clip`` ``embedding:NAME`` tokenizing; A1111
``networks.load_network`` + ``calc_updown``, its LoRA hash table, ``EmbeddingDatabase`` (embedding
name and prompt matching), ``parse_generation_parameters`` and ``get_sampler_and_scheduler``;
sd-webui-controlnet ``ControlNetUnit.parse``. Weights are compared with the studio's own change of
each layer (PEFT's for a trained LoRA, ``up·down`` for an extracted one; ``true`` = the fine-tune).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS: list = []


def row(tool: str, item: str, ok: bool, detail: str) -> None:
    ROWS.append((tool, item, "ok" if ok else "FAIL", detail))


def load(work: Path):
    from safetensors.torch import load_file

    return json.loads((work / "expected.json").read_text()), load_file(str(work / "expected_deltas.safetensors"))


def base_models(work: Path):
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {k: v for k, v in json.loads((work / "model" / "unet.json").read_text()).items() if not k.startswith("_")}
    unet = UNet2DConditionModel.from_config(cfg)
    unet.load_state_dict(load_file(str(work / "model" / "unet.safetensors")))
    te = CLIPTextModel(CLIPTextConfig(**json.loads((work / "model" / "te.json").read_text())))
    missing = te.load_state_dict(load_file(str(work / "model" / "te.safetensors")), strict=False).missing_keys
    assert not [k for k in missing if "position_ids" not in k], missing
    return unet.eval().to(torch.float32), te.eval()


def compare(name: str, got: dict, deltas: dict) -> tuple[int, float, float]:
    """(layers the tool changed, max |tool - studio|, max |tool - fine-tune| for full rank)."""
    diff = true = 0.0
    for key, delta in got.items():
        want = deltas[f"{name}/{key}"]
        diff = max(diff, float((delta.reshape(want.shape) - want).abs().max()))
        if f"{name}/true/{key}" in deltas:
            true = max(true, float((delta.reshape(want.shape) - deltas[f"{name}/true/{key}"]).abs().max()))
    return len(got), diff, true


def lora_rows(tool: str, exp: dict, deltas: dict, results: dict) -> None:
    for name, (changed, unplaced, diff, true) in results.items():
        want = exp["files"][name]["modules"]
        extra = f", vs fine-tune {true:.1e}" if true else ""
        row(tool, f"LoRA {name}", changed == want and not unplaced and diff < 1e-5,
            f"{changed}/{want} layers, {len(unplaced)} keys unused, max diff {diff:.1e}{extra}")


# ---- kohya sd-scripts ------------------------------------------------------------------------------------
def check_kohya(work: Path, peers: Path, exp: dict, deltas: dict) -> None:
    import copy

    import torch

    import interop_stubs

    interop_stubs.install_kohya(peers / "sd-scripts")
    from networks import lora as klora

    unet, te = base_models(work)
    results = {}
    for name, info in exp["files"].items():
        if info.get("kind") != "lora":
            continue
        u, t = copy.deepcopy(unet), copy.deepcopy(te)
        before = {**{f"unet.{k}": v.clone() for k, v in u.state_dict().items()},
                  **{f"text_encoder.{k}": v.clone() for k, v in t.state_dict().items()}}
        net, sd = klora.create_network_from_weights(1.0, str(work / "Lora" / f"{name}.safetensors"), None, t, u,
                                                    for_inference=True)
        made = {lora.lora_name for lora in net.text_encoder_loras + net.unet_loras}
        unplaced = sorted({k.split(".")[0] for k in sd} - made)
        net.merge_to(t, u, sd, torch.float32, "cpu")
        after = {**{f"unet.{k}": v for k, v in u.state_dict().items()},
                 **{f"text_encoder.{k}": v for k, v in t.state_dict().items()}}
        got = {k[: -len(".weight")]: after[k] - before[k] for k in before
               if k.endswith(".weight") and not torch.equal(after[k], before[k])}
        changed, diff, true = compare(name, got, deltas)
        results[name] = (changed, unplaced, diff, true)
    lora_rows("kohya sd-scripts", exp, deltas, results)


# ---- ComfyUI -------------------------------------------------------------------------------------------------
def ldm_config(unet) -> dict:
    """ComfyUI's description (``unet_config``) of an SD 1.x UNet, from the diffusers config: what
    ``comfy.model_detection`` reads from an SD 1.5 checkpoint, at this model's widths (its table
    matches SD 1.5 by its 320 channels and 768-wide context, which the small model does not have)."""
    c = unet.config
    depth = [1 if t.startswith("CrossAttn") else 0 for t in c.down_block_types]
    up = [1 if t.startswith("CrossAttn") else 0 for t in c.up_block_types]
    n = c.layers_per_block
    return {"use_checkpoint": False, "image_size": 32, "out_channels": c.out_channels, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "dtype": None, "in_channels": c.in_channels,
            "model_channels": c.block_out_channels[0], "num_res_blocks": [n] * len(depth),
            "transformer_depth": [d for d in depth for _ in range(n)],
            "channel_mult": [ch // c.block_out_channels[0] for ch in c.block_out_channels],
            "transformer_depth_middle": 1, "use_linear_in_transformer": bool(c.use_linear_projection),
            "context_dim": c.cross_attention_dim, "num_heads": c.attention_head_dim,
            "transformer_depth_output": [d for d in reversed(up) for _ in range(n + 1)],   # comfy pops the end
            "use_temporal_attention": False, "use_temporal_resblock": False}


def comfy_models(work: Path, unet, te):
    import torch
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.utils

    dsd = unet.state_dict()
    config = ldm_config(unet)
    to_ldm = comfy.utils.unet_to_diffusers(config)           # diffusers key -> ldm key
    model = comfy.supported_models.SD15(config).get_model({})
    ldm = {to_ldm[k]: v for k, v in dsd.items() if k in to_ldm}
    result = model.diffusion_model.load_state_dict(ldm, strict=False)
    assert not result.missing_keys, result.missing_keys[:5]
    clip = torch.nn.Module()
    clip.clip_l = comfy.sd1_clip.SDClipModel(textmodel_json_config=json.loads((work / "model" / "te.json").read_text()))
    clip.clip_l.transformer.load_state_dict(te.state_dict(), strict=False)
    names = {f"diffusion_model.{v}": f"unet.{k[:-len('.weight')]}" for k, v in to_ldm.items() if k.endswith(".weight")}
    names.update({f"clip_l.transformer.{k}": f"text_encoder.{k[:-len('.weight')]}" for k in te.state_dict()
                  if k.endswith(".weight")})
    return model, clip, to_ldm, names


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def check_comfy(work: Path, peers: Path, exp: dict, deltas: dict) -> None:
    import torch
    from safetensors.torch import load_file

    import interop_stubs

    interop_stubs.install_comfy(peers / "comfyui")
    import comfy.lora
    import comfy.sd1_clip

    unet, te = base_models(work)
    model, clip, _, names = comfy_models(work, unet, te)
    key_map = comfy.lora.model_lora_keys_clip(clip, {})
    key_map = comfy.lora.model_lora_keys_unet(model, key_map)
    weights = {**{f"diffusion_model.{k}": v for k, v in model.diffusion_model.state_dict().items()},
               **{k: v for k, v in clip.state_dict().items()}}
    results = {}
    for name, info in exp["files"].items():
        if info.get("kind") != "lora":
            continue
        log = Collect()
        logging.getLogger().addHandler(log)
        patches = comfy.lora.load_lora(load_file(str(work / "Lora" / f"{name}.safetensors")), key_map)
        logging.getLogger().removeHandler(log)
        unplaced = [m for m in log.messages if "lora key not loaded" in m]
        got = {}
        for key, adapter in patches.items():
            w = weights[key].detach().float().clone()
            new = comfy.lora.calculate_weight([(1.0, adapter, 1.0, None, None)], w.clone(), key)
            got[names[key]] = new - w
        changed, diff, true = compare(name, got, deltas)
        results[name] = (changed, unplaced, diff, true)
    lora_rows(f"ComfyUI {comfy_version(peers)}", exp, deltas, results)
    # textual inversion: the prompt word embedding:NAME, NAME = the file's name
    for stem, info in exp["files"].items():
        if not stem.startswith("ti/"):
            continue
        stem = stem[3:]
        tok = comfy.sd1_clip.SDTokenizer(embedding_directory=str(work / "embeddings"), embedding_size=32,
                                         embedding_key="clip_l")
        pairs = tok.tokenize_with_weights(f"a high-quality embedding:{stem} picture of a woman")[0]
        vecs = [t for t, _ in pairs if isinstance(t, torch.Tensor)]
        rows = load_file(str(work / info["file"]))["emb_params"]
        ok = len(vecs) == info["vectors"] and all(torch.equal(v, r) for v, r in zip(vecs, rows))
        row(f"ComfyUI {comfy_version(peers)}", f"TI {stem} ({info['vectors']} vec)", ok,
            f"embedding:{stem} -> {len(vecs)} vectors, equal to the file's: {ok}")


def comfy_version(peers: Path) -> str:
    text = (peers / "comfyui" / "comfyui_version.py").read_text()
    return re.search(r'"([\d.]+)"', text).group(1)


# ---- AUTOMATIC1111 -------------------------------------------------------------------------------------------
def a1111_model(work: Path, unet, te):
    """What A1111's networks.py walks: ``sd_model.model.diffusion_model`` with ldm's layer names (from
    ComfyUI's diffusers->ldm table, the same names as ldm's checkpoints) and the CLIP text encoder as
    ``cond_stage_model.wrapped.transformer`` (transformers 4)."""
    import torch
    import comfy.utils

    dsd = unet.state_dict()
    to_ldm = comfy.utils.unet_to_diffusers(ldm_config(unet))
    root = torch.nn.Module()
    names = {}
    for dkey, lkey in to_ldm.items():
        if not dkey.endswith(".weight") or dkey not in dsd or dsd[dkey].dim() < 2:
            continue
        w = dsd[dkey]
        layer = (torch.nn.Linear(w.shape[1], w.shape[0]) if w.dim() == 2 else
                 torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], padding=w.shape[2] // 2))
        layer.weight.data.copy_(w)
        parent = root
        parts = ("diffusion_model." + lkey[: -len(".weight")]).split(".")
        for part in parts[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(parts[-1], layer)
        names["_".join(parts)] = f"unet.{dkey[: -len('.weight')]}"
    sd_model = torch.nn.Module()
    sd_model.model = root
    sd_model.cond_stage_model = torch.nn.Module()
    sd_model.cond_stage_model.wrapped = torch.nn.Module()
    sd_model.cond_stage_model.wrapped.transformer = te
    sd_model.is_sdxl = False
    for name, _ in te.named_modules():
        names["transformer_" + name.replace(".", "_")] = f"text_encoder.{name}"
    return sd_model, names


def check_a1111(work: Path, peers: Path, exp: dict, deltas: dict) -> None:
    import interop_stubs

    interop_stubs.install_comfy(peers / "comfyui")       # for the ldm layer names only
    unet, te = base_models(work)
    sd_model, names = a1111_model(work, unet, te)
    shared = interop_stubs.install_a1111(peers / "a1111", work / "Lora", sd_model)
    import networks

    tool = f"A1111 {a1111_version(peers)}"
    results = {}
    for name, info in exp["files"].items():
        if info.get("kind") != "lora":
            continue
        net = networks.load_network(name, networks.available_networks[name])
        placed = {m.network_key.split(".")[0] for m in net.modules.values()}
        from safetensors import safe_open

        with safe_open(str(work / "Lora" / f"{name}.safetensors"), "pt") as fh:
            unplaced = sorted({k.split(".")[0] for k in fh.keys()} - placed)
        got = {}
        for key, module in net.modules.items():
            updown, _ = module.calc_updown(module.sd_module.weight.detach())
            got[names[key]] = updown
        changed, diff, true = compare(name, got, deltas)
        results[name] = (changed, unplaced, diff, true)
    lora_rows(tool, exp, deltas, results)
    from interop_texts import check_a1111_texts

    check_a1111_texts(work, peers, exp, shared, networks, tool, row)


def a1111_version(peers: Path) -> str:
    return re.search(r"## ([\d.]+)", (peers / "a1111" / "CHANGELOG.md").read_text()).group(1)


CHECKS = {"kohya": check_kohya, "comfyui": check_comfy, "a1111": check_a1111}


def run_checks(work: Path, peers: Path, python: str) -> int:
    """Each tool in its own process (kohya's ``networks`` package and A1111's ``networks.py`` share a
    name); the rows come back as JSON lines."""
    for name in CHECKS:
        out = subprocess.run([python, __file__, "--phase", "check", "--only", name, "--work", str(work),
                              "--peers", str(peers)], capture_output=True, text=True)
        got = [json.loads(line[4:]) for line in out.stdout.splitlines() if line.startswith("ROW ")]
        ROWS.extend(tuple(r) for r in got)
        if out.returncode not in (0, 1) or not got:
            row(name, "load", False, (out.stderr.strip().splitlines() or ["no output"])[-1][:300])
    print("\n| tool | item | result | detail |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(str(x) for x in r) + " |")
    failed = sum(r[2] != "ok" for r in ROWS)
    print(f"\n{len(ROWS) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=Path, required=True)
    ap.add_argument("--python", default=None, help="the peers' environment (default: --peers/venv/bin/python)")
    ap.add_argument("--work", type=Path, default=None, help="where the files go (default: a new temporary folder)")
    ap.add_argument("--phase", choices=("all", "check"), default="all", help="check: reuse --work's files")
    ap.add_argument("--only", choices=tuple(CHECKS), default=None)
    args = ap.parse_args(argv)
    python = args.python or str(args.peers / "venv" / "bin" / "python")
    if args.only is None:
        work = args.work or Path(tempfile.mkdtemp(prefix="interop-"))
        if args.phase == "all":
            sys.path[:0] = [str(HERE), str(HERE.parent)]
            import interop_make

            interop_make.main(work)
        return run_checks(work, args.peers, python)
    sys.path.insert(0, str(HERE))
    exp, deltas = load(args.work)
    try:
        CHECKS[args.only](args.work, args.peers, exp, deltas)
    except Exception as exc:  # one tool failing to load is a result, not the end of the check
        logging.exception("%s", args.only)
        row(args.only, "load", False, f"{exc.__class__.__name__}: {exc}"[:300])
    for r in ROWS:
        print("ROW " + json.dumps(r, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
