"""Train tab: pick shot types (one LoRA run each, queued one after another), a preset and the main
parameters, start; watch the active run live (progress, it/s, ETA, loss curve, validation images,
log tail); cancel and resume; browse the run history.

Training never runs in a Gradio worker: the job runner (``training.jobs``) starts a separate
process per run; this tab polls the database and the run's status file with a ``gr.Timer``. The
view follows the queue (when the run shown ends, the next one is shown) unless the user picked a
run by hand. Every action is a named endpoint (``api_name``); each handler checks the caller itself.
"""

from __future__ import annotations

import html
import inspect
import re
from dataclasses import dataclass

import gradio as gr

from dreamshot.errors import InvalidInput
from dreamshot.server_paths import confine
from dreamshot.ui import QUIET, admin_name, guarded
from training import config as tconfig
from training import jobs, views
from training.views import (FAST_POLL_S, HISTORY_HEADERS, HISTORY_WIDTHS, IDLE_POLL_S, METHOD_PARAMS,
                            PARAM_NAMES, PARAMS, TrainForm)

INTRO = ("Teach each shot type on the labeled, captioned set with the project's prompt template (e.g. "
         "`a high-quality {shot} picture of {caption}`): a **LoRA** (DreamBooth-style, no identifier token), a "
         "**textual inversion** token (`close-shot` stands where the shot words stand), a **full fine-tune** "
         "of the UNet, extracted to a LoRA of chosen rank, or a **motion LoRA** trained on the shots' clips "
         "through AnimateDiff (videos imported in the Label tab). Runs queue up and train one at a time in a "
         "separate process; finished LoRAs and embeddings appear in the Generate and Video tabs.")
# Gradio's own autoscroll does not follow a box inside a tab (gradio-app/gradio#10545): after each
# update, keep the log at its newest line unless the reader has scrolled up.
FOLLOW_LOG_JS = """() => { setTimeout(() => {
  const box = document.querySelector('#train-log textarea');
  if (!box) return;
  if (!box.dataset.follow) {
    box.dataset.follow = '1';
    box.addEventListener('scroll', () => {
      box.dataset.follow = box.scrollTop + box.clientHeight >= box.scrollHeight - 8 ? '1' : '0';
    });
  }
  if (box.dataset.follow === '1') box.scrollTop = box.scrollHeight;
}, 60); }"""


LORA_ONLY = ("rank", "alpha", "target", "train_text_encoder")  # hidden for the other methods
METHOD_BOXES = ("ti", "full", "motion")  # methods with fields of their own (a column each)


class TrainHandlers:
    """The tab's handlers: named inputs in, outputs out; each checks the caller is an admin."""

    def __init__(self, studio):
        self.studio = studio

    @property
    def runner(self) -> jobs.TrainingRunner:
        return jobs.service(self.studio).start()  # the app starts it at launch; a no-op then

    def page_load(self):
        """Base-model line and the project's shot types (the Label tab may have changed them)."""
        status = self.studio.models.status
        demo = " (the untrained demo model: fine for trying the workflow, not for real LoRAs)" if status.is_demo else ""
        taxonomy = self.studio.project.taxonomy()
        return (f"Base model: `{status.source}`{demo}",
                gr.CheckboxGroup(choices=[(c.label, c.name) for c in taxonomy.classes], value=taxonomy.names))

    def preset_values(self, preset: str, request: gr.Request) -> list:
        admin_name(self.studio, request)
        cfg = tconfig.preset(preset)
        return [getattr(cfg, name) for name in PARAM_NAMES]

    def method_fields(self, method: str, preset: str):
        """Show the chosen method's own fields (and the LoRA-only parameters only for a LoRA); the
        learning rate that suits the method (on the preset)."""
        cfg = tconfig.preset(preset if preset in tconfig.PRESETS else "paper", method=method)
        # A motion run trains a LoRA too (rank, alpha, layers) but never a text-encoder LoRA.
        lora_only = [gr.update(visible=method == "lora" or (method == "motion" and name != "train_text_encoder"))
                     for name in LORA_ONLY]
        boxes = [gr.Column(visible=method == which) for which in METHOD_BOXES]
        return *boxes, cfg.learning_rate, *lora_only

    def start(self, form: TrainForm, request: gr.Request, names: dict = views.FIELD_NAMES):
        """Queue one run per shot type; the view follows the queue from the first one. Messages name
        the settings by ``names`` (the form's labels; /train_start adds its parameter names)."""
        who = admin_name(self.studio, request)
        # Server folders typed in the page stay inside the allowed roots (README, Access): the imagefolder
        # read, and the class-image folder prior preservation writes into.
        roots = self.studio.settings.allowed_roots
        dataset = str(confine(form.dataset, roots, "imagefolder")) if (form.dataset or "").strip() else ""
        overrides = form.overrides(names)
        if overrides.get("class_dir"):
            overrides["class_dir"] = str(confine(overrides["class_dir"], roots, names.get("class_dir", "class_dir")))
        created = self.runner.submit(jobs.TrainRequest(shots=form.shots, preset=form.preset, overrides=overrides,
                                                       dataset=dataset, hub_token=form.hub_token, names=names))
        self.runner.tick()  # start at once when the GPU is free
        runs = self.runner.list_runs()
        names = ", ".join(f"#{r.id} {r.shot}" for r in created)
        return (f"Queued by {html.escape(who)}: {names}. They train one after another.", views.history_rows(runs),
                gr.Dropdown(choices=views.run_choices(runs), value=created[0].id), gr.Timer(value=FAST_POLL_S), {})

    def cancel(self, run_id, request: gr.Request):
        admin_name(self.studio, request)
        before = self.runner.get(_run_id(run_id))
        run = self.runner.cancel(before.id)
        if before.status not in (jobs.QUEUED, jobs.RUNNING):   # nothing to cancel: information, not an error
            text = f"already {before.status}; there is nothing to cancel." + (
                " Resume continues it from its last checkpoint." if before.resumable else "")
        elif run.status == jobs.CANCELLED:
            text = "Cancelled."
        else:
            text = "Stopping after the current step; the last checkpoint is kept."
        return f"Run #{run.id}: {text}", views.history_rows(self.runner.list_runs())

    def resume(self, run_id, request: gr.Request):
        admin_name(self.studio, request)
        run = self.runner.resume(_run_id(run_id))
        self.runner.tick()
        return (f"Run #{run.id} queued again: it continues from its last checkpoint.",
                views.history_rows(self.runner.list_runs()), gr.Timer(value=FAST_POLL_S), run.id, {})

    def history(self, request: gr.Request) -> list[list]:
        admin_name(self.studio, request)
        return views.history_rows(self.runner.list_runs())

    def status(self, run_id, request: gr.Request) -> dict:
        """Machine-readable progress of one run (for scripts)."""
        admin_name(self.studio, request)
        return views.status_dict(self.runner.progress(_run_id(run_id)))

    def pick(self, run_id, shown: dict, request: gr.Request):
        """The user chose a run: show it, and keep showing it when it ends."""
        return self.refresh(run_id, {**(shown or {}), "pinned": _run_id(run_id)}, request)

    def refresh(self, run_id, shown: dict, request: gr.Request):
        """Timer tick: what changed of progress bar, loss curve, images, log, history and run picker.
        ``shown`` remembers what the page already has, so unchanged parts are skipped."""
        admin_name(self.studio, request)
        runs = self.runner.list_runs()
        shown = dict(shown or {})
        current = None if run_id in (None, "") else _run_id(run_id)
        target = views.follow(current, runs, shown.get("pinned"))
        ids = [r.id for r in runs]
        dropdown = gr.skip()
        if target != current or ids != shown.get("ids"):
            dropdown, shown["ids"] = gr.Dropdown(choices=views.run_choices(runs), value=target), ids
        history = _changed(shown, "history", views.history_key(runs), lambda: views.history_rows(runs))
        timer = gr.Timer(value=FAST_POLL_S if views.busy(runs) else IDLE_POLL_S)  # slow polls while idle
        if target is None:
            empty = "<div class='train-progress'>No training run yet: pick shot types and press Start.</div>"
            return empty, gr.skip(), gr.skip(), "", "", history, dropdown, shown, timer
        p = self.runner.progress(target)
        plot = _changed(shown, "plot", [p.run.id, len(p.losses)], lambda: _loss_frame(p.losses))
        gallery = _changed(shown, "images", [p.run.id, p.image_step], lambda: views.images(p))
        log_text = _changed(shown, "log", [p.run.id, p.log_tail], lambda: p.log_tail)
        message = f"**Run #{p.run.id} ({p.run.status})**: {html.escape(p.message)}" if p.message else ""
        return views.bar_html(p), plot, gallery, log_text, message, history, dropdown, shown, timer


def _run_id(run_id) -> int:
    """The run number of the Run menu's value: a number (API callers), or text typed into the menu
    that starts with one ("7", "#7 close (close-run7)")."""
    if run_id in (None, ""):
        raise InvalidInput("Pick a run first.")
    if isinstance(run_id, (int, float)) and int(run_id) == run_id:
        return int(run_id)
    found = re.match(r"\s*#?\s*(\d+)(?!\S*\.)", str(run_id))
    if not found:
        raise InvalidInput(f"{run_id!r} is not a run number: pick a run from the list.")
    return int(found.group(1))


def _changed(shown: dict, key: str, state, make):
    """``make()`` when ``state`` differs from what the page has (then remembered), else gr.skip()."""
    if shown.get(key) == state:
        return gr.skip()
    shown[key] = state
    return make()


def _loss_frame(losses):
    import pandas as pd

    return pd.DataFrame({"step": [s for s, _ in losses], "loss": [v for _, v in losses]})


def _component(name, label, kind, extra, value):
    elem_id = f"train-{name}"
    if kind == "int":
        return gr.Number(value, precision=0, label=label, elem_id=elem_id)
    if kind == "float":
        return gr.Number(value, label=label, elem_id=elem_id)
    if kind == "bool":
        return gr.Checkbox(value, label=label, elem_id=elem_id)
    if kind == "radio":
        return gr.Radio(extra["choices"], value=value, label=label, info=extra.get("info"), elem_id=elem_id)
    if kind == "dropdown":
        return gr.Dropdown(extra["choices"], value=value, label=label, elem_id=elem_id)
    return gr.Textbox(value, label=label, placeholder=extra.get("placeholder"), elem_id=elem_id)


def start_form(handlers: TrainHandlers):
    """The Start button: every field of the page's form, in the order shots, preset, dataset,
    hub_token, *FORM_NAMES (the page fills the form from the preset, so each value is meant)."""
    def train_start_form(request: gr.Request, *inputs):
        return handlers.start(TrainForm.from_inputs(*inputs), request)
    return guarded(train_start_form)


_API_TYPES = {"int": int, "float": float, "bool": bool}


def start_api(handlers: TrainHandlers):
    """``/train_start`` for scripts: shots, preset, dataset, hub_token, then one named parameter per
    form field (``rank=``, ``learning_rate=``, ..., ``method=``, ``token=``, ...). A parameter left out
    takes the value of the chosen preset (and method), as on the command line; no shots means every
    shot type of the project, as the form starts. Returns the message and the run history."""
    def train_start(request: gr.Request, shots, preset, dataset, hub_token, *values):
        shots = shots or handlers.studio.project.taxonomy().names
        message, rows, *_ = handlers.start(TrainForm.from_inputs(shots, preset, dataset, hub_token, *values), request,
                                           names=views.API_NAMES)
        return message, rows

    P = inspect.Parameter
    fields = [P(name, P.POSITIONAL_OR_KEYWORD, default=None, annotation=_API_TYPES.get(kind, str) | None)
              for name, _label, kind, _extra in PARAMS + METHOD_PARAMS]
    train_start.__signature__ = inspect.Signature(
        [P("request", P.POSITIONAL_OR_KEYWORD, annotation=gr.Request),
         P("shots", P.POSITIONAL_OR_KEYWORD, default=None, annotation=list[str] | None),
         P("preset", P.POSITIONAL_OR_KEYWORD, default="paper", annotation=str),
         P("dataset", P.POSITIONAL_OR_KEYWORD, default="", annotation=str),
         P("hub_token", P.POSITIONAL_OR_KEYWORD, default="", annotation=str), *fields],
        return_annotation=tuple[str, list[list]])
    train_start.__annotations__ = {p.name: p.annotation for p in train_start.__signature__.parameters.values()}
    return guarded(train_start)


@dataclass
class MethodForm:
    inputs: list           # the method choice and its fields, in METHOD_PARAMS order
    boxes: dict            # method -> the column holding its fields (shown only for that method)


def _method_form(paper) -> MethodForm:
    by_name, boxes = {}, {}
    with gr.Row():
        name, label, kind, extra = METHOD_PARAMS[0]
        with gr.Column(scale=2, min_width=600):  # the four choices stay on one line beside a method's fields
            by_name[name] = _component(name, label, kind, extra, getattr(paper, name))
        for which in METHOD_BOXES:
            with gr.Column(visible=False, scale=3, elem_id=f"train-{which}-fields") as boxes[which], gr.Row():
                for name, label, kind, extra in METHOD_PARAMS[1:]:
                    if extra["method"] == which:
                        by_name[name] = _component(name, label, kind, extra, getattr(paper, name))
    return MethodForm([by_name[p[0]] for p in METHOD_PARAMS], boxes)


def build(studio, demo: gr.Blocks) -> None:
    ui = TrainHandlers(studio)
    taxonomy = studio.project.taxonomy()
    paper = tconfig.preset("paper")
    gr.Markdown(INTRO)
    base_model = gr.Markdown(elem_id="train-base-model")
    with gr.Row():
        shots = gr.CheckboxGroup([(c.label, c.name) for c in taxonomy.classes], value=taxonomy.names,
                                 label="Shot types (one run each)", elem_id="train-shots", scale=2)
        preset = gr.Radio(list(tconfig.PRESETS), value="paper", label="Preset", elem_id="train-preset",
                          info="paper: 8,000 steps, lr 1e-4, 512 px, fp16; smoke: a few steps to check everything")
        dataset = gr.Textbox("", label="Train on an imagefolder instead (optional)", elem_id="train-dataset",
                             placeholder="empty: the studio's labeled set", scale=2)
    methods = _method_form(paper)
    with gr.Accordion("Parameters", open=False):
        params = []
        for start in range(0, len(PARAMS), 6):
            with gr.Row():
                for name, label, kind, extra in PARAMS[start:start + 6]:
                    params.append(_component(name, label, kind, extra, getattr(paper, name)))
        hub_token = gr.Textbox("", label="Hub token for the push (sent to the trainer only through its environment)",
                               type="password", elem_id="train-hub-token")
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
        cancel_btn = gr.Button("Cancel run", variant="stop", elem_id="train-cancel")
        resume_btn = gr.Button("Resume run", elem_id="train-resume")
    message = gr.Markdown(elem_id="train-message")
    with gr.Row():
        # Custom values: API callers name any run by number (the menu's choices are only the page's).
        run = gr.Dropdown([], value=None, label="Run", info="follows the queue until you pick one",
                          elem_id="train-run", scale=1, allow_custom_value=True)
        bar = gr.HTML(elem_id="train-bar")
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="loss", title="Training loss", elem_id="train-loss", height=260)
        gallery = gr.Gallery(label="Latest validation images", columns=2, height=260, elem_id="train-samples")
    run_message = gr.Markdown(elem_id="train-run-message")
    log_tail = gr.Textbox(label="Log (last lines)", lines=8, max_lines=8, interactive=False, autoscroll=True,
                          elem_id="train-log")
    history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, wrap=True, label="Run history",
                           column_widths=HISTORY_WIDTHS, max_height=420, elem_id="train-history")
    history_btn = gr.Button("Refresh history", size="sm")
    shown = gr.State({})
    status_json = gr.JSON(visible=False)
    status_btn = gr.Button(visible=False)
    timer = gr.Timer(FAST_POLL_S)

    # Quick actions: an error shows as a toast, not as an overlay on the form, the table and the run picker.
    quiet = QUIET
    method = methods.inputs[0]
    method_outputs = [*[methods.boxes[which] for which in METHOD_BOXES], params[PARAM_NAMES.index("learning_rate")],
                      *[params[PARAM_NAMES.index(name)] for name in LORA_ONLY]]
    preset.change(guarded(ui.preset_values), preset, params, api_name="train_preset", **quiet).then(
        guarded(ui.method_fields), [method, preset], method_outputs, api_visibility="private", **quiet)
    method.change(guarded(ui.method_fields), [method, preset], method_outputs, api_visibility="private", **quiet)
    start_btn.click(start_form(ui), [shots, preset, dataset, hub_token, *params, *methods.inputs],
                    [message, history, run, timer, shown], api_visibility="private", **quiet)
    gr.api(start_api(ui), api_name="train_start")
    cancel_btn.click(guarded(ui.cancel), run, [message, history], api_name="train_cancel", **quiet)
    resume_btn.click(guarded(ui.resume), run, [message, history, timer, run, shown], api_name="train_resume", **quiet)
    live = [bar, loss_plot, gallery, log_tail, run_message, history, run, shown, timer]
    timer.tick(guarded(ui.refresh), [run, shown], live, api_name="train_progress", **quiet).then(
        None, js=FOLLOW_LOG_JS, api_visibility="private")
    run.input(guarded(ui.pick), [run, shown], live, api_visibility="private", **quiet).then(
        None, js=FOLLOW_LOG_JS, api_visibility="private")
    history_btn.click(guarded(ui.history), None, history, api_name="train_history")
    status_btn.click(guarded(ui.status), run, status_json, api_name="train_status")
    demo.load(guarded(ui.page_load), None, [base_model, shots], api_visibility="private", **quiet)
