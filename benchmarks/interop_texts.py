"""PNG texts through AUTOMATIC1111 v1.10's parsers and sd-webui-controlnet's unit parser, for
``interop_check.py`` (run in the peers' environment after ``interop_stubs.install_a1111``). No peer
code: it calls theirs."""

from __future__ import annotations

from pathlib import Path


def check_a1111_texts(work: Path, peers: Path, exp: dict, shared, networks, tool: str, row) -> None:
    """One row per PNG (``row(tool, item, ok, detail)``): every field as A1111 reads it."""
    from transformers import CLIPTokenizer

    from modules import infotext_utils, sd_samplers
    from modules.textual_inversion.textual_inversion import EmbeddingDatabase

    import interop_stubs

    demo = work / "a1111-demo"
    shared.cmd_opts.lora_dir = str(demo / "Lora")
    networks.list_available_networks()
    for entry in networks.available_networks.values():
        entry.read_hash()
    tokenizer = CLIPTokenizer.from_pretrained(str(work / "tokenizer"))
    shared.sd_model.cond_stage_model.tokenize = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    db = EmbeddingDatabase()
    for path in sorted((demo / "embeddings").glob("*.safetensors")):
        db.load_from_file(str(path), path.name)
    interop_stubs.install_controlnet(peers / "sd-webui-controlnet")
    unit_parse = controlnet_parser()
    for case, want in exp["pngs"].items():
        from PIL import Image

        text = Image.open(work / want["png"]).info["parameters"]
        d = infotext_utils.parse_generation_parameters(text, [])
        problems = []
        tags = " ".join(f"<lora:{n}:{w:g}>" for n, w in want["loras"])
        prompt = want["prompt"] if not want["ti"] else want["prompt"].replace(want["ti"]["token"], want["ti"]["name"])
        if d["Prompt"] != f"{prompt} {tags}".strip():
            problems.append(f"prompt {d['Prompt']!r}")
        if d["Negative prompt"] != want["negative"]:
            problems.append(f"negative {d['Negative prompt']!r}")
        for key, value in (("Steps", want["steps"]), ("Seed", want["seed"]), ("Size-1", want["size"][0]),
                           ("Size-2", want["size"][1])):
            if str(d.get(key)) != str(value):
                problems.append(f"{key} {d.get(key)!r}")
        if float(d["CFG scale"]) != want["cfg"]:
            problems.append(f"CFG {d['CFG scale']!r}")
        sampler = sd_samplers.get_sampler_and_scheduler(d.get("Sampler"), d.get("Schedule type"))
        if sampler != sd_samplers.get_sampler_and_scheduler(*want["sampler"]) or \
                effective_schedule(sd_samplers, *sampler) != STUDIO_SCHEDULE[want["studio_sampler"]]:
            problems.append(f"sampler {sampler}")
        for name, short in parse_hashes(d.get("Lora hashes", "")).items():
            found = networks.available_network_hash_lookup.get(short)
            if found is None or found.name != name:
                problems.append(f"Lora hash {name}: {short} not found")
        if set(parse_hashes(d.get("Lora hashes", ""))) != {n for n, _ in want["loras"]}:
            problems.append("Lora hashes incomplete")
        if want["ti"]:
            problems += ti_problems(d, want["ti"], db, tokenizer, work)
        if want["control"]:
            problems += control_problems(d.get("ControlNet 0", ""), want["control"], unit_parse)
        row(tool, f"PNG {case}", not problems, "; ".join(problems) or "every field read back as written")


STUDIO_SCHEDULE = {"DPM++ SDE Karras": "karras", "DPM++ 2M Karras": "karras", "DPM++ 2M": "uniform",
                   "DPM++ 2M SDE Karras": "karras", "Euler a": "model", "Euler": "model", "DDIM": "model",
                   "UniPC": "model"}


def effective_schedule(sd_samplers, sampler: str, schedule: str) -> str:
    """The sigma schedule A1111 runs: its Automatic is the sampler's own default, else the model's."""
    data = sd_samplers.all_samplers_map[sampler]
    if schedule == "Automatic":
        return data.options.get("scheduler") or "model"
    return "model" if schedule == "Uniform" and not data.options.get("scheduler") else schedule.lower()


def parse_hashes(text: str) -> dict:
    return {k.strip(): v.strip() for k, v in (x.split(":", 1) for x in text.split(",") if ":" in x)}


def ti_problems(d: dict, ti: dict, db, tokenizer, work: Path) -> list:
    import hashlib

    import torch
    from safetensors.torch import load_file

    ids = tokenizer(d["Prompt"], add_special_tokens=False)["input_ids"]
    found = {db.find_embedding_at_position(ids, i)[0] for i in range(len(ids))} - {None}
    names = {e.name for e in found}
    out = [] if names == {ti["name"]} else [f"embeddings triggered: {sorted(names)}"]
    emb = db.word_embeddings.get(ti["name"])
    if emb is None or not torch.equal(emb.vec.float(), load_file(str(work / ti["file"]))["emb_params"].float()):
        out.append("vectors differ")
    short = hashlib.sha256((work / ti["file"]).read_bytes()).hexdigest()[:12]
    if parse_hashes(d.get("TI hashes", "")) != {ti["name"]: short}:
        out.append(f"TI hashes {d.get('TI hashes')!r}")
    return out


def controlnet_parser():
    from internal_controlnet.args import ControlNetUnit
    from scripts.supported_preprocessor import Preprocessor
    import scripts.preprocessor  # noqa: F401  (registers the extension's preprocessors)

    ControlNetUnit.cls_match_model = lambda model: True        # as external_code.py sets them
    ControlNetUnit.cls_match_module = lambda module: Preprocessor.get_preprocessor(module) is not None
    ControlNetUnit.cls_get_preprocessor = Preprocessor.get_preprocessor
    return ControlNetUnit.parse


def control_problems(text: str, want: dict, parse) -> list:
    try:
        unit = parse(text)
    except Exception as exc:  # the extension logs and skips a unit it cannot parse
        return [f"ControlNet unit refused: {exc}"]
    got = (unit.module, unit.weight, unit.guidance_start, unit.guidance_end)
    expected = (want["module"], want["weight"], want["start"], want["end"])
    return [] if got == expected else [f"ControlNet unit {got}"]
