"""What the Train tab shows, without gradio: the form's fields, the run history table, the progress
bar, which run the live view follows, and the validation images as pixels."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import datetime

from dreamshot.errors import InvalidInput

from training import config as tconfig
from training.runs import ACTIVE, QUEUED, RUNNING, Progress, RunInfo

# The parameters the tab shows, in order: (TrainConfig field, label, kind, extra options)
PARAMS = [
    ("rank", "LoRA rank", "int", {}),
    ("alpha", "LoRA alpha", "float", {}),
    ("target", "Layers", "radio", {"choices": list(tconfig.TARGETS),
                                   "info": "cross: cross-attention only (paper); all: self + cross"}),
    ("learning_rate", "Learning rate", "float", {}),
    ("max_steps", "Steps", "int", {}),
    ("epochs", "Epochs (0: use steps)", "int", {}),
    ("batch_size", "Batch size", "int", {}),
    ("grad_accum", "Gradient accumulation", "int", {}),
    ("resolution", "Resolution (px)", "int", {}),
    ("mixed_precision", "Mixed precision", "radio", {"choices": list(tconfig.PRECISIONS)}),
    ("seed", "Seed", "int", {}),
    ("lr_scheduler", "LR schedule", "dropdown", {"choices": list(tconfig.LR_SCHEDULERS)}),
    ("lr_warmup_steps", "Warm-up steps", "int", {}),
    ("random_flip", "Random flip", "bool", {}),
    ("gradient_checkpointing", "Gradient checkpointing", "bool", {}),
    ("train_text_encoder", "Text-encoder LoRA (no text cache)", "bool", {}),
    ("snr_gamma", "Min-SNR gamma (0: off)", "float", {}),
    ("noise_offset", "Noise offset", "float", {}),
    ("validation_steps", "Validation images every N steps", "int", {}),
    ("checkpoint_steps", "Checkpoint every N steps", "int", {}),
    ("checkpoints_keep", "Keep last K checkpoints", "int", {}),
    ("prior_preservation", "Prior preservation (DreamBooth)", "bool", {}),
    ("class_dir", "Class-image folder", "text", {}),
    ("class_prompt", "Class prompt", "text", {}),
    ("num_class_images", "Class images", "int", {}),
    ("push_to_hub", "Push to Hub repo (optional)", "text", {"placeholder": "user/dreamshot-close"}),
]
PARAM_NAMES = [p[0] for p in PARAMS]
# The method and its own fields (shown only for that method); at the end of /train_start's inputs.
METHOD_CHOICES = [("LoRA", "lora"), ("Textual inversion", "ti"), ("Full fine-tune", "full"),
                  ("Motion LoRA (clips)", "motion")]
METHOD_PARAMS = [
    ("method", "Method", "radio", {"choices": METHOD_CHOICES}),
    ("token", "Token", "text", {"placeholder": "empty: SHOT-shot, e.g. close-shot", "method": "ti"}),
    ("init_word", "Init word", "text", {"placeholder": "empty: the shot words, e.g. close", "method": "ti"}),
    ("num_vectors", "Vectors per token", "int", {"method": "ti"}),
    ("optimizer", "Optimizer", "radio", {"choices": list(tconfig.OPTIMIZERS), "method": "full",
                                         "info": "adamw8bit needs bitsandbytes (CUDA)"}),
    ("extract_rank", "Extracted LoRA rank", "int", {"method": "full"}),
    ("freeze_non_lora", "Freeze biases/norms/conv_in/out (the LoRA then holds the whole change)", "bool",
     {"method": "full"}),
    ("motion_adapter", "Motion adapter", "text", {"placeholder": "empty: the Video tab's (Hub id or folder)",
                                                  "method": "motion"}),
    ("clip_frames", "Frames per clip", "int", {"method": "motion"}),
]
FORM_NAMES = PARAM_NAMES + [p[0] for p in METHOD_PARAMS]
# How messages name a setting in the tab: its label without the note in brackets ("Steps", not
# "--max-steps"; "Epochs", not "Epochs (0: use steps)"). The CLI's messages name the flags.
FIELD_NAMES = {name: re.sub(r"\s*\(.*\)$", "", label) for name, label, _kind, _extra in PARAMS + METHOD_PARAMS}
API_NAMES = {name: f"{label} ({name})" for name, label in FIELD_NAMES.items()}   # /train_start's parameters
METHOD_LABELS = {"lora": "LoRA", "ti": "TI", "full": "Full", "motion": "Motion LoRA"}
FAST_POLL_S, IDLE_POLL_S = 1.0, 5.0
# Ten columns of fixed widths: headers stay whole words, and a narrow screen scrolls the table sideways.
HISTORY_HEADERS = ["run", "name", "shot", "status", "step", "settings", "loss", "started", "finished", "message"]
HISTORY_WIDTHS = ["56px", "120px", "80px", "96px", "72px", "270px", "72px", "110px", "110px", "280px"]


@dataclass
class TrainForm:
    shots: list[str]
    preset: str
    dataset: str | None
    hub_token: str | None = field(default=None, repr=False)
    values: dict = field(default_factory=dict)       # PARAMS/METHOD_PARAMS field -> value as the form sent it

    @classmethod
    def from_inputs(cls, shots, preset, dataset, hub_token, *values) -> "TrainForm":
        return cls(list(shots or []), preset, (dataset or "").strip() or None, (hub_token or "").strip() or None,
                   dict(zip(FORM_NAMES, values)))

    def overrides(self, names: dict | None = None) -> dict:
        """TrainConfig changes from the form: numbers checked and typed, empty text left out.
        ``names``: how a refusal names the field (default: the form's labels)."""
        names = names or FIELD_NAMES
        out = {}
        for name, _label, kind, _extra in PARAMS + METHOD_PARAMS:
            value = self.values.get(name)
            if value is None or (kind == "text" and str(value).strip() == "" and name != "push_to_hub"):
                continue
            if kind == "int":
                if float(value) != int(float(value)):
                    raise InvalidInput(f"{names[name]} must be a whole number (got {float(value):g}).")
                value = int(float(value))
            elif kind == "float":
                value = float(value)
            out[name] = value.strip() if isinstance(value, str) else value
        return out


def follow(run_id: int | None, runs: list[RunInfo], pinned: int | None) -> int | None:
    """The run the live view shows: the one picked by hand; else the viewed run while it is queued
    or running; else the running run (or the next queued one); else the newest."""
    if not runs:
        return None
    by_id = {r.id: r for r in runs}
    if run_id is not None and (run_id == pinned or (run_id in by_id and by_id[run_id].active)):
        return run_id
    running = [r for r in runs if r.status == RUNNING]
    queued = [r for r in runs if r.status == QUEUED]  # newest first: the next to train is the last
    if running or queued:
        return (running or queued[-1:])[0].id
    return run_id if run_id in by_id else runs[0].id


def run_choices(runs: list[RunInfo]) -> list[tuple[str, int]]:
    return [(f"#{r.id} {r.shot} ({r.name})", r.id) for r in runs]


def busy(runs: list[RunInfo]) -> bool:
    return any(r.status in ACTIVE for r in runs)


def history_key(runs: list[RunInfo]) -> list:
    """Changes whenever a row of the history would change."""
    return [[r.id, r.status, r.step, r.total_steps, r.started_at, r.finished_at, r.error] for r in runs]


def history_rows(runs: list[RunInfo]) -> list[list]:
    rows = []
    for r in runs:
        s, result = r.summary, r.result or {}
        loss = result.get("final_loss")
        settings = (f"{method_settings(r.method, s)} · {r.preset or ''} · lr {_num(s.get('learning_rate'))}"
                    f" · {s.get('resolution')}px · b{s.get('batch_size')}")
        rows.append([r.id, r.name, r.shot, r.status, f"{r.step}/{r.total_steps}", settings,
                     f"{loss:.4f}" if isinstance(loss, (int, float)) else "", _when(r.started_at),
                     _when(r.finished_at), r.error or ""])
    return rows


def method_settings(method: str, s: dict) -> str:
    """The method and what matters of it, e.g. ``LoRA r4 α4``, ``TI close-shot ×1``, ``Full → LoRA r64``."""
    if method == "ti":
        return f"TI {s.get('placeholder')} ×{s.get('num_vectors')}"
    if method == "full":
        frozen = ", non-LoRA frozen" if s.get("freeze_non_lora") else ""
        return f"Full ({s.get('optimizer')}{frozen}) → LoRA r{s.get('extract_rank')}"
    return f"{METHOD_LABELS.get(method, method)} r{s.get('rank')} α{_num(s.get('alpha'))}"


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _when(ts) -> str:
    return datetime.fromtimestamp(ts).strftime("%m-%d %H:%M") if ts else ""


def duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def bar_html(p: Progress) -> str:
    total = max(p.total_steps, 1)
    pct = min(100.0, 100.0 * p.step / total)
    speed = f"{p.it_s:.2f} it/s" if p.it_s else "– it/s"
    eta = duration(p.eta_s) if p.run.status == RUNNING else "–"
    loss = f" · loss {p.losses[-1][1]:.4f}" if p.losses else ""
    phase = f" ({html.escape(p.phase)})" if p.run.status == RUNNING and p.phase else ""
    return (f"<div class='train-progress' data-status='{p.run.status}' data-step='{p.step}' data-total='{total}'>"
            f"<b>#{p.run.id} {html.escape(p.run.shot)}</b> · {METHOD_LABELS.get(p.run.method, p.run.method)} · "
            f"{p.run.status}{phase} · step {p.step} / {total} · "
            f"{speed} · ETA {eta}{loss}"
            f"<div style='background:#ddd;border-radius:4px;height:14px;margin-top:4px'>"
            f"<div style='background:#e8a33d;width:{pct:.1f}%;height:14px;border-radius:4px'></div></div></div>")


def images(p: Progress) -> list:
    """The latest validation images as pixels (never a path under the data folder) with captions."""
    from PIL import Image

    prompts = p.run.train_config.prompts()
    items = []
    for i, path in enumerate(p.images):
        try:
            with Image.open(path) as im:
                items.append((im.convert("RGB"), f"step {p.image_step}: {prompts[i] if i < len(prompts) else ''}"))
        except OSError:
            continue
    return items


def status_dict(p: Progress) -> dict:
    """Machine-readable progress of one run (``/train_status``)."""
    return {"id": p.run.id, "name": p.run.name, "shot": p.run.shot, "status": p.run.status, "step": p.step,
            "total_steps": p.total_steps, "it_s": p.it_s, "eta_s": p.eta_s, "message": p.message,
            "losses": p.losses, "validation_step": p.image_step, "result": p.run.result}
