"""The training job runner: a queue of runs (one per shot type), one GPU job at a time, each in its
own process. One runner per studio: ``service(studio)`` (``studio.service(TrainingRunner)``).

- ``submit`` checks every setting *before* anything starts and creates queued runs (``runs.py``:
  the history row + the run's one ``config.json``);
- ``start()`` settles runs a previous server left running, then polls in a background thread (the
  app calls it at start-up, so queued runs continue after a restart without anyone opening a page);
  ``tick`` (each poll, or directly from tests/CLI) follows the active run through its
  ``status.jsonl`` and starts the next queued run when the GPU is free. Before a studio run starts,
  the studio's labeled set for that shot is exported into ``<run>/data``;
- the process is started with an argument list (never a shell string); a Hub token reaches it
  only through its environment (``process.py``);
- ``cancel`` sends SIGTERM: the trainer finishes its step, saves a checkpoint and exits;
  ``resume`` queues the run again; it continues from its latest checkpoint;
- a run left "running" by a server that died is adopted if its process still runs, otherwise
  finished from its status file, or marked "interrupted" (resumable);
- a finished run's LoRA (or textual-inversion embedding) is registered in the library, so the
  Generate tab sees it at once.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.safety import RedactSecrets
from dreamshot.storage import now

from training import process, runs
from training.checkpoints import list_checkpoints
from training.components import precision_for
from training.config import TrainConfig, preset, setting_name
from training.dataset_check import refuse_uncaptioned
from training.runs import CANCELLED, DONE, FAILED, INTERRUPTED, QUEUED, RESUMABLE, RUNNING, RunInfo  # noqa: F401
from training.status import StatusLog, StatusReader, classify_error, last_ending

log = logging.getLogger("training.jobs")

KILL_AFTER_S = 300  # a cancelled process that has not stopped by then is killed
FIXED_FIELDS = ("shot", "dataset", "output_dir", "base_model", "preset", "shot_phrase", "prompt_template")


@dataclass
class TrainRequest:
    """What the tab, the API and the CLI ask for: shot types (one run each), a preset, changes."""
    shots: list[str]
    preset: str = "paper"
    overrides: dict = field(default_factory=dict)   # TrainConfig field -> value
    dataset: str | None = None                      # an imagefolder instead of the studio's labeled set
    hub_token: str | None = field(default=None, repr=False)  # kept in memory, passed via HF_TOKEN only
    names: dict | None = None   # setting -> the name messages use (the tab's labels); None: CLI flags


def _comparable(cfg: TrainConfig) -> dict:
    """The settings that decide what a run trains (not where it writes or what it is called)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("name", "output_dir", "dataset")}


def service(studio) -> "TrainingRunner":
    """The studio's one runner (not started: call ``start()``)."""
    return studio.service(TrainingRunner)


class TrainingRunner:
    def __init__(self, studio, *, python: str = sys.executable, poll_s: float = 1.0):
        self.studio = studio
        self.runs = runs.RunStore(studio)
        self.python = python
        self.poll_s = poll_s
        self._procs: dict[int, subprocess.Popen] = {}
        self._tokens: dict[int, str] = {}
        self._cancel_at: dict[int, float] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._recovered = False
        self.status = StatusReader()

    # ---- the history ----------------------------------------------------------------------------------
    def get(self, run_id: int) -> RunInfo:
        return self.runs.get(run_id)

    def list_runs(self, statuses: tuple[str, ...] | None = None) -> list[RunInfo]:
        return self.runs.list(statuses)

    def progress(self, run_id: int, log_lines: int = 30) -> runs.Progress:
        return runs.progress(self.get(run_id), self.status, log_lines)

    # ---- submitting ---------------------------------------------------------------------------------
    def check_request(self, request: TrainRequest) -> list[TrainConfig]:
        """One validated TrainConfig per shot; InvalidInput before anything is queued."""
        from dreamshot.models import check_sd1_folder

        if not request.shots:
            raise InvalidInput("Pick at least one shot type to train.")
        if len(set(request.shots)) != len(request.shots):
            raise InvalidInput("Each shot type once, please.")
        project = self.studio.project
        taxonomy, template = project.taxonomy(), project.template()
        source = self.studio.models.status.source
        if Path(source).exists():
            check_sd1_folder(Path(source))
        overrides = {k: v for k, v in (request.overrides or {}).items() if v is not None and k not in FIXED_FIELDS}
        if overrides.get("token") and len(request.shots) > 1:
            token = setting_name("token", request.names)
            raise InvalidInput(f"A {token} names one shot type's token: train one shot type at a time, or leave "
                               "the token empty (each shot gets its own, SHOT-shot).")
        if request.dataset and not Path(request.dataset).is_dir():
            raise InvalidInput(f"The dataset folder {request.dataset} does not exist.")
        configs = []
        for shot in request.shots:
            taxonomy.get(shot)  # InvalidInput for a shot type outside the project's taxonomy
            try:
                cfg = preset(request.preset, shot=shot, shot_phrase=project.shot_phrase(shot, taxonomy),
                             prompt_template=template, base_model=source, **overrides)
            except TypeError as exc:
                raise InvalidInput(f"Unknown training setting: {exc}") from None
            if cfg.mixed_precision == "auto":   # the studio's --dtype decides (training.components.precision_for)
                cfg = cfg.updated(mixed_precision=precision_for("auto", self.studio.settings.dtype))
            configs.append(cfg.validate(request.names))
        if not request.dataset:  # the studio's labeled set: no frame may train without its caption
            refuse_uncaptioned(self.studio, request.shots, method=configs[0].method)
        for cfg in configs:
            self._refuse_duplicate(cfg, request.dataset)
        return configs

    def _refuse_duplicate(self, cfg: TrainConfig, dataset: str | None) -> None:
        """A run identical to one already queued or running (a second press of Start) is refused:
        it would train the same thing twice. A run that differs in any setting is queued."""
        source = str(Path(dataset).resolve()) if dataset else None
        mine = _comparable(cfg)
        for run in self.list_runs(runs.ACTIVE):
            try:
                other = run.train_config
            except InvalidInput:  # a run folder someone removed: nothing to compare with
                continue
            same_source = (run.source == "folder" and source == other.dataset) or (run.source == "studio" and not source)
            if run.shot == cfg.shot and same_source and _comparable(other) == mine:
                raise InvalidInput(f"Run #{run.id} ({run.name}) is already {run.status} for the {cfg.shot} shot with "
                                   "the same settings. Wait for it, cancel it, or change a setting to queue a variant.")

    def submit(self, request: TrainRequest) -> list[RunInfo]:
        created = []
        for cfg in self.check_request(request):
            run = self.runs.create(cfg, dataset=request.dataset)
            if request.hub_token:
                self._tokens[run.id] = request.hub_token
            created.append(run)
        return created

    # ---- actions ------------------------------------------------------------------------------------
    def cancel(self, run_id: int) -> RunInfo:
        """Stop a queued or running run; a run that is already over is returned as it is (nothing
        to do is not an error: a second click, or a run that ended meanwhile)."""
        with self._lock:
            run = self.get(run_id)
            if run.status == QUEUED:
                self.runs.update(run.id, status=CANCELLED, finished_at=now(), error="Cancelled before it started.")
            elif run.status == RUNNING:
                self._signal(run, signal.SIGTERM)
                self._cancel_at.setdefault(run.id, time.time())
            return self.get(run_id)

    def resume(self, run_id: int) -> RunInfo:
        with self._lock:
            run = self.get(run_id)
            if not run.resumable:
                raise InvalidInput(f"Run {run.id} is {run.status}; only cancelled, interrupted or failed runs resume.")
            self.runs.update(run.id, status=QUEUED, error=None, finished_at=None, pid=None)
            return self.get(run_id)

    # ---- the background loop --------------------------------------------------------------------------------
    def start(self) -> "TrainingRunner":
        """Settle what a previous server left running (once), then poll in the background."""
        with self._lock:
            if not self._recovered:
                self.recover()
                self._recovered = True
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run_forever, name="training-runner", daemon=True)
                self._thread.start()
        return self

    def close(self) -> None:
        """Stop polling. Training processes keep running; the next start adopts them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

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
        """The argument list; a run with a checkpoint continues from its latest one."""
        return process.command(self.python, run.config_path, resume=bool(list_checkpoints(run.output_dir)))

    def _prepare_data(self, run: RunInfo) -> None:
        """A studio run trains on the labeled set of its shot, exported into ``<run>/data`` once."""
        data_dir = run.output_dir / "data"
        if run.source != "studio" or (data_dir / "metadata.jsonl").is_file():  # a resumed run: same export
            return
        if run.train_config.method == "motion":  # the labeled shots' clips (labeling.clips, training/motion.py)
            from training.motion import export_run_clips

            self._append_log(run, export_run_clips(self.studio, run.shot, data_dir, run.id))
            return
        from labeling.export import export_imagefolder

        # The exporter refuses studio folders (runs/ included) as targets: export next to the data
        # folder's other exports, then move the finished export into the run folder.
        staging = Path(self.studio.settings.data_dir) / "exports" / f".run-{run.id}"
        try:
            report = export_imagefolder(self.studio, staging, shots=[run.shot], include_extra=False)
            if not report.count:
                raise InvalidInput(f"The class is empty: no labeled {run.shot} image to train on. "
                                   "Label some in the Label tab first.")
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.move(str(staging), str(data_dir))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._append_log(run, f"Exported {report.count} labeled {run.shot} image(s) for training"
                         + (f" ({report.uncaptioned} without a caption)" if report.uncaptioned else "")
                         + (f"; {len(report.skipped)} unreadable frame(s) skipped" if report.skipped else "") + ".")

    def _launch(self, run: RunInfo) -> None:
        try:
            self._prepare_data(run)
            cmd = self.command(run)
        except Exception as exc:
            message = classify_error(exc)[1]
            self._append_log(run, f"Run refused before start: {message}")
            self.runs.update(run.id, status=FAILED, error=message, finished_at=now())
            return
        redact = RedactSecrets([self._tokens.get(run.id, "")])
        (run.output_dir / "command.txt").write_text(redact.redact(" ".join(cmd)) + "\n")
        self._append_log(run, f"$ {redact.redact(' '.join(cmd))}")
        StatusLog(run.output_dir / "status.jsonl").write("launch", resume="--resume" in cmd)
        with open(run.output_dir / "train.log", "ab") as logfile:
            proc = subprocess.Popen(cmd, cwd=str(process.PROJECT_ROOT), stdin=subprocess.DEVNULL,
                                    env=process.environment(self._tokens.get(run.id)),
                                    stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs[run.id] = proc
        self.runs.update(run.id, status=RUNNING, pid=proc.pid, started_at=run.started_at or now(), error=None)

    def _append_log(self, run: RunInfo, line: str) -> None:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        with open(run.output_dir / "train.log", "a", encoding="utf-8") as fh:
            fh.write(line.rstrip() + "\n")

    def _alive(self, run: RunInfo) -> bool:
        proc = self._procs.get(run.id)
        if proc is not None:
            return proc.poll() is None
        return process.alive(run.pid, run.config_path)

    def _signal(self, run: RunInfo, sig) -> None:
        if self._alive(run):
            process.signal_group(run.pid, sig)

    def _follow(self, run: RunInfo) -> None:
        events = self.status.events(run.output_dir / "status.jsonl")
        steps = [e for e in events if e.get("event") in ("step", "start", "resume")]
        if steps:
            last = steps[-1]
            step, total = int(last.get("step") or 0), int(last.get("total_steps") or run.total_steps)
            if (step, total) != (run.step, run.total_steps):
                self.runs.update(run.id, step=step, total_steps=total)
        if self._alive(run):
            started = self._cancel_at.get(run.id)
            if started and time.time() - started > KILL_AFTER_S:
                self._signal(run, signal.SIGKILL)
            return
        proc = self._procs.pop(run.id, None)
        self._finish(self.get(run.id), exit_code=proc.returncode if proc else None)

    def _finish(self, run: RunInfo, exit_code: int | None) -> None:
        """Settle a run whose process has ended (or vanished) from its status file."""
        events = self.status.events(run.output_dir / "status.jsonl")
        final = last_ending(events)
        step = max([run.step] + [int(e.get("step") or 0) for e in events if e.get("event") == "step"])
        cancel_requested = self._cancel_at.pop(run.id, None) is not None
        ended = dict(step=step, pid=None, finished_at=now())
        if final is not None and final["event"] == "done":
            self._tokens.pop(run.id, None)
            self.runs.update(run.id, status=DONE, result=self._register(run, final), error=None, **ended)
        elif final is not None and final["event"] == "cancelled":
            self.runs.update(run.id, status=CANCELLED, **ended,
                             error=f"Cancelled at step {step}; resume continues from the last checkpoint.")
        elif final is not None:
            self.runs.update(run.id, status=FAILED, error=final.get("message"), **ended)
        elif cancel_requested:  # stopped before the trainer could take the signal (still loading)
            self.runs.update(run.id, status=CANCELLED, error="Cancelled while starting; resume starts it again.",
                             **ended)
        elif exit_code is None:
            ckpt = list_checkpoints(run.output_dir)
            where = f"step {ckpt[-1][0]}" if ckpt else "the start (no checkpoint yet)"
            self.runs.update(run.id, status=INTERRUPTED, **ended, error="Interrupted: the server stopped while "
                             f"this run was training. Resume continues from {where}.")
        else:
            self.runs.update(run.id, status=FAILED, **ended,
                             error=f"The training process ended unexpectedly (exit code {exit_code}); see the log.")

    def _register(self, run: RunInfo, done: dict) -> dict:
        """Put the finished LoRA or embedding in the library (the Generate tab reads it on each request):
        a LoRA run's diffusers file, a textual inversion's embedding (kind "embedding", its token), a
        full fine-tune's extracted LoRA (method "full", with its extraction error)."""
        from dreamshot.generate.loras import LoraLibrary

        files = done.get("files") or {}
        cfg = run.train_config
        result = {"files": {k: str(run.output_dir / v) for k, v in files.items() if k != "hub"},
                  "hub": files.get("hub"), "final_loss": done.get("final_loss"), "method": cfg.method,
                  "dataset_hash": done.get("dataset_hash"), "examples": done.get("examples"), "lora_name": run.name}
        default = {"ti": "embedding", "full": "kohya"}.get(cfg.method, "diffusers")
        main_file = run.output_dir / files.get(default, "pytorch_lora_weights.safetensors")
        if not main_file.is_file():
            result["error"] = f"the {'embedding' if cfg.method == 'ti' else 'LoRA'} file is missing"
            return result
        meta = {"steps": done.get("total_steps"), "resolution": cfg.resolution, "preset": cfg.preset,
                "dataset_hash": done.get("dataset_hash"), "final_loss": done.get("final_loss")}
        entry = dict(name=run.name, shot=run.shot, origin="trained", run_id=run.id, base_model=cfg.base_model,
                     method=cfg.method)
        if cfg.method == "ti":
            result["token"] = cfg.placeholder
            meta.update(token=cfg.placeholder, num_vectors=cfg.num_vectors, init_word=cfg.initializer)
            entry.update(kind="embedding", fmt="a1111", token=cfg.placeholder)
        elif cfg.method == "full":
            extraction = done.get("extraction") or {}
            result["extraction"] = extraction
            meta.update(rank=extraction.get("alpha"), extract_rank=cfg.extract_rank,
                        mean_error=extraction.get("mean_error"), max_error=extraction.get("max_error"),
                        delta_file=result["files"].get("delta"), report_file=result["files"].get("extraction"),
                        optimizer=cfg.optimizer, freeze_non_lora=cfg.freeze_non_lora)
            entry.update(kind="lora", fmt="kohya")
        else:
            kohya = result["files"].get("kohya")
            meta.update(kohya_file=kohya, rank=cfg.rank, alpha=cfg.alpha, target=cfg.target)
            entry.update(kind="lora", fmt="diffusers")
        LoraLibrary(self.studio).register(main_file, meta=meta, **entry)
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
                run = self.cancel(run_id)
                echo("stopping after this step (a checkpoint is kept)..." if run.status == RUNNING
                     else f"run {run_id} is already {run.status}; nothing to stop")
            p = self.progress(run_id)
            if p.step > shown:
                shown = p.step
                loss = f" loss {p.losses[-1][1]:.4f}" if p.losses else ""
                speed = f" {p.it_s:.2f} it/s ETA {p.eta_s:.0f}s" if p.it_s and p.eta_s is not None else ""
                echo(f"[{run.shot}] step {p.step}/{p.total_steps}{loss}{speed}")
