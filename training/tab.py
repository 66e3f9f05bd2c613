"""Train tab: pick shot types (one LoRA run each, queued one after another), a preset and the main
parameters, start; watch the active run live (progress, it/s, ETA, loss curve, validation images,
log tail); cancel and resume; browse the run history.

Training never runs in a Gradio worker: the job runner (``training.jobs``) starts a separate
process per run, and this tab polls the database and the run's status file with a ``gr.Timer``.
Every action is a named endpoint (``api_name``), each admin handler checks the caller itself.
"""

from __future__ import annotations

import html
from datetime import datetime

import gradio as gr

from dreamshot.errors import InvalidInput
from dreamshot.shots import get_taxonomy
from dreamshot.ui import admin_name, guarded

from training import config as tconfig
from training import jobs

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
FAST_POLL_S, IDLE_POLL_S = 1.0, 5.0
HISTORY_HEADERS = ["run", "name", "shot", "status", "step", "preset", "rank", "alpha", "lr", "res", "batch",
                   "final loss", "LoRA", "started", "finished", "message"]


def _component(name, label, kind, extra, value):
    if kind == "int":
        return gr.Number(value, precision=0, label=label, elem_id=f"train-{name}")
    if kind == "float":
        return gr.Number(value, label=label, elem_id=f"train-{name}")
    if kind == "bool":
        return gr.Checkbox(value, label=label, elem_id=f"train-{name}")
    if kind == "radio":
        return gr.Radio(extra["choices"], value=value, label=label, info=extra.get("info"), elem_id=f"train-{name}")
    if kind == "dropdown":
        return gr.Dropdown(extra["choices"], value=value, label=label, elem_id=f"train-{name}")
    return gr.Textbox(value, label=label, placeholder=extra.get("placeholder"), elem_id=f"train-{name}")


def _duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _when(ts) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""


class TrainUi:
    def __init__(self, studio):
        self.studio = studio

    @property
    def runner(self) -> jobs.JobRunner:
        # Started on first use (a page visit's timer or any API call), not when the app is built.
        return jobs.JobRunner.for_studio(self.studio)

    def base_model_line(self) -> str:
        status = self.studio.models.status
        demo = " (the untrained demo model: fine for trying the workflow, not for real LoRAs)" if status.is_demo else ""
        return f"Base model: `{status.source}`{demo}"

    # ---- the form ---------------------------------------------------------------------------------
    def preset_values(self, preset: str, request: gr.Request):
        admin_name(self.studio, request)
        cfg = tconfig.preset(preset)
        return [getattr(cfg, name) for name in PARAM_NAMES]

    def start(self, request: gr.Request, shots, preset, dataset, hub_token, *values):
        who = admin_name(self.studio, request)
        overrides = {}
        for (name, _label, kind, _extra), value in zip(PARAMS, values):
            if value is None or (kind == "text" and str(value).strip() == "" and name != "push_to_hub"):
                continue
            if kind == "int":
                if float(value) != int(float(value)):
                    raise InvalidInput(f"{_label} must be a whole number.")
                value = int(float(value))
            elif kind == "float":
                value = float(value)
            overrides[name] = value.strip() if isinstance(value, str) else value
        request_ = jobs.TrainRequest(shots=list(shots or []), preset=preset, overrides=overrides,
                                     dataset=(dataset or "").strip() or None, hub_token=(hub_token or "").strip() or None)
        runs = self.runner.submit(request_)
        self.runner.tick()  # start at once when the GPU is free
        names = ", ".join(f"#{r.id} {r.shot}" for r in runs)
        message = f"Queued by {html.escape(who)}: {names}. They train one after another."
        return message, self.history_rows(), self._choices(runs[0].id), gr.Timer(value=FAST_POLL_S)

    # ---- actions on a run ----------------------------------------------------------------------------
    def cancel(self, run_id, request: gr.Request):
        admin_name(self.studio, request)
        run = self.runner.cancel(self._id(run_id))
        text = ("Cancelled." if run.status == jobs.CANCELLED else
                "Stopping after the current step; the last checkpoint is kept.")
        return f"Run #{run.id}: {text}", self.history_rows()

    def resume(self, run_id, request: gr.Request):
        admin_name(self.studio, request)
        run = self.runner.resume(self._id(run_id))
        self.runner.tick()
        return (f"Run #{run.id} queued again: it continues from its last checkpoint.", self.history_rows(),
                gr.Timer(value=FAST_POLL_S))

    def _id(self, run_id) -> int:
        if run_id in (None, ""):
            raise InvalidInput("Pick a run first.")
        return int(run_id)

    # ---- live view ------------------------------------------------------------------------------------
    def _run_choices(self, value=None):
        runs = self.runner.list_runs()
        choices = [(f"#{r.id} {r.shot} ({r.name})", r.id) for r in runs]
        if value is None and runs:
            active = [r for r in runs if r.status in (jobs.RUNNING, jobs.QUEUED)]
            value = (active[-1] if active else runs[0]).id
        return choices, value

    def _choices(self, value=None):
        choices, value = self._run_choices(value)
        return gr.Dropdown(choices=choices, value=value)

    def history_rows(self) -> list[list]:
        rows = []
        for r in self.runner.list_runs():
            c = r.config.get("train", {})
            result = r.result or {}
            loss = result.get("final_loss")
            rows.append([r.id, r.name, r.shot, r.status, f"{r.step}/{r.total_steps}", r.preset or "",
                         c.get("rank"), c.get("alpha"), c.get("learning_rate"), c.get("resolution"),
                         c.get("batch_size"), f"{loss:.4f}" if isinstance(loss, (int, float)) else "",
                         result.get("lora_name") or "", _when(r.started_at), _when(r.finished_at), r.error or ""])
        return rows

    def history(self, request: gr.Request) -> list[list]:
        admin_name(self.studio, request)
        return self.history_rows()

    def status(self, run_id, request: gr.Request) -> dict:
        """Machine-readable progress of one run (for scripts)."""
        admin_name(self.studio, request)
        p = self.runner.progress(self._id(run_id))
        return {"id": p.run.id, "name": p.run.name, "shot": p.run.shot, "status": p.run.status, "step": p.step,
                "total_steps": p.total_steps, "it_s": p.it_s, "eta_s": p.eta_s, "message": p.message,
                "losses": p.losses, "validation_step": p.image_step, "result": p.run.result}

    def refresh(self, run_id, shown, request: gr.Request):
        """Timer tick: progress bar, loss curve, validation images, log tail, history."""
        admin_name(self.studio, request)
        runner = self.runner
        shown = dict(shown or {})
        ids = [r.id for r in runner.list_runs()]
        dropdown = gr.skip()
        if ids != shown.get("ids") or (run_id in (None, "") and ids):
            choices, run_id = self._run_choices(None if run_id in (None, "") else int(run_id))
            dropdown = gr.Dropdown(choices=choices, value=run_id)
            shown["ids"] = ids
        busy = bool(runner.list_runs((jobs.RUNNING, jobs.QUEUED)))
        timer = gr.Timer(value=FAST_POLL_S if busy else IDLE_POLL_S)  # poll slowly while nothing trains
        if run_id in (None, ""):
            empty = "<div class='train-progress'>No training run yet: pick shot types and press Start.</div>"
            return empty, gr.skip(), gr.skip(), "", "", self.history_rows(), dropdown, shown, timer
        p = runner.progress(int(run_id))
        key = (p.run.id, len(p.losses))
        plot = gr.skip()
        if key != tuple(shown.get("plot") or ()):
            import pandas as pd

            plot = pd.DataFrame({"step": [s for s, _ in p.losses], "loss": [l for _, l in p.losses]})
            shown["plot"] = list(key)
        gallery = gr.skip()
        img_key = (p.run.id, p.image_step)
        if img_key != tuple(shown.get("images") or ()):
            gallery = self._images(p)
            shown["images"] = list(img_key)
        message = ""
        if p.message:
            message = f"**Run #{p.run.id} ({p.run.status})**: {html.escape(p.message)}"
        return (self._bar(p), plot, gallery, p.log_tail, message, self.history_rows(), dropdown, shown, timer)

    def _images(self, p: jobs.Progress):
        from PIL import Image

        prompts = p.run.train_config.prompts()
        items = []
        for i, path in enumerate(p.images):
            try:
                with Image.open(path) as im:  # pixels, never a path under the data folder
                    items.append((im.convert("RGB"), f"step {p.image_step}: {prompts[i] if i < len(prompts) else ''}"))
            except OSError:
                continue
        return items

    def _bar(self, p: jobs.Progress) -> str:
        total = max(p.total_steps, 1)
        pct = min(100.0, 100.0 * p.step / total)
        speed = f"{p.it_s:.2f} it/s" if p.it_s else "– it/s"
        eta = _duration(p.eta_s) if p.run.status == jobs.RUNNING else "–"
        loss = f" · loss {p.losses[-1][1]:.4f}" if p.losses else ""
        return (f"<div class='train-progress' data-status='{p.run.status}' data-step='{p.step}' data-total='{total}'>"
                f"<b>#{p.run.id} {html.escape(p.run.shot)}</b> · {p.run.status}"
                f"{' (' + html.escape(p.phase) + ')' if p.run.status == jobs.RUNNING and p.phase else ''} · step {p.step} / {total} · "
                f"{speed} · ETA {eta}{loss}"
                f"<div style='background:#ddd;border-radius:4px;height:14px;margin-top:4px'>"
                f"<div style='background:#e8a33d;width:{pct:.1f}%;height:14px;border-radius:4px'></div></div></div>")


def _named(handler):
    """Give the start handler one named parameter per form field, so ``gradio_client`` users see
    ``rank=``, ``learning_rate=``, ... instead of ``param_4``."""
    import functools
    import inspect

    @functools.wraps(handler)
    def endpoint(*args):
        return handler(*args)

    fixed = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)]
    fixed += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
              for n in ("shots", "preset", "dataset", "hub_token", *PARAM_NAMES)]
    endpoint.__signature__ = inspect.Signature(fixed)
    del endpoint.__wrapped__
    return endpoint


def build(studio, demo: gr.Blocks) -> None:
    ui = TrainUi(studio)
    taxonomy = get_taxonomy(studio.db.get_setting("taxonomy"))
    paper = tconfig.preset("paper")
    gr.Markdown("Train one LoRA per shot type on the labeled, captioned set (DreamBooth-style, no identifier "
                "token; prompt `a high-quality {shot} picture of {caption}`). Runs queue up and train one at a "
                "time in a separate process; finished LoRAs appear in the Generate tab.")
    base_model = gr.Markdown(elem_id="train-base-model")
    with gr.Row():
        shots = gr.CheckboxGroup([(c.label, c.name) for c in taxonomy.classes], value=taxonomy.names,
                                 label="Shot types (one run each)", elem_id="train-shots", scale=2)
        preset = gr.Radio(list(tconfig.PRESETS), value="paper", label="Preset", elem_id="train-preset",
                          info="paper: 8,000 steps, lr 1e-4, 512 px, fp16; smoke: a few steps to check everything")
        dataset = gr.Textbox(label="Train on an imagefolder instead (optional)", elem_id="train-dataset",
                             placeholder="empty: the studio's labeled set", scale=2)
    with gr.Accordion("Parameters", open=False):
        params = []
        for start in range(0, len(PARAMS), 6):
            with gr.Row():
                for name, label, kind, extra in PARAMS[start:start + 6]:
                    params.append(_component(name, label, kind, extra, getattr(paper, name)))
        hub_token = gr.Textbox(label="Hub token for the push (sent to the trainer only through its environment)",
                               type="password", elem_id="train-hub-token")
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
        cancel_btn = gr.Button("Cancel run", variant="stop", elem_id="train-cancel")
        resume_btn = gr.Button("Resume run", elem_id="train-resume")
    message = gr.Markdown(elem_id="train-message")
    with gr.Row():
        run = gr.Dropdown([], value=None, label="Run", elem_id="train-run", scale=1)
        bar = gr.HTML(elem_id="train-bar")
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="loss", title="Training loss", elem_id="train-loss", height=260)
        gallery = gr.Gallery(label="Latest validation images", columns=2, height=260, elem_id="train-samples")
    run_message = gr.Markdown(elem_id="train-run-message")
    log_tail = gr.Textbox(label="Log (last lines)", lines=8, max_lines=8, interactive=False, elem_id="train-log")
    history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, wrap=True, label="Run history",
                           elem_id="train-history")
    shown = gr.State({})
    status_json = gr.JSON(visible=False)
    timer = gr.Timer(FAST_POLL_S)

    preset.change(guarded(ui.preset_values), preset, params, api_name="train_preset")
    # Quick actions: an error shows as a toast, not as an overlay on the table and the run picker.
    start_btn.click(_named(guarded(ui.start)), [shots, preset, dataset, hub_token, *params],
                    [message, history, run, timer], api_name="train_start", show_progress="hidden")
    cancel_btn.click(guarded(ui.cancel), run, [message, history], api_name="train_cancel", show_progress="hidden")
    resume_btn.click(guarded(ui.resume), run, [message, history, timer], api_name="train_resume",
                     show_progress="hidden")
    live = [bar, loss_plot, gallery, log_tail, run_message, history, run, shown, timer]
    timer.tick(guarded(ui.refresh), [run, shown], live, api_name="train_progress", show_progress="hidden")
    fresh = gr.State({})
    run.change(guarded(ui.refresh), [run, fresh], live, api_visibility="private", show_progress="hidden")
    history_btn = gr.Button("Refresh history", size="sm")
    history_btn.click(guarded(ui.history), None, history, api_name="train_history")
    status_btn = gr.Button(visible=False)
    status_btn.click(guarded(ui.status), run, status_json, api_name="train_status")

    def on_page_load():
        # Resolving the base model at build time would import torch with `app`; and the taxonomy may
        # have changed in the Label tab since the app was built.
        current = get_taxonomy(studio.db.get_setting("taxonomy"))
        return ui.base_model_line(), gr.CheckboxGroup(choices=[(c.label, c.name) for c in current.classes],
                                                      value=current.names)

    demo.load(guarded(on_page_load), None, [base_model, shots], api_visibility="private")
