"""Training runs as records: the ``training_runs`` table (the history) and each run's folder.

A run's settings live in ONE place, ``<run>/config.json``, written once by ``RunStore.create`` when
the run is created; the trainer process reads it (``python -m training --config``), and so does
everything else (``RunInfo.train_config``). The row points to the folder (``output_dir``) and keeps
only what the history table shows (``config``: a summary, written in the same call) and the run's
state (status, pid, step, error, result), which the job runner owns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import NotFound
from dreamshot.storage import now

from training.config import TrainConfig
from training.status import StatusReader, tail

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = (RUNNING, QUEUED)
RESUMABLE = (CANCELLED, INTERRUPTED, FAILED)
CONFIG_FILE = "config.json"
SUMMARY_FIELDS = ("rank", "alpha", "learning_rate", "resolution", "batch_size")
# what the history shows of each method besides SUMMARY_FIELDS (TrainConfig attributes)
METHOD_FIELDS = {"ti": ("placeholder", "num_vectors", "initializer"),
                 "full": ("optimizer", "extract_rank", "freeze_non_lora")}
T = schema.training_runs


def summary(cfg: TrainConfig, source: str) -> dict:
    """What the history shows of a run's settings (the whole config is in config.json)."""
    return {"source": source, "method": cfg.method, **{name: getattr(cfg, name) for name in SUMMARY_FIELDS},
            **{name: getattr(cfg, name) for name in METHOD_FIELDS.get(cfg.method, ())}}


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    shot: str
    status: str
    preset: str | None
    summary: dict
    output_dir: Path
    pid: int | None
    step: int
    total_steps: int
    error: str | None
    result: dict | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def config_path(self) -> Path:
        return self.output_dir / CONFIG_FILE

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.load(self.config_path)

    @property
    def source(self) -> str:
        """``studio`` (the labeled set, exported when the run starts) or ``folder`` (an imagefolder)."""
        return self.summary.get("source", "folder")

    @property
    def method(self) -> str:
        return self.summary.get("method") or "lora"  # rows from before the methods were LoRA runs

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _summary_of(stored: dict) -> dict:
    if "train" in stored:  # rows written before config.json was the one source kept the whole config
        return {"source": stored.get("source", "folder"), **{k: stored["train"].get(k) for k in SUMMARY_FIELDS}}
    return dict(stored)


class RunStore:
    def __init__(self, studio):
        self.studio = studio
        self.db = studio.db
        self.data_dir = Path(studio.settings.data_dir).resolve()

    def _info(self, row) -> RunInfo:
        out = Path(row.output_dir)
        if not out.is_absolute():
            out = self.data_dir / out
        return RunInfo(row.id, row.name, row.shot, row.status, row.preset, _summary_of(row.config or {}), out,
                       row.pid, row.step, row.total_steps, row.error, row.result, row.created_at, row.started_at,
                       row.finished_at)

    def get(self, run_id: int) -> RunInfo:
        with self.db.read() as conn:
            row = conn.execute(sa.select(T).where(T.c.id == int(run_id))).first()
        if row is None:
            raise NotFound(f"No training run {run_id}.")
        return self._info(row)

    def list(self, statuses: tuple[str, ...] | None = None) -> list[RunInfo]:
        """Newest first."""
        q = sa.select(T).order_by(T.c.id.desc())
        if statuses:
            q = q.where(T.c.status.in_(statuses))
        with self.db.read() as conn:
            return [self._info(r) for r in conn.execute(q).all()]

    def update(self, run_id: int, **values) -> None:
        with self.db.write() as conn:
            conn.execute(T.update().where(T.c.id == run_id).values(**values))

    def create(self, cfg: TrainConfig, *, dataset: str | None) -> RunInfo:
        """Record a queued run and write its config.json, the one copy of its settings.

        ``dataset``: an imagefolder, or None for the studio's labeled set (exported into
        ``<run>/data`` when the run starts)."""
        source = "folder" if dataset else "studio"
        runs_dir = Path(self.studio.settings.runs_dir).resolve()
        with self.db.write() as conn:
            run_id = conn.execute(T.insert().values(
                name=cfg.name or cfg.shot, shot=cfg.shot, status=QUEUED, preset=cfg.preset,
                config=summary(cfg, source), output_dir="", step=0, total_steps=cfg.max_steps,
                created_at=now())).inserted_primary_key[0]
            name = cfg.name or (f"{cfg.shot}-run{run_id}" if cfg.method == "lora" else
                                f"{cfg.shot}-{cfg.method}-run{run_id}")
            out = runs_dir / f"{run_id:04d}-{name}"
            cfg = cfg.updated(name=name, output_dir=str(out),
                              dataset=str(Path(dataset).resolve()) if dataset else str(out / "data"))
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / CONFIG_FILE)
            conn.execute(T.update().where(T.c.id == run_id).values(
                name=name, output_dir=str(out.relative_to(self.data_dir))))
        return self.get(run_id)


@dataclass
class Progress:
    """What the tab shows of one run."""
    run: RunInfo
    step: int = 0
    total_steps: int = 0
    it_s: float | None = None
    eta_s: float | None = None
    losses: list = field(default_factory=list)       # [(step, loss)]
    images: list = field(default_factory=list)       # absolute paths of the latest validation images
    image_step: int | None = None
    log_tail: str = ""
    message: str | None = None                       # error/warning for the user
    phase: str = ""                                  # starting, caching, training, validating, ...


PHASES = {"launch": "starting (loading the model)", "caching": "caching latents and text embeddings",
          "class_images": "generating class images", "start": "training", "step": "training",
          "checkpoint": "training", "resume": "resuming", "validation": "training",
          "done": "finished", "cancelled": "cancelled", "error": "failed"}


def progress(run: RunInfo, reader: StatusReader, log_lines: int = 30) -> Progress:
    """A run's progress from its status file and log."""
    p = Progress(run, step=run.step, total_steps=run.total_steps, message=run.error)
    for e in reader.events(run.output_dir / "status.jsonl"):
        kind = e.get("event")
        p.phase = PHASES.get(kind, p.phase)
        if kind == "step":
            p.losses.append((int(e["step"]), float(e["loss"])))
            p.step, p.total_steps = int(e["step"]), int(e.get("total_steps") or p.total_steps)
            p.it_s, p.eta_s = e.get("it_s"), e.get("eta_s")
        elif kind == "validation":
            p.images = [str(run.output_dir / name) for name in e.get("images", [])]
            p.image_step = e.get("step")
        elif kind == "warning" and not p.message:
            p.message = e.get("message")
    if p.losses:  # a resumed run repeats steps after its checkpoint: keep the latest value per step
        p.losses = sorted(dict(p.losses).items())
    p.log_tail = tail(run.output_dir / "train.log", log_lines)
    return p
