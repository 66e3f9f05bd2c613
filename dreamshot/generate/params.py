"""A request <-> AUTOMATIC1111 ``parameters`` text: what every generated PNG carries, and how a
dropped PNG (ours or A1111's) becomes a request again. ``pngmeta`` knows the text format; this
module knows what our requests put in it."""

from __future__ import annotations

import re

from dreamshot import __version__
from dreamshot.errors import InvalidInput
from dreamshot.generate import pngmeta
from dreamshot.generate.request import GenerationRequest
from dreamshot.generate.samplers import DEFAULT_SAMPLER, a1111_form, from_a1111


def parameters_text(req: GenerationRequest, prompt: str, mix: list, seed: int, *, model_name: str,
                    model_hash: str, lora_hashes: dict, template: str, embedding=None) -> str:
    """The A1111 ``parameters`` text of one image (custom keys: Shot, Caption, Prompt template,
    Methods). ``lora_hashes``: LoRA name -> A1111 short hash of the file A1111 loads (its kohya
    export); ``template``: the project's prompt template; ``embedding``: the LoraInfo of the request's
    textual-inversion embedding. Its token in ``prompt`` is written as AUTOMATIC1111 names the
    embedding (its file's stem, ``a1111_name``; the same word for a token trained since issue 22),
    and ``TI hashes`` names it so, as A1111 writes them."""
    templated = req.use_template and prompt != req.prompt
    used = [info for info, _ in mix] + ([embedding] if embedding is not None else [])
    sampler, schedule = a1111_form(req.sampler)
    if embedding is not None and embedding.token and embedding.token != embedding.a1111_name:
        prompt = prompt.replace(embedding.token, embedding.a1111_name)
    settings = {
        "Steps": req.steps, "Sampler": sampler, "Schedule type": schedule, "CFG scale": float(req.cfg),
        "Seed": seed, "Size": f"{req.width}x{req.height}", "Model hash": model_hash or None, "Model": model_name,
        "Lora hashes": ", ".join(f"{_clean(info.name)}: {lora_hashes[info.name]}" for info, _ in mix) or None,
        "TI hashes": f"{_clean(embedding.a1111_name)}: {embedding.short_hash}" if embedding is not None else None,
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
        match = match or next((e for e in embeddings if _clean(e.a1111_name) == name), None)
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


def request_from_parameters(text: str, loras: list, taxonomy, embeddings: list = (),
                            lora_hashes=None) -> tuple[GenerationRequest, list[str]]:
    """A request restoring an image's settings from A1111 text, and notes on what could not be
    restored (unknown LoRA or embedding, sampler ...). ``embeddings``: the library's embeddings;
    ``lora_hashes(info)``: the A1111 short hashes a library LoRA is known by (a LoRA named
    otherwise in the text is found by its ``Lora hashes`` entry, as A1111 does).
    Raises InvalidInput when the text holds no settings."""
    params = pngmeta.parse_parameters(text)
    if not params.prompt and not params.settings:
        raise InvalidInput("No generation settings found (the image has no 'parameters' text).")
    notes: list[str] = []
    req = GenerationRequest(prompt=params.prompt, negative_prompt=params.negative_prompt, use_template=False)
    known = {i.name: i for i in loras}
    found = []
    for name, weight in params.loras:
        info = known.get(name) or _lora_by_hash(params.lora_hashes.get(name), loras, lora_hashes)
        if info is None:
            notes.append(f"LoRA {name!r} is not in this studio's library; it was left out.")
        else:
            if info.name != name:
                notes.append(f"LoRA {name!r} found by its hash as {info.name!r}.")
            found.append((info.name, weight))
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
        if embedding.token and embedding.a1111_name != embedding.token:   # written as A1111 names it
            req.prompt = re.sub(rf"(?<![\w-]){re.escape(embedding.a1111_name)}(?![\w-])",
                                lambda _: embedding.token, req.prompt)
    if caption and (found or embedding is not None) and "Prompt template" in params.settings:
        req.prompt, req.use_template = caption, True
    for key, attr, conv in (("Steps", "steps", params.get_int), ("CFG scale", "cfg", params.get_float),
                            ("Seed", "seed", params.get_int)):
        value = conv(key)
        if value is not None:
            setattr(req, attr, value)
    if params.size:
        req.width, req.height = params.size
    sampler, note = from_a1111(params.settings.get("Sampler"), params.settings.get("Schedule type"))
    req.sampler = sampler or DEFAULT_SAMPLER
    notes += [note] if note else []
    return req, notes


def _lora_by_hash(short: str | None, loras: list, lora_hashes) -> object | None:
    """The library LoRA whose file has this A1111 short hash: the kohya export's (what A1111 writes
    and the studio writes since issue 22) or the library file's own (what the studio wrote before)."""
    short = (short or "").strip().lower()
    if len(short) < 8 or lora_hashes is None:
        return None
    return next((info for info in loras if short in lora_hashes(info)), None)
