"""Building a survey: choose the prompts, plan the pool of pairs, generate them (resumable).

A pair is one prompt and seed generated twice with the paper's settings (Table 2: DPM++ SDE
Karras, 16 steps, CFG 6, 512x512): by generator A and by generator B (``SurveySpec.a`` / ``.b``,
see ``dreamshot/generate/generators.py``; by default the base model and the shot's LoRA at α).
Side A is stored as the pair's ``base_*`` columns and side B as its ``lora_*`` columns (answers
say ``base`` / ``lora`` for them); what each side is, per pair, lives in ``survey_pairs.meta
["generators"]`` and the survey's generators and labels in ``surveys.settings["generators"]``.
Pairs of surveys built before generators existed have no such entry: A = base, B = ``lora_name``.
Pairs are written as *pending* rows first (prompt, shot, seed fixed), then each is generated and
marked *ready* in its own transaction, so a crash loses at most the batch being generated and
building again resumes where it stopped. Pairs are generated in batches (``compare_many``).

Prompts come from a pasted list (``shot | caption`` lines keep their shot; plain lines get the
shot types in turn) or from the captions of held-out frames (split ``test``). A frame that was
used for training (split ``train`` or in a training run's exported dataset) is refused by name.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.storage import now

P = schema.survey_pairs
MAX_POOL = 2000
PAIRS_PER_BATCH = 4     # pairs per compare_many call (its batches of images inside)
MAX_SEED = 2**32 - 1 - 8
DEFAULT_INTRO = (
    "Thank you for taking part. You will see pairs of pictures made from the same prompt, each "
    "with a shot type (close, medium, long ...) and a prompt. For each pair, answer three questions "
    "with A, B or N (neither / the same). There are no right answers: go with your first impression. "
    "Your answers are anonymous: a random code, not your name, is stored with them."
)


@dataclass
class SurveySpec:
    """Everything ``survey build`` needs; the generation defaults are the paper's (Table 2)."""
    name: str
    shots: list[str]
    pairs: int = 72                       # pool size
    per_participant: int = 36
    prompts: list[str] | None = None      # pasted lines; None: captions of held-out frames
    frames: list[int] | None = None       # explicit held-out frame ids (checked)
    alpha: float = 1.0
    intro: str = DEFAULT_INTRO
    seed: int | None = None               # reproducible seeds and prompt order
    steps: int = 16
    cfg: float = 6.0
    width: int = 512
    height: int = 512
    sampler: str = "DPM++ SDE Karras"
    notes: list[str] = field(default_factory=list)
    a: str = "base"                       # generator A (a LoRA part without @α takes ``alpha``)
    b: str = "lora"                       # generator B

    def settings(self) -> dict:
        return {"shots": self.shots, "alpha": self.alpha, "steps": self.steps, "cfg": self.cfg,
                "width": self.width, "height": self.height, "sampler": self.sampler,
                "pool": self.pairs, "source": "prompts" if self.prompts is not None else "held-out frames"}

    def generators(self) -> tuple:
        from dreamshot.generate import generators

        return generators.parse(self.a or "base", self.alpha), generators.parse(self.b or "lora", self.alpha)


def check_generation(spec: SurveySpec) -> None:
    """The pairs' generation settings (steps, CFG, size, sampler, α), checked before anything is
    written: a survey planned with settings no pair can be made with could never be finished."""
    from dreamshot.generate.request import GenerationRequest, check_inputs

    check_inputs(GenerationRequest(prompt="survey", steps=spec.steps, cfg=spec.cfg, width=spec.width,
                                   height=spec.height, sampler=spec.sampler, alpha=spec.alpha))


def differences(spec: SurveySpec, info) -> list[str]:
    """What ``spec`` asks for that the existing survey ``info`` was not built with ("steps 16 (it has 2)")."""
    stored = dict(info.settings or {}, per_participant=info.per_participant)
    gens = stored.get("generators") or {}
    wanted = dict(spec.settings(), per_participant=spec.per_participant,
                  shots=list(dict.fromkeys(s.strip() for s in spec.shots if s.strip())))
    if gens:
        a, b = spec.generators()
        wanted.update(a=a.text, b=b.text)
        stored.update(a=gens["a"]["spec"], b=gens["b"]["spec"])
    out = []
    for key, value in wanted.items():
        have = stored.get(key)
        if key in stored and have != value and not (isinstance(value, (int, float)) and isinstance(have, (int, float))
                                                    and float(have) == float(value)):
            show = (lambda v: ",".join(v) if isinstance(v, list) else v)
            out.append(f"{key.replace('_', ' ')} {show(value)} (it has {show(have)})")
    return out


BASELINE_LABELS = {"base": "baseline", "lora": "fine-tuned"}


def side_labels(settings: dict | None) -> dict:
    """{"base": name of side A, "lora": name of side B}: the generators' labels, or the paper's
    "baseline" / "fine-tuned" for base-vs-LoRA surveys (and those built before generators)."""
    gens = (settings or {}).get("generators") or {}
    if not gens or gens.get("default"):
        return dict(BASELINE_LABELS)
    return {"base": gens["a"]["label"], "lora": gens["b"]["label"]}


def resolve_generators(studio, spec: SurveySpec, shots: list[str]) -> dict:
    """{"a"|"b": {shot: Resolved}} for the survey's shots; a clear error when a shot type lacks
    what a generator needs, or a ControlNet generator has no held-out frames to start from."""
    from dreamshot.generate import generators
    from dreamshot.generate.loras import inspect_lora_file
    from dreamshot.generate.service import service

    generators.check_pair(*spec.generators())
    gen = service(studio)
    entries = gen.library.list()
    out = {}
    for side, spec_side in zip(("a", "b"), spec.generators()):
        if spec_side.control and spec.prompts:
            raise InvalidInput(f"Generator {spec_side.text!r} takes its {spec_side.control} ControlNet image from "
                               "a held-out frame: take the prompts from held-out frames, not a pasted list.")
        out[side] = {shot: generators.resolve(spec_side, shot, entries) for shot in shots}
    for info in {r.lora.name: r.lora for side in out.values() for r in side.values() if r.lora}.values():
        inspect_lora_file(info.path, gen.shapes())      # a LoRA for another base model: one clear message
    return out


def generators_settings(spec: SurveySpec, sides: dict) -> dict:
    from dreamshot.generate import generators

    a, b = spec.generators()
    return {"a": {"spec": a.text, "label": generators.label(a, list(sides["a"].values()))},
            "b": {"spec": b.text, "label": generators.label(b, list(sides["b"].values()))},
            "default": generators.is_default_pair(a, b)}


def parse_prompt_lines(text: str) -> list[str]:
    """Non-empty, non-comment lines of a pasted list or prompts file."""
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _split_line(line: str, shots: list[str]) -> tuple[str | None, str]:
    if "|" in line:
        head, caption = line.split("|", 1)
        if head.strip() in shots:
            return head.strip(), caption.strip()
    return None, line


def plan_from_prompts(lines: list[str], shots: list[str], n: int) -> list[tuple[str, str, None]]:
    """(shot, caption, None) x n, balanced across ``shots``: plain lines take the shot types in
    turn (and other shot types when they come round again); ``shot | caption`` lines keep theirs."""
    if not lines:
        raise InvalidInput("The prompt list is empty: paste one caption per line (or 'shot | caption').")
    parsed = [_split_line(line, shots) for line in lines]
    out, cycle = [], math.lcm(len(parsed), len(shots))
    for i in range(n):
        line = (i + i // cycle) % len(parsed)   # every caption meets every shot type in turn
        fixed, caption = parsed[line]
        shot = fixed or shots[i % len(shots)]
        if not caption:
            raise InvalidInput(f"Prompt line {line + 1} has no caption.")
        out.append((shot, caption, None))
    return out


def training_frames(studio) -> set[int]:
    """Frames a LoRA was trained on: the train split and every frame in a run's exported dataset."""
    f, runs = schema.frames, schema.training_runs
    with studio.db.read() as conn:
        used = set(conn.execute(sa.select(f.c.id).where(f.c.split == "train")).scalars())
        folders = conn.execute(sa.select(runs.c.output_dir)).scalars().all()
    data_dir = Path(studio.settings.data_dir)
    for folder in folders:
        meta = Path(folder) if Path(folder).is_absolute() else data_dir / folder
        meta = meta / "data" / "metadata.jsonl"
        if meta.is_file():
            for line in meta.read_text(encoding="utf-8").splitlines():
                try:
                    fid = json.loads(line).get("frame_id")
                except ValueError:
                    continue
                if fid is not None:
                    used.add(int(fid))
    return used


def _captions(studio, ids: list[int]) -> dict[int, str]:
    c = schema.captions
    with studio.db.read() as conn:
        rows = conn.execute(sa.select(c.c.frame_id, c.c.caption, c.c.caption_original)
                            .where(c.c.frame_id.in_(ids))).all() if ids else []
    return {r.frame_id: (r.caption or r.caption_original or "").strip() for r in rows
            if (r.caption or r.caption_original or "").strip()}


def check_frames(studio, ids: list[int]) -> None:
    """Refuse frames that are not held out, naming them."""
    f = schema.frames
    with studio.db.read() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(f.c.id, f.c.split, f.c.status).where(f.c.id.in_(ids)))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise InvalidInput(f"Unknown frame id(s): {', '.join(map(str, missing))}.")
    used = training_frames(studio)
    trained = [i for i in ids if i in used]
    if trained:
        raise InvalidInput("Frame(s) used for training cannot be survey prompts (the LoRA has seen them): "
                           + ", ".join(map(str, trained)) + ".")
    not_test = [i for i in ids if rows[i].split != "test" or rows[i].status != "ok"]
    if not_test:
        raise InvalidInput("Only usable held-out frames (split 'test') can be survey prompts; not: "
                           + ", ".join(map(str, not_test)) + ".")


def plan_from_frames(studio, shots: list[str], n: int, frames: list[int] | None,
                     rng: random.Random) -> list[tuple[str, str, int]]:
    """(shot, caption, frame id) x n from captioned held-out frames, balanced across ``shots``:
    frames labeled with a chosen shot type keep it, unlabeled ones fill the short shot types."""
    from labeling.labels import final_labels

    f = schema.frames
    if frames:
        check_frames(studio, frames)
        ids = list(dict.fromkeys(frames))
    else:
        with studio.db.read() as conn:
            ids = conn.execute(sa.select(f.c.id).where(f.c.split == "test", f.c.status == "ok")
                               .order_by(f.c.id)).scalars().all()
        used = training_frames(studio)
        ids = [i for i in ids if i not in used]
    captions = _captions(studio, ids)
    uncaptioned = [i for i in ids if i not in captions]
    if frames and uncaptioned:
        raise InvalidInput("Frame(s) without a caption (caption them in the Captions tab first): "
                           + ", ".join(map(str, uncaptioned)) + ".")
    labels = final_labels(studio, split="test")
    by_shot = {s: [i for i in ids if i in captions and labels.get(i) == s] for s in shots}
    spare = [i for i in ids if i in captions and labels.get(i) not in shots]
    for group in (*by_shot.values(), spare):
        rng.shuffle(group)
    if not any(by_shot.values()) and not spare:
        raise InvalidInput("No captioned held-out frame to take prompts from: caption the test split in "
                           "the Captions tab, or paste a list of prompts.")
    out, used_by_shot = [], {s: [] for s in shots}
    for i in range(n):
        shot = shots[i % len(shots)]
        if by_shot[shot]:
            fid = by_shot[shot].pop()
        elif spare:
            fid = spare.pop()
        else:  # fewer frames than pairs: reuse this shot type's frames (another seed), else any
            reuse = list(used_by_shot[shot] or [f for _, _, f in out])
            fid = reuse[i % len(reuse)]
        used_by_shot[shot].append(fid)
        out.append((shot, captions[fid], fid))
    return out


def side_record(resolved, shot: str, caption: str, template: str) -> dict:
    """What one side of a pair is (``Resolved.record``) and its prompt: the pair's prompt, with an
    embedding's token where the shot words stand."""
    from dreamshot.shots import training_prompt

    rec = resolved.record()
    if resolved.token:
        rec["prompt"] = training_prompt(resolved.token, caption, template)
    return rec


def insert_pairs(conn, survey_id: int, plan: list, spec: SurveySpec, sides: dict, project, rng) -> None:
    template = project.template()
    taxonomy = project.taxonomy()
    for position, (shot, caption, frame_id) in enumerate(plan):
        b = sides["b"][shot]
        conn.execute(P.insert().values(
            survey_id=survey_id, position=position, shot=shot, caption=caption,
            prompt=project.prompt(shot, caption, template), frame_id=frame_id,
            seed=rng.randint(0, MAX_SEED), alpha=b.alpha, lora_name=b.lora.name if b.lora is not None else None,
            status="pending", created_at=now(),
            meta={"taxonomy": taxonomy.name, "template": template,
                  "generators": {side: side_record(sides[side][shot], shot, caption, template)
                                 for side in ("a", "b")}}))


def pair_requests(studio, survey_id: int, row, settings: dict) -> tuple:
    """(request of side A, request of side B) of a stored pair, same prompt and seed."""
    from dreamshot.generate.request import ControlRequest, GenerationRequest

    common = dict(use_template=False, seed=int(row.seed), steps=settings["steps"], cfg=settings["cfg"],
                  width=settings["width"], height=settings["height"], sampler=settings["sampler"], num_images=1)
    gens = (row.meta or {}).get("generators")
    if not gens:    # a pair planned before generators: base vs its LoRA at its α
        return (GenerationRequest(prompt=row.prompt, **common),
                GenerationRequest(prompt=row.prompt, shot=row.lora_name, alpha=row.alpha, **common))
    out = []
    for side in ("a", "b"):
        rec = gens[side]
        control = ControlRequest(rec["control"], image=frame_file(studio, survey_id, row.frame_id)) \
            if rec.get("control") else None
        out.append(GenerationRequest(prompt=rec.get("prompt") or row.prompt, shot=rec.get("lora"),
                                     alpha=rec.get("alpha", 1.0), embedding=rec.get("embedding"), control=control,
                                     **common))
    return tuple(out)


def render(gen, sides: list[tuple], job) -> list[tuple]:
    """[(result of side A, result of side B)] for [(request A, request B)]. Side A the plain base
    model and B without a ControlNet: the generation service's base comparison (``compare_many``);
    otherwise both sides as they are, B's requests first (``generate_many``)."""
    if all(not (a.shot or a.embedding or a.control or a.blend) and b.control is None for a, b in sides):
        return gen.compare_many([b for _, b in sides], job, save=False)
    made = gen.generate_many([b for _, b in sides] + [a for a, _ in sides], job, save=False)
    return list(zip(made[len(sides):], made[:len(sides)]))


def frame_file(studio, survey_id: int, frame_id: int | None) -> str:
    """The held-out frame's crop (a ControlNet's reference), saved once beside the survey's images."""
    from labeling.captions.sources import frame_image

    from dreamshot.survey.images import survey_dir

    if frame_id is None:
        raise InvalidInput("A ControlNet generator needs the pair's held-out frame; this pair has none.")
    path = survey_dir(studio, survey_id) / "frames" / f"frame-{int(frame_id)}.png"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        frame_image(studio, int(frame_id)).save(path)
    return str(path)


def generate_pending(studio, survey_id: int, progress=None, job=None) -> int:
    """Generate every pending pair of a survey; returns how many were generated now."""
    from dreamshot.generate.service import service

    from dreamshot.survey.images import save_pair_images

    with studio.db.read() as conn:
        settings = conn.execute(sa.select(schema.surveys.c.settings)
                                .where(schema.surveys.c.id == survey_id)).scalar_one()
        pending = conn.execute(sa.select(P).where(P.c.survey_id == survey_id, P.c.status == "pending")
                               .order_by(P.c.position)).all()
    gen = service(studio)
    done = 0
    for first in range(0, len(pending), PAIRS_PER_BATCH):
        chunk = pending[first:first + PAIRS_PER_BATCH]
        if progress:
            progress(done / len(pending), f"pairs {done + 1}-{done + len(chunk)} of {len(pending)}")
        # The prompts were fixed when the survey was planned: no template is applied again.
        sides = [pair_requests(studio, survey_id, row, settings) for row in chunk]
        for row, (base, lora) in zip(chunk, render(gen, sides, job)):
            if not base.images or not lora.images:     # stopped: the rest stays pending
                return done
            paths = save_pair_images(studio, survey_id, row.position, base.images[0], lora.images[0])
            with studio.db.write() as conn:   # one pair at a time: a crash loses at most this batch
                conn.execute(P.update().where(P.c.id == row.id, P.c.status == "pending").values(
                    status="ready", base_image=paths[0], lora_image=paths[1],
                    base_parameters=base.images[0].parameters, lora_parameters=lora.images[0].parameters))
            done += 1
    if progress:
        progress(1.0, f"{done} pair(s) generated")
    return done
