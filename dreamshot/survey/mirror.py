"""Optional mirroring of raw votes to a private Hugging Face dataset (a Space has no persistent
disk; the database stays the source of truth).

Enabled only when both are set:

    DREAMSHOT_SURVEY_REPO      the dataset repo, e.g. you/dreamshot-votes (created private)
    DREAMSHOT_SURVEY_HF_TOKEN  a write token (HF_TOKEN is used when this one is unset)
    DREAMSHOT_SURVEY_MIRROR_MINUTES  how often to push [default 5]

Each stored answer is appended as one JSON line to ``<data>/survey-mirror/<survey>/answers-<id>.jsonl``
(one file per process, under the scheduler's lock); ``huggingface_hub.CommitScheduler`` uploads the
folder in the background. Without the settings nothing is written and nothing is contacted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ENV = "DREAMSHOT_SURVEY_REPO"
TOKEN_ENV = "DREAMSHOT_SURVEY_HF_TOKEN"
EVERY_ENV = "DREAMSHOT_SURVEY_MIRROR_MINUTES"
FIELDS = ("survey", "token", "pair_id", "round", "slot", "question", "answer", "lora_side", "choice",
          "seconds", "created_at", "preview")


class VoteMirror:
    """Appends answers to JSON-lines files that a CommitScheduler pushes; a no-op without one."""

    def __init__(self, folder: Path | None = None, scheduler=None):
        self.folder = Path(folder) if folder else None
        self.scheduler = scheduler
        self.lock = scheduler.lock if scheduler is not None else threading.Lock()
        self.file_id = uuid.uuid4().hex[:12]

    @property
    def enabled(self) -> bool:
        return self.scheduler is not None

    @classmethod
    def from_env(cls, studio, hf_api=None) -> "VoteMirror":
        repo = (os.environ.get(REPO_ENV) or "").strip()
        token = (os.environ.get(TOKEN_ENV) or os.environ.get("HF_TOKEN") or "").strip()
        if not repo or not token:
            return cls()
        from huggingface_hub import CommitScheduler

        folder = Path(studio.settings.data_dir) / "survey-mirror"
        folder.mkdir(parents=True, exist_ok=True)
        every = float(os.environ.get(EVERY_ENV) or 5)
        try:
            scheduler = CommitScheduler(repo_id=repo, repo_type="dataset", folder_path=folder, every=every,
                                        private=True, token=token, path_in_repo="votes", hf_api=hf_api)
        except Exception as exc:  # no network, bad token: votes still go to the database
            log.warning("survey vote mirroring to %s is off: %s", repo, exc.__class__.__name__)
            return cls()
        log.info("mirroring survey votes to the dataset %s every %g min", repo, every)
        return cls(folder, scheduler)

    def record(self, row: dict) -> None:
        if not self.enabled:
            return
        safe = re.sub(r"[^\w.\-]", "_", str(row.get("survey", "survey")))
        path = self.folder / safe / f"answers-{self.file_id}.jsonl"
        line = json.dumps({k: row.get(k) for k in FIELDS}, ensure_ascii=False)
        try:
            with self.lock:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
        except OSError:
            log.exception("could not append a vote to the mirror folder (the database has it)")

    def push_now(self):
        """Upload what is pending now (tests, shutdown); returns the scheduler's future or None."""
        return self.scheduler.trigger() if self.enabled else None

    def close(self) -> None:
        if self.enabled:
            try:
                self.scheduler.trigger().result(timeout=60)
            except Exception:
                log.warning("last push of survey votes failed; they are in the database", exc_info=True)
            self.scheduler.stop()
