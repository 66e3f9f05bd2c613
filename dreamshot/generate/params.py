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
                    model_hash: str, lora_hashes: dict, template: str, embedding=None) -> str:
    """The A1111 ``parameters`` text of one image (custom keys: Shot, Caption, Prompt template,
    Methods). ``lora_hashes``: LoRA name -> A1111 short hash; ``template``: the project's prompt
    template; ``embedding``: the LoraInfo of the request's textual-inversion embedding (its token is
    in ``prompt``; A1111's ``TI hashes`` names it)."""
    templated = req.use_template and prompt != req.prompt
    used = [info for info, _ in mix] + ([embedding] if embedding is not None else [])
    settings = {
        "Steps": req.steps, "Sampler": req.sampler, "CFG scale": float(req.cfg), "Seed": seed,
        "Size": f"{req.width}x{req.height}", "Model hash": model_hash or None, "Model": model_name,
        "Lora hashes": ", ".join(f"{info.name}: {lora_hashes[info.name]}" for info, _ in mix) or None,
        "TI hashes": f"{_clean(embedding.name)}: {embedding.short_hash}" if embedding is not None else None,
        "Methods": ", ".join(f"{_clean(info.name)}: {info.method}" for info in used) or None,
        "Shot": req.shot,
        "Caption": req.prompt if templated else None,
        "Prompt template": template if templated else None,
        "Version": f"DreamShot {__version__}",
    }
    return pngmeta.format_parameters(prompt, req.negative_prompt, settings, [(i.name, w) for i, w in mix])


def _clean(name: str) -> str:
    """A name as A1111 writes it in a hash list (no ':' or ',')."""
    return str(name).replace(":", "").replace(",", "")


def _restore_embedding(params, embeddings: list, notes: list):
    """The library embedding an image's ``TI hashes`` name (by name, else by hash); a note for each
    one that is missing or left out."""
    wanted = params.ti_hashes
    found = []
    for name, short in wanted.items():
        match = next((e for e in embeddings if e.name == name), None)
        match = match or next((e for e in embeddings if short and e.sha256.startswith(short.lower())), None)
        if match is None:
            notes.append(f"Embedding {name!r} is not in this studio's library; it was left out.")
        else:
            if match.short_hash != short.lower():
                notes.append(f"Embedding {name!r}: the library's file differs from the image's (hash "
                             f"{match.short_hash}, image {short}); using the library's.")
            found.append(match)
    for extra in found[1:]:
        notes.append(f"Embedding {extra.name!r} left out: a generation uses one embedding.")
    return found[0] if found else None


def request_from_parameters(text: str, loras: list, taxonomy, embeddings: list = ()) -> tuple[GenerationRequest,
                                                                                               list[str]]:
    """A request restoring an image's settings from A1111 text, and notes on what could not be
    restored (unknown LoRA or embedding, sampler ...). ``embeddings``: the library's embeddings.
    Raises InvalidInput when the text holds no settings."""
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
    embedding = _restore_embedding(params, list(embeddings), notes)
    if embedding is not None:
        req.embedding = embedding.name
    if caption and (found or embedding is not None) and "Prompt template" in params.settings:
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
