"""The evaluation run (paper sections 4.2-4.3, Tables 3-4), one service per studio.

``service(studio).run(EvalOptions(out=...), progress=fn)``:

1. resolve the two generators (side A ``options.a``, default the base model; side B ``options.b``,
   default the shot's LoRA at α; see ``sides.py``) for each shot type, load CLIP and DINO (a bad
   model id fails before any image is made), read the held-out frames and refuse frames used for
   training (unless ``allow_contaminated``; the results then say so);
2. fix the plan (``OUT/plan.json``; a resumed run must use the same generation settings);
3. generate what is missing through the generation service, a chunk at a time, each image saved
   with its A1111 parameters and a line appended to ``pairs.jsonl`` / ``alpha.jsonl`` (this
   process's shard when started by ``accelerate launch``);
4. score everything generated so far and write ``results.json`` / ``.csv`` / ``.png``; a run that
   was stopped or is short of its plan says ``complete: false`` and is never shown as final.

Models (CLIP, DINO) are loaded once per studio and kept here, keyed by model id or folder.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from dreamshot.errors import InvalidInput
from dreamshot.evaluate import embedders, judge as judges, pairs, report, scoring
from dreamshot.evaluate.frames import contaminated, load_frames
from dreamshot.evaluate.pairs import EvalOptions, Item, Progress
from dreamshot.evaluate.sides import Sides, resolve_sides

JUDGE_FRAMES_PER_CLASS = 200


class EvaluateService:
    def __init__(self, studio):
        self.studio = studio
        self._models: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self.running = threading.Event()

    def close(self) -> None:
        self._models.clear()

    # -- models ---------------------------------------------------------------------------------------
    def clip(self, spec: str | None = None):
        """The CLIP of ``spec`` (a Hub id, a folder or ``demo``; empty: the studio's default), loaded once."""
        return self._model(("clip", spec or embedders.default_clip(self.studio)), embedders.load_clip)

    def dino(self, spec: str | None = None):
        return self._model(("dino", spec or embedders.default_dino(self.studio)), embedders.load_dino)

    def _model(self, key, loader):
        with self._lock:
            if key not in self._models:
                self._models[key] = loader(key[1], self.studio.settings.models_dir, dtype=self.studio.settings.dtype)
            return self._models[key]

    def with_models(self, options: EvalOptions) -> EvalOptions:
        """``options`` with the CLIP and DINO named (left empty: the studio's defaults)."""
        return replace(options, clip_model=(options.clip_model or "").strip() or embedders.default_clip(self.studio),
                       dino_model=(options.dino_model or "").strip() or embedders.default_dino(self.studio))

    # -- the run --------------------------------------------------------------------------------------
    def generation(self):
        from dreamshot.generate.service import service

        return service(self.studio)

    def sides(self, options: EvalOptions) -> Sides:
        """Both generators resolved for the requested shots (default: every shot type both can
        serve); every LoRA they use is checked against the base model (one clear message)."""
        from dreamshot.generate.loras import inspect_lora_file

        gen = self.generation()
        sides = resolve_sides(self.studio, gen.library.list(), options)
        for info in {i.name: i for i in sides.loras()}.values():
            inspect_lora_file(info.path, gen.shapes())
        return sides

    def prepare(self, options: EvalOptions):
        from dreamshot.generate.service import GenerationRequest, check_inputs

        check_inputs(GenerationRequest(prompt="check", width=options.width, height=options.height, steps=options.steps,
                                       cfg=options.cfg, sampler=options.sampler, alpha=options.alpha))
        if not 1 <= int(options.batch) <= 16:
            raise InvalidInput(f"Batch size must be between 1 and 16 (got {options.batch}).")
        pairs.check_numbers(options)
        sides = self.sides(options)
        out = Path(options.out).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        shots = sides.shots
        clip, dino = self.clip(options.clip_model), self.dino(options.dino_model)
        frames, skipped = load_frames(self.studio, options.frames, out, shots)
        dirty = contaminated(self.studio, frames)
        if dirty and not options.allow_contaminated:
            raise InvalidInput(f"{len(dirty)} held-out frame(s) were used for training (e.g. {dirty[0]}): "
                               "evaluating on them measures memorisation. Use the test split or another "
                               "folder, or override (--allow-contaminated), which marks the results.")
        items, short = pairs.plan_items(self.studio, options, frames, shots, alpha=sides.b.alpha,
                                        alpha_curve=sides.b_has_lora)
        self._fix_plan(out, options, items)
        return out, sides, clip, dino, items, {"contaminated_frames": dirty, "short": short, "skipped": skipped}

    def _fix_plan(self, out: Path, options: EvalOptions, items: list[Item]) -> None:
        path = out / "plan.json"
        key = options.generation_key()
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            if old.get("settings") != json.loads(json.dumps(key)):
                before = old.get("settings", {})
                changed = [k for k in {**before, **key} if before.get(k) != json.loads(json.dumps(key.get(k)))]
                raise InvalidInput(f"{out} holds a run with other settings ({', '.join(changed)}): resume it with "
                                   "the same settings, or choose another output folder.")
            return
        path.write_text(json.dumps({"settings": key, "items": [asdict(i) for i in items]}, indent=1), encoding="utf-8")

    def run(self, options: EvalOptions, *, progress=None, job=None, wait_for_shards: float = 3600) -> dict:
        """Generate what is missing, then score; returns the results (also in OUT/results.json)."""
        options = self.with_models(options)
        out, sides, clip, dino, items, notes = self.prepare(options)
        rank, world = pairs.shard()
        done = {**pairs.finished(out, pairs.PAIRS), **pairs.finished(out, pairs.ALPHA)}
        mine = [it for n, it in enumerate(items) if n % world == rank]
        todo = [it for it in mine if it.id not in done]
        bar = Progress(len(mine), len(mine) - len(todo), progress)
        stopped = None
        self.running.set()
        try:
            stopped = self._generate(out, options, sides, todo, bar, job, rank, world)
        except KeyboardInterrupt:
            if rank == 0:      # what exists so far, marked complete: false
                self._finish(out, options, sides, clip, dino, items, notes, "interrupted")
            raise
        finally:
            self.running.clear()
        if world > 1:
            (out / "shards").mkdir(exist_ok=True)
            (out / "shards" / f"done-{rank}").write_text(stopped or "ok")
            if rank != 0:
                return {"shard": rank, "generated": bar.new, "complete": False, "stopped": stopped}
            stopped = stopped or self._wait_for_shards(out, world, wait_for_shards, progress)
            pairs.merge(out)
        return self._finish(out, options, sides, clip, dino, items, notes, stopped)

    def merge_and_score(self, options: EvalOptions) -> dict:
        """Fold shard files into pairs.jsonl / alpha.jsonl and score (``--merge``)."""
        options = self.with_models(options)
        out, sides, clip, dino, items, notes = self.prepare(options)
        pairs.merge(out)
        return self._finish(out, options, sides, clip, dino, items, notes, None)

    def _wait_for_shards(self, out: Path, world: int, timeout: float, progress) -> str | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            missing = [r for r in range(world) if not (out / "shards" / f"done-{r}").is_file()]
            if not missing:
                return None
            if progress:
                progress(1.0, f"waiting for shard(s) {missing}")
            time.sleep(2)
        return f"shards {missing} did not finish within {timeout:.0f}s"

    def _generate(self, out, options, sides: Sides, todo, bar, job, rank, world) -> str | None:
        template = self.studio.project.template()

        def requests(it: Item) -> list:
            if it.kind == "alpha":      # side B at this α
                return [sides.request("b", it, options, template, alpha=it.alpha)]
            return [sides.request("a", it, options, template), sides.request("b", it, options, template)]

        suffix = f"-{rank}" if world > 1 else ""
        step = max(1, int(options.batch))
        for kind, name in (("pair", pairs.PAIRS), ("alpha", pairs.ALPHA)):
            group = [it for it in todo if it.kind == kind]
            target = (out / "shards" / name.replace(".jsonl", f"{suffix}.jsonl")) if suffix else out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            for i in range(0, len(group), step):
                if job is not None and job.cancelled:
                    return "stopped"
                chunk = group[i:i + step]
                made = render(self.generation(), [requests(it) for it in chunk], options.batch, job)
                with open(target, "a", encoding="utf-8") as fh:
                    for it, images in zip(chunk, made):
                        if images is None:
                            continue
                        fh.write(json.dumps(self._save(out, it, images)) + "\n")
                        fh.flush()
                        bar.step(it.id)
                if any(m is None for m in made):
                    return "stopped"
        return None

    @staticmethod
    def _save(out: Path, it: Item, images) -> dict:
        if it.kind == "pair":
            base, tuned = (f"images/{it.id}-base.png", f"images/{it.id}-tuned.png")
            images[0].save(out / base)
            images[1].save(out / tuned)
            return pairs.record_of(it, base_image=base, tuned_image=tuned)
        path = f"alpha/{it.id}.png"
        images[0].save(out / path)
        return pairs.record_of(it, image=path)

    # -- scoring --------------------------------------------------------------------------------------
    def _judge(self, options: EvalOptions, clip, classes: list[str], exclude: set[int]):
        return self.shot_judge(clip, classes, kind=options.judge, min_per_class=options.min_labels,
                               seed=options.seed, exclude=exclude)

    def shot_judge(self, clip, classes: list[str], *, kind: str = "auto", min_per_class: int = judges.MIN_PER_CLASS,
                   seed: int = 0, exclude: set[int] = frozenset()):
        """(judge, class text features): the studio's shot-type judge over ``classes`` with ``clip`` - the
        linear probe on its labeled frames when every class has ``min_per_class`` (else zero-shot; see
        ``judge.build_judge``). Public: the Video feature's automatic transitions use it too."""
        from labeling.captions.sources import frame_image
        from labeling.labels import final_labels

        project = self.studio.project
        texts = clip.text_features(list(judges.shot_texts({c: project.shot_phrase(c) for c in classes}).values()))
        labeled = [(fid, s) for fid, s in sorted(final_labels(self.studio).items()) if s in classes and fid not in exclude]
        rng = np.random.default_rng(seed)
        picked = []
        for c in classes:
            ids = [fid for fid, s in labeled if s == c]
            picked += [(ids[i], c) for i in sorted(rng.permutation(len(ids))[:JUDGE_FRAMES_PER_CLASS])]
        feats, labels = None, []
        if picked:
            images, labels = [], []
            for fid, c in picked:
                try:
                    images.append(frame_image(self.studio, fid, size=224))
                    labels.append(c)
                except (OSError, ValueError):
                    continue
            feats = clip.image_features(images) if images else None
        return judges.build_judge(kind, classes, texts, feats, labels, min_per_class=min_per_class, seed=seed), texts

    def _finish(self, out, options, sides: Sides, clip, dino, items, notes, stopped) -> dict:
        done_pairs = pairs.finished(out, pairs.PAIRS)
        done_alpha = pairs.finished(out, pairs.ALPHA)
        planned_pairs = [it for it in items if it.kind == "pair"]
        planned_alpha = [it for it in items if it.kind == "alpha"]
        got = [done_pairs[it.id] for it in planned_pairs if it.id in done_pairs]
        got_alpha = [done_alpha[it.id] for it in planned_alpha if it.id in done_alpha]
        exclude = {int(k.split("-", 1)[1]) for k in {r["frame"] for r in got} if k.startswith("frame-") and k[6:].isdigit()}
        # Over every shot type of the project, not only the evaluated ones: judging a close-only run
        # among {close} alone would call every image a close shot.
        judge, texts = self._judge(options, clip, self.studio.project.taxonomy().names, exclude)
        scores = scoring.pair_scores(out, got, clip, dino, judge, texts)
        with open(out / "scores.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(s) + "\n" for s in scores)
        complete = not stopped and len(got) == len(planned_pairs) and len(got_alpha) == len(planned_alpha) \
            and not notes["short"]
        results = {
            "complete": complete, "stopped": stopped or (None if complete else "short of the plan"),
            "pairs_planned": len(planned_pairs), "pairs_done": len(got),
            "alpha_planned": len(planned_alpha), "alpha_done": len(got_alpha),
            "alpha": sides.b.alpha, "settings": asdict(options), "generators": sides.report(),
            "models": {"clip": clip.pin, "dino": dino.pin, "base": self.studio.models.status.source},
            # tiny random models (``demo``): the numbers show the workflow, they measure nothing
            "demo_models": [name for name, m in (("CLIP", clip), ("DINO", dino)) if m.is_demo],
            "loras": {s: {"name": r.lora.name, "sha256": r.lora.sha256}
                      for s, r in sides.resolved["b"].items() if r.lora is not None},
            "ablation_prompt": "the project template with {shot} removed: "
                               + pairs.ablation_template(self.studio.project.template()),
            "contamination_override": bool(notes["contaminated_frames"]),
            **notes,
            "tables": scoring.tables(scores, seed=options.seed, samples=options.bootstrap),
            "alpha_curve": scoring.alpha_curve(out, got_alpha, clip, dino, judge, texts) if got_alpha else [],
            "judge": judge.report,
            "finished_at": time.time(),
        }
        report.write(out, results)
        return results

    def results(self, out) -> dict | None:
        return report.read(Path(out).expanduser())

    def samples(self, out, n: int = 6) -> list[tuple[Path, Path, str]]:
        """(base image, fine-tuned image, caption) of the first n main pairs of a run folder."""
        out = Path(out).expanduser()
        recs = [r for r in pairs.finished(out, pairs.PAIRS).values() if not r.get("ablation")]
        return [(out / r["base_image"], out / r["tuned_image"], f"{r['shot']} · {r['caption']}")
                for r in sorted(recs, key=lambda r: r["id"])[:n]]


def render(gen, requests: list[list], batch: int, job) -> list:
    """The one place evaluation asks for images (the generation service's batch API): per entry of
    ``requests`` ([side A, side B] of a pair, or [side B] of an α-curve item) its images in that
    order; None where a stop came first. Side B's requests go first, then side A's (the order the
    former base-vs-LoRA comparison used, so its batches and images stay the same)."""
    flat = [reqs[-1] for reqs in requests] + [reqs[0] for reqs in requests if len(reqs) == 2]
    results = gen.generate_many(flat, job, batch_size=batch, save=False)
    firsts = iter(results[len(requests):])
    out = []
    for reqs, last in zip(requests, results[:len(requests)]):
        group = ([next(firsts)] if len(reqs) == 2 else []) + [last]
        out.append([r.images[0] for r in group] if all(r.images for r in group) else None)
    return out


def service(studio) -> EvaluateService:
    return studio.service(EvaluateService)
