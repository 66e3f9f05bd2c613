"""``python -m training``: train one LoRA (or embedding) per shot type.

``--method lora`` (default) trains a LoRA; ``--method ti`` a textual-inversion token (``--token``,
``--init-word``, ``--num-vectors``); ``--method full`` the whole UNet, kept as its delta and
extracted to a LoRA (``--extract-rank``, ``--optimizer adamw|adamw8bit``, ``--freeze-non-lora``).

Two ways to call it:

* On any imagefolder (the trainer alone; also what the studio's job runner launches)::

      python -m training --dataset DIR --shot close --base-model SD_DIR_OR_HUB_ID --output-dir RUN [--preset smoke]
      python -m training --config RUN/config.json --resume latest
      accelerate launch -m training --dataset DIR ...          # several GPUs, same code

* On the studio's labeled set (exports it, records the run in the studio's history, registers the
  finished LoRA for the Generate tab), one run per shot type, one after another::

      python -m training [--data DIR] --shots close medium long [--preset paper] [--rank 8 ...]
      python -m training [--data DIR] --resume-run 12           # continue a cancelled/interrupted run

Every training flag (``--learning-rate``, ``--max-steps``, ``--rank``, ...) starts from the preset.
A Hub token for ``--push-to-hub`` is read from ``HF_TOKEN`` only, never from the command line.
Exit status: 0 done or cancelled (see status.jsonl), 2 bad input, 3 out of memory, 4 disk full, 1 other.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from dreamshot import settings as studio_settings
from dreamshot.errors import DreamShotError
from dreamshot.safety import RedactSecrets, configure_logging

from training import config as tconfig
from training.status import EXIT_CODES, StatusLog, classify_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    studio_settings.add_arguments(parser)
    parser.add_argument("--config", metavar="JSON", help="a run's config.json (flags given too override it)")
    parser.add_argument("--resume", metavar="latest|DIR", help="continue from the latest (or this) checkpoint")
    parser.add_argument("--shots", nargs="+", metavar="SHOT", help="studio mode: shot types to train, one run each")
    parser.add_argument("--resume-run", type=int, metavar="ID", help="studio mode: resume this run of the history")
    tconfig.add_arguments(parser)
    return parser


def _studio_mode_argv(argv: list[str]) -> bool:
    return not any(a.split("=")[0] in ("--config", "--dataset") for a in argv)


def _studio_mode(args) -> bool:
    return not (args.config or args.cfg_dataset)


STOP = {"requested": False}


def request_stop(signum, _frame):
    STOP["requested"] = True
    print(f"training: signal {signum}: stopping after this step (a checkpoint is kept)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    STOP["requested"] = False
    previous = None
    if not _studio_mode_argv(argv):  # before the heavy imports: a cancel while loading is clean too
        previous = (signal.signal(signal.SIGTERM, request_stop), signal.signal(signal.SIGINT, request_stop))
    try:
        return _main(argv)
    finally:
        if previous:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    import logging

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file is noise
    try:
        if _studio_mode(args):
            return run_studio(args)
        return run_trainer(args, argv)
    except DreamShotError as exc:
        print(f"training: {exc}", file=sys.stderr)
        return 2


def trainer_config(args) -> tconfig.TrainConfig:
    base = tconfig.TrainConfig.load(Path(args.config)) if args.config else None
    cfg = tconfig.from_namespace(args, base)
    if not cfg.base_model:
        from dreamshot.models import resolve

        cfg = cfg.updated(base_model=resolve(studio_settings.from_args(args)).source)
    if not cfg.output_dir:
        cfg = cfg.updated(output_dir=str(studio_settings.from_args(args).runs_dir / cfg.run_name))
    if cfg.mixed_precision == "auto":   # --dtype float16/bfloat16/float32 decides it (training.components)
        from training.components import precision_for

        cfg = cfg.updated(mixed_precision=precision_for("auto", studio_settings.from_args(args).dtype))
    return cfg.validate()


def run_trainer(args, argv: list[str]) -> int:
    """The trainer alone, in this process (one of several under ``accelerate launch``)."""
    from training import trainer

    cfg = trainer_config(args)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not args.config:
        cfg.save(out / "config.json")
    (out / "command.txt").write_text(RedactSecrets().redact(" ".join(["python", "-m", "training", *argv])) + "\n")

    run = trainer.trainer_class(cfg.method)(cfg, should_stop=lambda: STOP["requested"])
    try:
        result = run.run(args.resume)
    except BaseException as exc:  # noqa: BLE001 - every ending is reported in status.jsonl
        if isinstance(exc, KeyboardInterrupt):
            raise
        state = getattr(run, "state", None)
        kind, message = classify_error(exc, getattr(state, "step", None))
        StatusLog(out / "status.jsonl", echo=True).write("error", kind=kind, message=message,
                                                         step=getattr(state, "step", 0))
        print(f"training: {message}", file=sys.stderr, flush=True)
        if kind == "internal":
            import traceback

            traceback.print_exc()
        return EXIT_CODES.get(kind, 1)
    print(json.dumps({"status": result.status, "step": result.step, "total_steps": result.total_steps,
                      "files": result.files}), flush=True)
    return 0


def run_studio(args) -> int:
    """Studio mode: export the labeled set, record the runs, train them in turn, register the LoRAs."""
    from dreamshot.studio import Studio

    studio = Studio.open(studio_settings.from_args(args))
    try:
        return _train_in_studio(studio, args)
    finally:
        studio.close()


def _train_in_studio(studio, args) -> int:
    from training import jobs

    runner = jobs.service(studio)  # in the foreground: no background polling
    runner.recover()  # a run a dead server left "running" is interrupted, not a busy GPU
    busy = runner.list_runs((jobs.RUNNING,))
    if busy:  # refuse before queuing anything: the app's runner would train what we leave queued
        raise DreamShotError(f"Run {busy[0].id} ({busy[0].shot}) is training: one GPU job at a time. Nothing was "
                             "queued; run this again when it has finished, or queue runs in the Train tab.")
    shots = args.shots or ([args.cfg_shot] if args.cfg_shot else None)
    if args.resume and not args.resume_run:  # --resume latest: the newest resumable run (of --shot(s))
        candidates = [r for r in runner.list_runs(jobs.RESUMABLE) if not shots or r.shot in shots]
        if not candidates:
            raise DreamShotError("No cancelled, interrupted or failed run to resume.")
        args.resume_run = candidates[0].id
    if args.resume_run:
        run_ids = [runner.resume(args.resume_run).id]
    else:
        if not shots:
            raise DreamShotError("Say which shot types to train: --shots close medium long (or --shot close).")
        overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
        overrides.pop("shot", None)
        preset = overrides.pop("preset", "paper")
        run_ids = [r.id for r in runner.submit(jobs.TrainRequest(shots=shots, preset=preset, overrides=overrides))]
    failed = 0
    for run_id in run_ids:
        info = runner.run_foreground(run_id, echo=print)
        print(f"run {info.id} ({info.shot}): {info.status}" + (f" - {info.error}" if info.error else ""), flush=True)
        failed += info.status not in ("done",)
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
