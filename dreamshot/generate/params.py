"""A request <-> AUTOMATIC1111 ``parameters`` text: what every generated PNG carries, and how a
dropped PNG (ours or A1111's) becomes a request again. ``pngmeta`` knows the text format; this
module knows what our requests put in it."""

from __future__ import annotations

from dreamshot import __version__
from dreamshot.errors import InvalidInput
from dreamshot.generate import pngmeta
from dreamshot.generate.request import GenerationRequest
from dreamshot.generate.samplers import DEFAULT_SAMPLER, sampler_name


def parameters_text(req: GenerationRequest, prompt: str, mix: list, seed: int, *, model_name: str,
                    model_hash: str, lora_hashes: dict, template: str) -> str:
    """The A1111 ``parameters`` text of one image (custom keys: Shot, Caption, Prompt template).
    ``lora_hashes``: LoRA name -> A1111 short hash; ``template``: the project's prompt template."""
    templated = req.use_template and prompt != req.prompt
    settings = {
        "Steps": req.steps, "Sampler": req.sampler, "CFG scale": float(req.cfg), "Seed": seed,
        "Size": f"{req.width}x{req.height}", "Model hash": model_hash or None, "Model": model_name,
        "Lora hashes": ", ".join(f"{info.name}: {lora_hashes[info.name]}" for info, _ in mix) or None,
        "Shot": req.shot,
        "Caption": req.prompt if templated else None,
        "Prompt template": template if templated else None,
        "Version": f"DreamShot {__version__}",
    }
    return pngmeta.format_parameters(prompt, req.negative_prompt, settings, [(i.name, w) for i, w in mix])


def request_from_parameters(text: str, loras: list, taxonomy) -> tuple[GenerationRequest, list[str]]:
    """A request restoring an image's settings from A1111 text, and notes on what could not be
    restored (unknown LoRA, sampler ...). Raises InvalidInput when the text holds no settings."""
    params = pngmeta.parse_parameters(text)
    if not params.prompt and not params.settings:
        raise InvalidInput("No generation settings found (the image has no 'parameters' text).")
    notes: list[str] = []
    req = GenerationRequest(prompt=params.prompt, negative_prompt=params.negative_prompt, use_template=False)
    known = {i.name: i for i in loras}
    found = [(n, w) for n, w in params.loras if n in known]
    for name, _ in params.loras:
        if name not in known:
            notes.append(f"LoRA {name!r} is not in this studio's library; it was left out.")
    shot = params.settings.get("Shot")
    caption = params.settings.get("Caption")
    if len(found) == 1:
        req.shot, req.alpha = found[0][0], found[0][1]
    elif len(found) > 1:
        req.blend = dict(found)
        req.shot = shot if shot in known or shot in taxonomy.names else None
    if caption and found and "Prompt template" in params.settings:
        req.prompt, req.use_template = caption, True
    for key, attr, conv in (("Steps", "steps", params.get_int), ("CFG scale", "cfg", params.get_float),
                            ("Seed", "seed", params.get_int)):
        value = conv(key)
        if value is not None:
            setattr(req, attr, value)
    if params.size:
        req.width, req.height = params.size
    if params.sampler:
        try:
            req.sampler = sampler_name(params.sampler)
        except InvalidInput:
            notes.append(f"Sampler {params.sampler!r} is not available here; using {DEFAULT_SAMPLER}.")
    return req, notes
