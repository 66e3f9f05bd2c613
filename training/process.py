"""A trainer process as the job runner starts and watches it: the argument list (never a shell
string), its environment (the Hub token only there), whether a recorded pid is still this run's
trainer, and signals to its whole process group (accelerate's workers too)."""

from __future__ import annotations

import os
from pathlib import Path

from dreamshot.errors import InvalidInput

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HIDDEN_ENV = ("DREAMSHOT_ADMIN_PASSWORD", "DREAMSHOT_DB")


def command(python: str, config_path: Path, *, resume: bool) -> list[str]:
    """``python -m training --config RUN/config.json [--resume latest]``. DREAMSHOT_TRAIN_PROCESSES=N
    (N > 1) trains on N GPUs through ``accelerate launch``; the trainer needs no change for it."""
    processes = os.environ.get("DREAMSHOT_TRAIN_PROCESSES", "1").strip() or "1"
    if not processes.isdigit() or not 1 <= int(processes) <= 64:
        raise InvalidInput("DREAMSHOT_TRAIN_PROCESSES must be a number of GPUs between 1 and 64.")
    launcher = [python, "-m"]
    if int(processes) > 1:
        launcher += ["accelerate.commands.launch", "--multi_gpu", "--num_processes", processes, "-m"]
    cmd = [*launcher, "training", "--config", str(config_path)]
    return cmd + ["--resume", "latest"] if resume else cmd


def environment(hub_token: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep the run's log readable
    if hub_token:
        env["HF_TOKEN"] = hub_token
    return env


def alive(pid: int | None, config_path: Path) -> bool:
    """Is ``pid`` alive and really the trainer of this run (a process of another server or the CLI)?"""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(config_path) in cmdline


def signal_group(pid: int, sig) -> None:
    try:
        os.killpg(pid, sig)  # the whole session: accelerate's workers too
    except (ProcessLookupError, PermissionError):
        pass
