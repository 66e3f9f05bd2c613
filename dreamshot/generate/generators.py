"""Generators to compare: a short text form for "how the images of one side are made".

Evaluate and Survey compare two generators on the same held-out captions and seeds. A generator is
written as ``+``-joined parts (case-insensitive, spaces ignored)::

    base                  the base model alone
    lora@0.8              the shot's newest LoRA trained as a LoRA (library method "lora") at α 0.8
    full@1                the shot's newest LoRA extracted from a full fine-tune (method "full")
    motion@1              the shot's newest LoRA trained on clips (method "motion")
    ti                    the shot's newest textual-inversion embedding (its token stands where the
                          shot words stand in the template)
    ti+lora@0.6           both
    name:my-lora@0.7      a library entry by name, for every shot (a LoRA, or an embedding)
    lora@0.8+canny        any of the above with a ControlNet from the held-out frame (canny|depth)
    base+depth

A LoRA part without ``@α`` takes the caller's default α. ``parse`` checks the text;
``resolve`` finds, for one shot type, the library entries it means and says clearly when there is
none; ``Resolved.request_fields`` gives the ``GenerationRequest`` fields (``shot``, ``alpha``,
``embedding``, ``control``). ``label`` names a generator in tables ("TI + LoRA α=0.6").
Pure logic: no torch, no gradio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dreamshot.errors import InvalidInput
from dreamshot.generate.request import ALPHA_RANGE, ControlRequest

LORA_METHODS = ("lora", "full", "motion")
CONTROLS = ("canny", "depth")        # made from the held-out frame (a scribble needs a drawing)
METHOD_LABELS = {"lora": "LoRA", "full": "Full→LoRA", "motion": "Motion LoRA"}
HOW_TO_TRAIN = {"lora": "train one in the Train tab (--method lora) or upload one",
                "full": "train one with --method full (a full fine-tune, extracted to a LoRA)",
                "motion": "train one on clips (Train tab, motion)",
                "ti": "train one with --method ti"}
WHAT = {"lora": "LoRA", "full": "full-fine-tune LoRA", "motion": "motion LoRA", "ti": "textual-inversion embedding"}
DEFAULT_A, DEFAULT_B = "base", "lora"
_PART = re.compile(r"^(?P<word>[A-Za-z]+)(?::(?P<name>[A-Za-z0-9][\w.\-]{0,63}))?(?:@(?P<alpha>[-+]?\d*\.?\d+))?$")


@dataclass(frozen=True)
class GeneratorSpec:
    """A parsed generator. ``method``: the shot's LoRA of that library method (or None);
    ``name``: a library entry by name (LoRA or embedding, decided against the library);
    ``alpha``: the LoRA strength; ``ti``: the shot's embedding; ``control``: canny|depth|None."""
    method: str | None = None
    name: str | None = None
    alpha: float = 1.0
    ti: bool = False
    control: str | None = None

    @property
    def is_base(self) -> bool:
        return not (self.method or self.name or self.ti)

    @property
    def text(self) -> str:
        """The canonical text form (what runs and surveys store)."""
        parts = ["ti"] if self.ti else []
        if self.name:
            parts.append(f"name:{self.name}" + ("" if self.method else f"@{self.alpha:g}"))
        if self.method:
            parts.append(f"{self.method}@{self.alpha:g}")
        parts = parts or ["base"]
        if self.control:
            parts.append(self.control)
        return "+".join(parts)

    def with_alpha(self, alpha: float) -> "GeneratorSpec":
        return GeneratorSpec(self.method, self.name, float(alpha), self.ti, self.control)

    def __str__(self) -> str:
        return self.text


def _alpha(text: str | None, default: float, part: str) -> float:
    if text is None:
        return float(default)
    value = float(text)
    if not ALPHA_RANGE[0] <= value <= ALPHA_RANGE[1]:
        raise InvalidInput(f"Generator part {part!r}: α must be between {ALPHA_RANGE[0]:g} and {ALPHA_RANGE[1]:g}.")
    return value


def parse(text: str, default_alpha: float = 1.0) -> GeneratorSpec:
    """``GeneratorSpec`` of a text such as ``ti+lora@0.6+canny``; InvalidInput naming the bad part."""
    raw = re.sub(r"\s+", "", str(text or ""))
    if not raw:
        raise InvalidInput("A generator is empty: write e.g. base, lora@0.8, full@1, ti, ti+lora@0.6, "
                           "name:<library name>@0.8, optionally +canny or +depth.")
    fields: dict = {"alpha": float(default_alpha)}
    base = False
    for part in raw.split("+"):
        match = _PART.match(part)
        word = match.group("word").lower() if match else None
        if match is None or word not in ("base", "ti", "name", *LORA_METHODS, *CONTROLS) \
                or (word == "name") != bool(match.group("name")):
            raise InvalidInput(f"Unknown generator part {part!r} in {raw!r}: use base, lora@α, full@α, motion@α, "
                               "ti, name:<library name>@α, canny or depth, joined with '+'.")
        if match.group("alpha") is not None and word not in (*LORA_METHODS, "name"):
            raise InvalidInput(f"Generator part {part!r}: only a LoRA part takes @α.")
        if match.group("alpha") is not None and "@" in fields:
            raise InvalidInput(f"Generator {raw!r} has two @α: a generator has one LoRA, with one α.")
        key = {"base": "base", "ti": "ti", "name": "name", **{c: "control" for c in CONTROLS},
               **{m: "method" for m in LORA_METHODS}}[word]
        if key in fields or (key == "base" and base):
            raise InvalidInput(f"Generator {raw!r} has more than one {key if key != 'method' else 'LoRA'} part.")
        if key == "base":
            base = True
        elif key == "ti":
            fields["ti"] = True
        elif key == "control":
            fields["control"] = word
        else:
            fields[key] = match.group("name") if key == "name" else word
            if match.group("alpha") is not None:
                fields["alpha"] = _alpha(match.group("alpha"), default_alpha, part)
                fields["@"] = True
    fields.pop("@", None)
    if "method" not in fields and "name" not in fields:
        fields["alpha"] = 1.0       # no LoRA part: no α
    spec = GeneratorSpec(**fields)
    if base and not spec.is_base:
        raise InvalidInput(f"Generator {raw!r}: 'base' is the model without a LoRA or embedding; "
                           "leave it out when you add one.")
    return spec


@dataclass(frozen=True)
class Resolved:
    """A generator for one shot type: the library entries it uses (``LoraInfo`` or None)."""
    spec: GeneratorSpec
    shot: str
    lora: object = None
    embedding: object = None

    @property
    def alpha(self) -> float:
        return self.spec.alpha if self.lora is not None else 1.0

    @property
    def token(self) -> str | None:
        return self.embedding.token if self.embedding is not None else None

    def request_fields(self, frame=None) -> dict:
        """``GenerationRequest`` fields: ``shot`` (LoRA name), ``alpha``, ``embedding``, ``control``
        (from ``frame``, a path or PIL image of the held-out frame)."""
        control = None
        if self.spec.control:
            if frame is None:
                raise InvalidInput(f"The generator {self.spec.text!r} needs a reference frame for its "
                                   f"{self.spec.control} ControlNet: take the prompts from held-out frames.")
            control = ControlRequest(self.spec.control, image=frame)
        return {"shot": self.lora.name if self.lora is not None else None, "alpha": self.alpha,
                "embedding": self.embedding.name if self.embedding is not None else None, "control": control}

    def record(self) -> dict:
        """What to store with a result: names, file hashes, α, token, control kind."""
        out = {"spec": self.spec.text, "lora": None, "alpha": self.alpha, "embedding": None, "token": self.token,
               "control": self.spec.control}
        if self.lora is not None:
            out.update(lora=self.lora.name, lora_sha256=self.lora.sha256, lora_method=self.lora.method)
        if self.embedding is not None:
            out.update(embedding=self.embedding.name, embedding_sha256=self.embedding.sha256)
        return out


def _newest(entries: list, shot: str, kind: str, method: str | None):
    found = [e for e in entries if e.kind == kind and e.shot == shot and (method is None or e.method == method)]
    return found[-1] if found else None       # the library lists oldest first


def _missing(what: str, shot: str) -> InvalidInput:
    return InvalidInput(f"No {WHAT[what]} for the shot type {shot!r} yet: {HOW_TO_TRAIN[what]}.")


def resolve(spec: GeneratorSpec, shot: str, entries: list) -> Resolved:
    """The library entries ``spec`` means for ``shot`` (``entries``: ``LoraLibrary.list()``, oldest
    first); InvalidInput when the shot has none of that method or a name is unknown."""
    lora = embedding = None
    if spec.name:
        named = [e for e in entries if e.name == spec.name]
        if not named:
            names = sorted(e.name for e in entries)
            raise InvalidInput(f"No library entry called {spec.name!r}. Available: "
                               + (", ".join(names) if names else "none yet") + ".")
        if named[-1].kind == "embedding":
            embedding = named[-1]
        else:
            lora = named[-1]
    if spec.method:
        if lora is not None:
            raise InvalidInput(f"Generator {spec.text!r} names two LoRAs; a generator uses one.")
        lora = _newest(entries, shot, "lora", spec.method)
        if lora is None:
            raise _missing(spec.method, shot)
    if spec.ti:
        if embedding is not None:
            raise InvalidInput(f"Generator {spec.text!r} names two embeddings; a generator uses one.")
        embedding = _newest(entries, shot, "embedding", None)
        if embedding is None:
            raise _missing("ti", shot)
    return Resolved(spec, shot, lora, embedding)


def _rank(resolved: list) -> int | None:
    ranks = {(r.lora.meta or {}).get("extract_rank") or (r.lora.meta or {}).get("rank")
             for r in resolved if r.lora is not None}
    return ranks.pop() if len(ranks) == 1 and None not in ranks else None


def label(spec: GeneratorSpec, resolved: list | None = None) -> str:
    """A short name for tables: "Base", "LoRA α=0.8", "Full→LoRA r64 α=1", "TI + LoRA α=0.6",
    "Base +canny". ``resolved`` (the generator's ``Resolved`` per shot) adds the full LoRA's rank."""
    resolved = resolved or []
    parts = ["TI"] if spec.ti else []
    if spec.name:
        is_embedding = any(r.embedding is not None and r.embedding.name == spec.name for r in resolved)
        parts.append(spec.name if is_embedding or spec.method else f"{spec.name} α={spec.alpha:g}")
    if spec.method:
        rank = _rank(resolved) if spec.method == "full" else None
        parts.append(f"{METHOD_LABELS[spec.method]}{f' r{rank}' if rank else ''} α={spec.alpha:g}")
    text = " + ".join(parts) or "Base"
    return f"{text} +{spec.control}" if spec.control else text


def choices(entries: list, alpha: float | None = None) -> list[str]:
    """Generator texts the library can serve (for a dropdown): base, each LoRA method with a shot
    entry, ti, ti+lora, named entries, and ControlNet variants of base and the LoRA. Without
    ``alpha`` the LoRA parts carry no @α (they take the form's α)."""
    at = "" if alpha is None else f"@{alpha:g}"
    shot_loras = [m for m in LORA_METHODS if any(e.kind == "lora" and e.shot and e.method == m for e in entries)]
    has_ti = any(e.kind == "embedding" and e.shot for e in entries)
    out = ["base", *(f"{m}{at}" for m in shot_loras)]
    if has_ti:
        out += ["ti", *(f"ti+{m}{at}" for m in shot_loras)]
    out += [f"{first}+{c}" for first in ["base", *(f"lora{at}" for m in shot_loras if m == "lora")] for c in CONTROLS]
    out += [f"name:{e.name}" + (at if e.kind == "lora" else "") for e in entries]
    return list(dict.fromkeys(out))


def check_pair(a: GeneratorSpec, b: GeneratorSpec) -> None:
    """Two generators worth comparing: not the same one twice."""
    if a.text == b.text:
        raise InvalidInput(f"Generators A and B are the same ({a.text}): choose two different ones "
                           "(e.g. --a base --b lora@0.8, or --a lora@0.8 --b ti).")


def is_default_pair(a: GeneratorSpec, b: GeneratorSpec) -> bool:
    """Base vs the shot's LoRA, no ControlNet: what Evaluate and Survey compared before generators."""
    return a.text == "base" and b.method == "lora" and not (b.name or b.ti or b.control)
