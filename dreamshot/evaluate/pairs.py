"""What an evaluation generates, and generating it resumably (``OUT/pairs.jsonl``, ``OUT/alpha.jsonl``).

The plan (``OUT/plan.json``) is fixed when a run folder is first used: the held-out frames chosen
(evenly over the shot types, seeded), one **pair** per frame and prompt variant, plus the **α
curve** items. A pair is a base image and a fine-tuned image from the same prompt and seed:

- main (Table 3): prompt ``studio.project.prompt(shot, caption)`` - the training prompt;
- ablation (Table 4): the same with the shot type removed - ``studio.project.prompt`` with the
  project template's ``{shot}`` placeholder deleted (``a high-quality picture of {caption}`` for
  the default template). The fine-tuned image still uses the shot's LoRA; same seed as its main pair.

Seeds: pair i (and its ablation twin) uses ``seed + i``. α curve: the first ``alpha_subset`` main
pairs, re-generated with the LoRA at each α of ``alpha_values`` (α = 0 is the base model).

Resuming: a line whose image files exist is never generated again. Sharding (``accelerate launch``
or any launcher setting RANK / WORLD_SIZE): process r generates items i with i % WORLD_SIZE == r
into ``OUT/shards/*-r.jsonl``; ``merge`` folds shards into the main files.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dreamshot.errors import InvalidInput

PAIRS, ALPHA = "pairs.jsonl", "alpha.jsonl"


@dataclass
class EvalOptions:
    out: str
    frames: str = "test"
    shots: list[str] | None = None
    pairs: int = 1500
    alpha: float = 1.0
    seed: int = 0
    clip_model: str = ""   # empty: the studio's default (embedders.default_clip: demo on the demo model)
    dino_model: str = ""
    judge: str = "auto"
    batch: int = 4
    width: int = 512
    height: int = 512
    steps: int = 16
    cfg: float = 6.0
    sampler: str = "DPM++ SDE Karras"
    ablation: bool = True
    alpha_values: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    alpha_subset: int = 12
    allow_contaminated: bool = False
    min_labels: int = 8
    bootstrap: int = 2000
    a: str = "base"        # generator of side A (dreamshot/generate/generators.py)
    b: str = "lora"        # generator of side B; a LoRA part without @α takes ``alpha``

    def generation_key(self) -> dict:
        """The settings that decide the images: a resumed run must use the same. The generators
        are part of it unless they are the default pair (base vs the shot's LoRA at ``alpha``), so
        run folders made before generators existed resume as before."""
        from dreamshot.generate import generators

        keys = ("frames", "shots", "pairs", "alpha", "seed", "width", "height", "steps", "cfg", "sampler",
                "ablation", "alpha_values", "alpha_subset")
        key = {k: getattr(self, k) for k in keys}
        a, b = generators.parse(self.a, self.alpha), generators.parse(self.b, self.alpha)
        if not (generators.is_default_pair(a, b) and b.alpha == float(self.alpha)):
            key["generators"] = [a.text, b.text]
        return key


@dataclass
class Item:
    id: str
    kind: str              # "pair" or "alpha"
    index: int
    frame: str             # frame key
    frame_path: str
    shot: str
    caption: str
    seed: int
    prompt: str
    ablation: bool = False
    alpha: float = 1.0


MAX_BOOTSTRAP = 100_000
MAX_ALPHA_VALUES = 21


def check_numbers(options: EvalOptions) -> None:
    """The run's numbers that are not generation settings, checked before anything is generated:
    a bad one would otherwise fail the run at its end, after every image was made."""
    from dreamshot.generate.request import ALPHA_RANGE

    if int(options.pairs) < 1:
        raise InvalidInput("The number of pairs must be at least 1.")
    if len(options.alpha_values) > MAX_ALPHA_VALUES:
        raise InvalidInput(f"The α curve takes at most {MAX_ALPHA_VALUES} values (got {len(options.alpha_values)}).")
    bad = [a for a in options.alpha_values if not ALPHA_RANGE[0] <= float(a) <= ALPHA_RANGE[1]]
    if bad:
        raise InvalidInput(f"α curve values must be between {ALPHA_RANGE[0]:g} and {ALPHA_RANGE[1]:g} (got {bad[0]:g}).")
    if not 100 <= int(options.bootstrap) <= MAX_BOOTSTRAP:
        raise InvalidInput(f"Bootstrap resamples must be between 100 and {MAX_BOOTSTRAP} (got {options.bootstrap}).")
    if int(options.min_labels) < 1 or int(options.alpha_subset) < 0:
        raise InvalidInput("--min-labels must be at least 1 and --alpha-subset at least 0.")


def ablation_template(template: str) -> str:
    """The project template without its shot placeholder (whitespace tidied)."""
    return re.sub(r"\s+", " ", template.replace("{shot}", "")).strip()


def choose(frames: list, shots: list[str], n: int, seed: int) -> tuple[list, dict]:
    """Up to n frames spread evenly over shots (seeded shuffle inside each shot)."""
    if n <= 0:
        raise InvalidInput("The number of pairs must be at least 1.")
    rng = np.random.default_rng(seed)
    pools = {s: [f for f in frames if f.shot == s] for s in shots}
    for s in shots:
        order = rng.permutation(len(pools[s]))
        pools[s] = [pools[s][i] for i in order]
    want = {s: n // len(shots) + (1 if i < n % len(shots) else 0) for i, s in enumerate(shots)}
    short = {s: want[s] - len(pools[s]) for s in shots if len(pools[s]) < want[s]}
    chosen = []
    for rnd in range(max(min(want[s], len(pools[s])) for s in shots)):   # never longer than the pools
        chosen += [pools[s][rnd] for s in shots if rnd < min(want[s], len(pools[s]))]
    return chosen, short


def plan_items(studio, options: EvalOptions, frames: list, shots: list[str], *, alpha: float | None = None,
               alpha_curve: bool = True) -> tuple[list[Item], dict]:
    """Pairs (and their ablation twins) plus the α-curve items (when ``alpha_curve``: side B has a
    LoRA). ``alpha``: side B's α recorded with each pair (default ``options.alpha``)."""
    chosen, short = choose(frames, shots, int(options.pairs), int(options.seed))
    if not chosen:
        raise InvalidInput("Zero pairs: no held-out frame with a caption for the shot types "
                           + ", ".join(shots) + ".")
    project = studio.project
    plain = ablation_template(project.template())
    items = []
    for i, fr in enumerate(chosen):
        common = dict(index=i, frame=fr.key, frame_path=str(fr.path), shot=fr.shot, caption=fr.caption,
                      seed=int(options.seed) + i, alpha=float(options.alpha if alpha is None else alpha))
        items.append(Item(f"{i:05d}-shot", "pair", prompt=project.prompt(fr.shot, fr.caption), **common))
        if options.ablation:
            items.append(Item(f"{i:05d}-noshot", "pair", prompt=project.prompt(fr.shot, fr.caption, plain),
                              ablation=True, **common))
    for i, fr in enumerate(chosen[:max(0, int(options.alpha_subset)) if alpha_curve else 0]):
        for a in options.alpha_values:
            items.append(Item(f"{i:05d}-a{float(a):.2f}", "alpha", i, fr.key, str(fr.path), fr.shot, fr.caption,
                              int(options.seed) + i, project.prompt(fr.shot, fr.caption), alpha=float(a)))
    return items, short


def shard() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (accelerate launch, torchrun); (0, 1) alone."""
    try:
        return int(os.environ.get("RANK", 0)), max(1, int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError:
        return 0, 1


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:   # a line cut by an interruption
            continue
    return rows


def finished(out: Path, name: str) -> dict[str, dict]:
    """id -> record for every generated line (main file and shards) whose images exist."""
    out = Path(out)
    records = {}
    files = [out / name] + sorted((out / "shards").glob(name.replace(".jsonl", "-*.jsonl")))
    for path in files:
        for rec in read_jsonl(path):
            images = [rec.get("base_image"), rec.get("tuned_image")] if rec.get("kind") == "pair" else [rec.get("image")]
            if all(img and (out / img).is_file() for img in images):
                records[rec["id"]] = rec
    return records


def merge(out: Path) -> dict[str, int]:
    """Fold shard files into pairs.jsonl / alpha.jsonl (sorted by id, atomic); returns counts."""
    out = Path(out)
    counts = {}
    for name in (PAIRS, ALPHA):
        records = finished(out, name)
        tmp = out / (name + ".tmp")
        tmp.write_text("".join(json.dumps(records[k]) + "\n" for k in sorted(records)), encoding="utf-8")
        os.replace(tmp, out / name)
        counts[name] = len(records)
    return counts


class Progress:
    """done/total with a rate and ETA over the items generated in this session."""

    def __init__(self, total: int, done: int, report=None):
        self.total, self.done, self.report, self.t0, self.new = total, done, report, time.perf_counter(), 0

    def step(self, label: str = "") -> str:
        self.done += 1
        self.new += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.new * (self.total - self.done)
        text = f"{self.done}/{self.total} generated · {elapsed / self.new:.1f}s each · ETA {_clock(eta)}"
        if self.report:
            self.report(self.done / max(self.total, 1), text + (f" · {label}" if label else ""))
        return text


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def record_of(item: Item, **images) -> dict:
    return {**asdict(item), **images}
