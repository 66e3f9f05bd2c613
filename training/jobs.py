"""The training job runner: a queue of runs (one per shot type), one GPU job at a time, each in its
own process.

- ``submit`` checks every setting *before* anything starts and records queued runs in the
  ``training_runs`` table (the history survives restarts);
- ``tick`` (called every second by a background thread, or directly by tests/CLI) follows the active
  run through its ``status.jsonl``, and starts the next queued run when the GPU is free. Before a
  studio run starts, the studio's labeled set for that shot is exported into the run folder;
- the process is started with an argument list (never a shell string); a Hub token reaches it
  only through its environment;
- ``cancel`` sends SIGTERM: the trainer finishes its step, saves a checkpoint and exits;
  ``resume`` queues the run again with ``--resume latest``;
- a run left "running" by a server that died is found on start-up: adopted if its process still
  runs, otherwise finished from its status file, or marked "interrupted" (resumable);
- a finished run's LoRA is registered in the LoRA library, so the Generate tab sees it at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput, NotFound
from dreamshot.safety import RedactSecrets
from dreamshot.storage import now

from training.config import TrainConfig, preset
from training.trainer import StatusLog, list_checkpoints

log = logging.getLogger("training.jobs")

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "done", "failed", "cancelled", "interrupted")
RESUMABLE = (CANCELLED, INTERRUPTED, FAILED)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
KILL_AFTER_S = 300  # a cancelled process that has not stopped by then is killed


@dataclass
class TrainRequest:
    """What the tab, the API and the CLI ask for: shot types (one run each), a preset, changes."""
    shots: list[str]
    preset: str = "paper"
    overrides: dict = field(default_factory=dict)   # TrainConfig field -> value
    dataset: str | None = None                      # an imagefolder instead of the studio's labeled set
    hub_token: str | None = field(default=None, repr=False)  # kept in memory, passed via HF_TOKEN only


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    shot: str
    status: str
    preset: str | None
    config: dict
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
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config["train"])

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE


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


class _StatusCache:
    """Incremental reader of status.jsonl files (only new bytes are parsed on each poll)."""

    def __init__(self):
        self._files: dict[Path, tuple[int, list]] = {}

    def events(self, path: Path) -> list[dict]:
        import json

        offset, events = self._files.get(path, (0, []))
        try:
            size = path.stat().st_size
        except OSError:
            return events
        if size < offset:
            offset, events = 0, []
        if size > offset:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read(size - offset)
            complete = chunk.rfind(b"\n") + 1
            for line in chunk[:complete].decode("utf-8", "replace").splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
            offset += complete
            self._files[path] = (offset, events)
        return events


class JobRunner:
    def __init__(self, studio, *, python: str = sys.executable, poll_s: float = 1.0):
        self.studio = studio
        self.db = studio.db
        self.python = python
        self.poll_s = poll_s
        self._procs: dict[int, subprocess.Popen] = {}
        self._tokens: dict[int, str] = {}
        self._cancel_at: dict[int, float] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._status = _StatusCache()

    @classmethod
    def for_studio(cls, studio, *, start: bool = True) -> "JobRunner":
        """The studio's one runner (recovered and, with ``start``, polling in the background)."""
        runner = getattr(studio, "_training_runner", None)
        if runner is None:
            runner = cls(studio)
            runner.recover()
            studio._training_runner = runner
        if start:
            runner.start()
        return runner

    # ---- reading the history -----------------------------------------------------------------------
    def _info(self, row) -> RunInfo:
        out = Path(row.output_dir)
        if not out.is_absolute():
            out = Path(self.studio.settings.data_dir).resolve() / out
        return RunInfo(row.id, row.name, row.shot, row.status, row.preset, dict(row.config), out, row.pid,
                       row.step, row.total_steps, row.error, row.result, row.created_at, row.started_at,
                       row.finished_at)

    def get(self, run_id: int) -> RunInfo:
        with self.db.read() as conn:
            row = conn.execute(sa.select(schema.training_runs).where(schema.training_runs.c.id == int(run_id))).first()
        if row is None:
            raise NotFound(f"No training run {run_id}.")
        return self._info(row)

    def list_runs(self, statuses: tuple[str, ...] | None = None) -> list[RunInfo]:
        q = sa.select(schema.training_runs).order_by(schema.training_runs.c.id.desc())
        if statuses:
            q = q.where(schema.training_runs.c.status.in_(statuses))
        with self.db.read() as conn:
            return [self._info(r) for r in conn.execute(q).all()]

    def _update(self, run_id: int, **values) -> None:
        t = schema.training_runs
        with self.db.write() as conn:
            conn.execute(t.update().where(t.c.id == run_id).values(**values))

    # ---- submitting ---------------------------------------------------------------------------------
    def base_model(self) -> str:
        return self.studio.models.status.source

    def check_request(self, request: TrainRequest) -> list[TrainConfig]:
        """One validated TrainConfig per shot; InvalidInput before anything is queued."""
        from dreamshot.models import check_sd1_folder
        from dreamshot.shots import get_taxonomy

        if not request.shots:
            raise InvalidInput("Pick at least one shot type to train.")
        if len(set(request.shots)) != len(request.shots):
            raise InvalidInput("Each shot type once, please.")
        taxonomy = get_taxonomy(self.db.get_setting("taxonomy"))
        source = self.base_model()
        if Path(source).exists():
            check_sd1_folder(Path(source))
        overrides = {k: v for k, v in (request.overrides or {}).items() if v is not None}
        for key in ("shot", "dataset", "output_dir", "base_model", "preset", "shot_phrase"):
            overrides.pop(key, None)
        if request.dataset and not Path(request.dataset).is_dir():
            raise InvalidInput(f"The dataset folder {request.dataset} does not exist.")
        configs = []
        for shot in request.shots:
            cls = taxonomy.get(shot)
            try:
                cfg = preset(request.preset, shot=shot, shot_phrase=cls.prompt, base_model=source, **overrides)
            except TypeError as exc:
                raise InvalidInput(f"Unknown training setting: {exc}") from None
            configs.append(cfg.validate())
        return configs

    def submit(self, request: TrainRequest) -> list[RunInfo]:
        configs = self.check_request(request)
        runs_dir = Path(self.studio.settings.runs_dir)
        created = []
        for cfg in configs:
            t = schema.training_runs
            with self.db.write() as conn:
                run_id = conn.execute(t.insert().values(
                    name=cfg.name or cfg.shot, shot=cfg.shot, status=QUEUED, preset=cfg.preset, config={},
                    output_dir="", step=0, total_steps=cfg.max_steps, created_at=now())).inserted_primary_key[0]
                name = cfg.name or f"{cfg.shot}-run{run_id}"
                out = runs_dir / f"{run_id:04d}-{name}"
                cfg = cfg.updated(name=name, output_dir=str(out.resolve()),
                                  dataset=str(Path(request.dataset).resolve()) if request.dataset else "")
                stored = str(out.resolve().relative_to(Path(self.studio.settings.data_dir).resolve()))
                conn.execute(t.update().where(t.c.id == run_id).values(
                    name=name, output_dir=stored,
                    config={"train": cfg.to_dict(), "source": "folder" if request.dataset else "studio",
                            "resume": False}))
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / "config.json")
            if request.hub_token:
                self._tokens[run_id] = request.hub_token
            created.append(self.get(run_id))
        return created

    # ---- actions ------------------------------------------------------------------------------------
    def cancel(self, run_id: int) -> RunInfo:
        with self._lock:
            run = self.get(run_id)
            if run.status == QUEUED:
                self._update(run.id, status=CANCELLED, finished_at=now(), error="Cancelled before it started.")
            elif run.status == RUNNING:
                self._signal(run, signal.SIGTERM)
                self._cancel_at.setdefault(run.id, time.time())
            else:
                raise InvalidInput(f"Run {run.id} is {run.status}: only queued or running runs can be cancelled.")
            return self.get(run_id)

    def resume(self, run_id: int) -> RunInfo:
        with self._lock:
            run = self.get(run_id)
            if not run.resumable:
                raise InvalidInput(f"Run {run.id} is {run.status}; only cancelled, interrupted or failed runs resume.")
            config = {**run.config, "resume": True}
            self._update(run.id, status=QUEUED, error=None, finished_at=None, pid=None, config=config)
            return self.get(run_id)

    # ---- the loop -------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run_forever, name="training-runner", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run_forever(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except Exception:  # keep polling; the log has the details
                log.exception("training runner tick failed")

    def tick(self) -> None:
        """Follow running runs; start the next queued run when none is running."""
        with self._lock:
            for run in self.list_runs((RUNNING,)):
                self._follow(run)
            if self.list_runs((RUNNING,)):
                return
            queued = self.list_runs((QUEUED,))
            if queued:
                self._launch(queued[-1])  # oldest first

    def recover(self) -> None:
        """On start-up: settle runs a previous server left 'running'."""
        with self._lock:
            for run in self.list_runs((RUNNING,)):
                if not self._alive(run):
                    self._finish(run, exit_code=None)

    # ---- one run's process -------------------------------------------------------------------------------
    def command(self, run: RunInfo) -> list[str]:
        """The argument list (never a shell string). DREAMSHOT_TRAIN_PROCESSES=N (N > 1) trains on
        N GPUs through ``accelerate launch``; the trainer needs no change for it."""
        processes = os.environ.get("DREAMSHOT_TRAIN_PROCESSES", "1").strip() or "1"
        if not processes.isdigit() or not 1 <= int(processes) <= 64:
            raise InvalidInput("DREAMSHOT_TRAIN_PROCESSES must be a number of GPUs between 1 and 64.")
        launcher = [self.python, "-m"]
        if int(processes) > 1:
            launcher += ["accelerate.commands.launch", "--multi_gpu", "--num_processes", processes, "-m"]
        cmd = [*launcher, "training", "--config", str(run.output_dir / "config.json")]
        if run.config.get("resume"):
            cmd += ["--resume", "latest"]
        return cmd

    def _environment(self, run: RunInfo) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("DREAMSHOT_ADMIN_PASSWORD", "DREAMSHOT_DB")}
        env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        env.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep the run's log readable
        token = self._tokens.get(run.id)
        if token:
            env["HF_TOKEN"] = token
        return env

    def _prepare_data(self, run: RunInfo) -> TrainConfig:
        cfg = run.train_config
        if run.config.get("source") != "studio":
            return cfg
        data_dir = run.output_dir / "data"
        if not (data_dir / "metadata.jsonl").is_file():  # a resumed run trains on the same export
            try:
                from labeling.export import export_imagefolder
            except ImportError:
                raise InvalidInput("This studio cannot export its labeled set yet (labeling.export is "
                                   "missing): train on an imagefolder with --dataset instead.") from None
            # The exporter refuses studio folders (runs/ included) as targets: export next to the data
            # folder's other exports, then move the finished export into the run folder.
            staging = Path(self.studio.settings.data_dir) / "exports" / f".run-{run.id}"
            try:
                report = export_imagefolder(self.studio, staging, shots=[cfg.shot], include_extra=False)
                if not report.count:
                    raise InvalidInput(f"The class is empty: no labeled {cfg.shot} image to train on. "
                                       "Label some in the Label tab first.")
                shutil.rmtree(data_dir, ignore_errors=True)
                shutil.move(str(staging), str(data_dir))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._append_log(run, f"Exported {report.count} labeled {cfg.shot} image(s) for training"
                             + (f" ({report.uncaptioned} without a caption)" if report.uncaptioned else "")
                             + (f"; {len(report.skipped)} unreadable frame(s) skipped" if report.skipped else "") + ".")
        cfg = cfg.updated(dataset=str(data_dir))
        cfg.save(run.output_dir / "config.json")
        return cfg

    def _launch(self, run: RunInfo, *, wait: bool = False) -> None:
        try:
            cfg = self._prepare_data(run)
            cmd = self.command(run)
        except Exception as exc:
            from training.trainer import classify_error

            message = classify_error(exc)[1]
            self._append_log(run, f"Run refused before start: {message}")
            self._update(run.id, status=FAILED, error=message, finished_at=now())
            return
        run.output_dir.mkdir(parents=True, exist_ok=True)
        redact = RedactSecrets([self._tokens.get(run.id, "")])
        (run.output_dir / "command.txt").write_text(redact.redact(" ".join(cmd)) + "\n")
        self._append_log(run, f"$ {redact.redact(' '.join(cmd))}")
        StatusLog(run.output_dir / "status.jsonl").write("launch", resume=bool(run.config.get("resume")))
        with open(run.output_dir / "train.log", "ab") as logfile:
            proc = subprocess.Popen(cmd, cwd=str(PROJECT_ROOT), env=self._environment(run), stdin=subprocess.DEVNULL,
                                    stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs[run.id] = proc
        self._update(run.id, status=RUNNING, pid=proc.pid, started_at=run.started_at or now(), error=None,
                     total_steps=cfg.max_steps if cfg.epochs == 0 else run.total_steps,
                     config={**run.config, "train": cfg.to_dict()})

    def _append_log(self, run: RunInfo, line: str) -> None:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        with open(run.output_dir / "train.log", "a", encoding="utf-8") as fh:
            fh.write(line.rstrip() + "\n")

    def _alive(self, run: RunInfo) -> bool:
        proc = self._procs.get(run.id)
        if proc is not None:
            return proc.poll() is None
        if not run.pid:
            return False
        try:  # a process of another server/CLI: alive and really this run's trainer?
            cmdline = Path(f"/proc/{run.pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return str(run.output_dir / "config.json") in cmdline

    def _signal(self, run: RunInfo, sig) -> None:
        if not self._alive(run):
            return
        try:
            os.killpg(run.pid, sig)  # the whole session: accelerate's workers too
        except (ProcessLookupError, PermissionError):
            pass

    def _follow(self, run: RunInfo) -> None:
        events = self._status.events(run.output_dir / "status.jsonl")
        steps = [e for e in events if e.get("event") in ("step", "start", "resume")]
        if steps:
            last = steps[-1]
            step, total = int(last.get("step") or 0), int(last.get("total_steps") or run.total_steps)
            if (step, total) != (run.step, run.total_steps):
                self._update(run.id, step=step, total_steps=total)
        if self._alive(run):
            started = self._cancel_at.get(run.id)
            if started and time.time() - started > KILL_AFTER_S:
                self._signal(run, signal.SIGKILL)
            return
        proc = self._procs.pop(run.id, None)
        self._finish(self.get(run.id), exit_code=proc.returncode if proc else None)

    def _finish(self, run: RunInfo, exit_code: int | None) -> None:
        """Settle a run whose process has ended (or vanished) from its status file."""
        events = self._status.events(run.output_dir / "status.jsonl")
        final = next((e for e in reversed(events) if e.get("event") in ("done", "cancelled", "error")), None)
        last_launch = max((i for i, e in enumerate(events) if e.get("event") == "launch"), default=-1)
        if final is not None and events.index(final) < last_launch:
            final = None  # an ending from before the last (re)launch
        step = max([run.step] + [int(e.get("step") or 0) for e in events if e.get("event") == "step"])
        cancel_requested = self._cancel_at.pop(run.id, None) is not None
        if final is not None and final["event"] == "done":
            self._tokens.pop(run.id, None)
            result = self._register(run, final)
            self._update(run.id, status=DONE, step=step, pid=None, finished_at=now(), result=result, error=None)
        elif final is not None and final["event"] == "cancelled":
            self._update(run.id, status=CANCELLED, step=step, pid=None, finished_at=now(),
                         error=f"Cancelled at step {step}; resume continues from the last checkpoint.")
        elif final is not None:
            self._update(run.id, status=FAILED, step=step, pid=None, finished_at=now(), error=final.get("message"))
        elif cancel_requested:  # stopped before the trainer could take the signal (still loading)
            self._update(run.id, status=CANCELLED, step=step, pid=None, finished_at=now(),
                         error="Cancelled while starting; resume starts it again.")
        elif exit_code is None:
            ckpt = list_checkpoints(run.output_dir)
            where = f"step {ckpt[-1][0]}" if ckpt else "the start (no checkpoint yet)"
            self._update(run.id, status=INTERRUPTED, step=step, pid=None, finished_at=now(),
                         error=f"Interrupted: the server stopped while this run was training. Resume continues from {where}.")
        else:
            self._update(run.id, status=FAILED, step=step, pid=None, finished_at=now(),
                         error=f"The training process ended unexpectedly (exit code {exit_code}); see the log.")

    def _register(self, run: RunInfo, done: dict) -> dict:
        """Put the finished LoRA in the library (the Generate tab reads it on each request)."""
        from dreamshot.generate.loras import LoraLibrary

        files = done.get("files") or {}
        diffusers_file = run.output_dir / files.get("diffusers", "pytorch_lora_weights.safetensors")
        kohya_file = run.output_dir / files["kohya"] if files.get("kohya") else None
        cfg = run.train_config
        result = {"files": {k: str(run.output_dir / v) for k, v in files.items() if k != "hub"},
                  "hub": files.get("hub"), "final_loss": done.get("final_loss"),
                  "dataset_hash": done.get("dataset_hash"), "examples": done.get("examples"), "lora_name": run.name}
        if not diffusers_file.is_file():
            result["error"] = "the LoRA file is missing"
            return result
        LoraLibrary(self.studio).register(
            diffusers_file, name=run.name, shot=run.shot, origin="trained", fmt="diffusers", run_id=run.id,
            base_model=cfg.base_model,
            meta={"kohya_file": str(kohya_file) if kohya_file else None, "rank": cfg.rank, "alpha": cfg.alpha,
                  "target": cfg.target, "steps": done.get("total_steps"), "resolution": cfg.resolution,
                  "dataset_hash": done.get("dataset_hash"), "preset": cfg.preset, "final_loss": done.get("final_loss")})
        return result

    # ---- foreground (CLI) ----------------------------------------------------------------------------------
    def run_foreground(self, run_id: int, echo=print) -> RunInfo:
        """Start ``run_id`` now (when no other run is running) and wait for it, printing progress."""
        with self._lock:
            busy = [r for r in self.list_runs((RUNNING,)) if r.id != run_id]
            if busy:
                raise InvalidInput(f"Run {busy[0].id} ({busy[0].shot}) is training: one GPU job at a time.")
            run = self.get(run_id)
            if run.status == QUEUED:
                self._launch(run)
        shown = 0
        while True:
            run = self.get(run_id)
            if run.status != RUNNING:
                return run
            try:
                time.sleep(self.poll_s)
                with self._lock:
                    self._follow(self.get(run_id))
            except KeyboardInterrupt:
                echo("stopping after this step (a checkpoint is kept)...")
                self.cancel(run_id)
            p = self.progress(run_id)
            if p.step > shown:
                shown = p.step
                loss = f" loss {p.losses[-1][1]:.4f}" if p.losses else ""
                speed = f" {p.it_s:.2f} it/s ETA {p.eta_s:.0f}s" if p.it_s and p.eta_s is not None else ""
                echo(f"[{run.shot}] step {p.step}/{p.total_steps}{loss}{speed}")

    # ---- what the tab shows ----------------------------------------------------------------------------------
    def progress(self, run_id: int, log_lines: int = 30) -> Progress:
        run = self.get(run_id)
        p = Progress(run, step=run.step, total_steps=run.total_steps, message=run.error)
        events = self._status.events(run.output_dir / "status.jsonl")
        phases = {"launch": "starting (loading the model)", "caching": "caching latents and text embeddings",
                  "class_images": "generating class images", "start": "training", "step": "training",
                  "checkpoint": "training", "resume": "resuming", "validation": "training",
                  "done": "finished", "cancelled": "cancelled", "error": "failed"}
        for e in events:
            kind = e.get("event")
            p.phase = phases.get(kind, p.phase)
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


def tail(path: Path, lines: int = 30, max_bytes: int = 64_000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return RedactSecrets().redact("\n".join([l for l in text.splitlines() if l.strip()][-lines:]))
