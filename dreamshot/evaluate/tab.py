"""Evaluate tab (admins): run the paper's CLIP-T / DINO protocol and read its results.

Endpoints: ``/evaluate_run`` (start or resume a run; returns when it ends), ``/evaluate_stop``,
``/evaluate_results`` (show a run folder's results). Runs live under ``<data>/evaluations/<name>``;
the same run from the CLI: ``python -m dreamshot evaluate --out <data>/evaluations/<name> ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from dreamshot.errors import AccessDenied, InvalidInput, NotFound
from dreamshot.evaluate import embedders, report
from dreamshot.evaluate.judge import JUDGES
from dreamshot.evaluate.pairs import EvalOptions
from dreamshot.evaluate.service import service
from dreamshot.generate import generators
from dreamshot.server_paths import confine
from dreamshot.ui import QUIET, admin_name, generator_dropdowns, guarded

_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]{0,63}$")


@dataclass
class EvalForm:
    name: str = "eval"
    frames: str = "test"
    shots: list | None = None
    pairs: int = 1500
    alpha: float = 1.0
    clip_model: str = ""          # empty: the studio's default (demo on the demo model)
    dino_model: str = ""
    judge: str = "auto"
    batch: int = 4
    size: int = 512
    steps: int = 16
    ablation: bool = True
    alpha_values: str = "0,0.25,0.5,0.75,1"
    allow_contaminated: bool = False
    a: str = generators.DEFAULT_A
    b: str = generators.DEFAULT_B


class EvaluateHandlers:
    def __init__(self, studio):
        self.studio = studio

    def folder(self, name: str) -> Path:
        name = (name or "").strip()
        if not _NAME.match(name):
            raise InvalidInput("Run name: letters, digits, '-', '_' or '.', up to 64 characters (e.g. eval-alpha1).")
        return Path(self.studio.settings.data_dir) / "evaluations" / name

    def options(self, form: EvalForm) -> EvalOptions:
        try:
            values = [float(v) for v in str(form.alpha_values).split(",") if v.strip()]
            numbers = dict(pairs=int(form.pairs), batch=int(form.batch), size=int(form.size), steps=int(form.steps))
        except (TypeError, ValueError):
            raise InvalidInput("Pairs, batch, size and steps must be whole numbers; α values numbers "
                               "separated by commas.") from None
        frames = (form.frames or "test").strip()
        if frames != "test":   # a server folder typed in the page: inside the allowed roots (README, Access)
            frames = str(confine(frames, self.studio.settings.allowed_roots, "held-out frames folder"))
        return EvalOptions(out=str(self.folder(form.name)), frames=frames,
                           shots=list(form.shots or []) or None, pairs=numbers["pairs"], alpha=float(form.alpha),
                           clip_model=(form.clip_model or "").strip(), dino_model=(form.dino_model or "").strip(),
                           judge=form.judge,
                           batch=numbers["batch"], width=numbers["size"], height=numbers["size"],
                           steps=numbers["steps"], ablation=bool(form.ablation), alpha_values=values,
                           allow_contaminated=bool(form.allow_contaminated),
                           a=(form.a or generators.DEFAULT_A).strip(), b=(form.b or generators.DEFAULT_B).strip())

    def run(self, form: EvalForm, request: gr.Request | None = None, progress=None):
        user = admin_name(self.studio, request)
        options = self.options(form)
        gen = service(self.studio).generation()
        with gen.job(owner=f"evaluate:{user}") as job:
            results = service(self.studio).run(options, progress=progress, job=job)
        return self.view(results, Path(options.out))

    def stop(self, request: gr.Request | None = None) -> str:
        user = admin_name(self.studio, request)
        n = service(self.studio).generation().cancel(f"evaluate:{user}")
        return "Stopping after the current batch; the results will say INCOMPLETE." if n else "No evaluation is running."

    def results(self, name: str, request: gr.Request | None = None):
        admin_name(self.studio, request)
        out = self.folder(name)
        found = service(self.studio).results(out)
        if found is None:
            raise NotFound(f"No results in evaluations/{name.strip()} yet: run the evaluation first.")
        return self.view(found, out)

    def show(self, name: str, request: gr.Request | None = None):
        """The *Show results* button: a run without results says so and clears the view (the tables
        of the run shown before must not stand under the new name)."""
        try:
            return self.results(name, request)
        except NotFound as exc:
            return f"**{exc}**", "", None, []

    def view(self, results: dict, out: Path):
        plot = out / "results.png"
        # left: side A, right: side B (the tables above name them; the API returns a plain list)
        gallery = [(side_by_side(left, right), caption) for left, right, caption in service(self.studio).samples(out)]
        return (report.status_line(results), report.markdown(results, status=False),
                Image.open(plot).convert("RGB") if plot.is_file() else None, gallery)

    def shot_choices(self) -> gr.CheckboxGroup:
        taxonomy = self.studio.project.taxonomy()
        return gr.CheckboxGroup(choices=[(c.label, c.name) for c in taxonomy.classes], value=[])

    def generator_choices(self, request: gr.Request | None = None):
        """Page load: what the library offers for generators A and B (free text also accepted)."""
        try:
            admin_name(self.studio, request)
        except AccessDenied:           # not an admin: the defaults stay, no error on page load
            return gr.skip(), gr.skip()
        offered = generators.choices(service(self.studio).generation().library.list())
        return (gr.Dropdown(choices=offered, value=generators.DEFAULT_A),
                gr.Dropdown(choices=offered, value=generators.DEFAULT_B))


def side_by_side(base: Path, tuned: Path) -> Image.Image:
    with Image.open(base) as a, Image.open(tuned) as b:
        a, b = a.convert("RGB"), b.convert("RGB")
        canvas = Image.new("RGB", (a.width + b.width + 4, max(a.height, b.height)), "white")
        canvas.paste(a, (0, 0))
        canvas.paste(b, (a.width + 4, 0))
    if canvas.height < 256:   # small test-size images: enlarge (pixel art) so they can be seen
        factor = -(-256 // canvas.height)
        canvas = canvas.resize((canvas.width * factor, canvas.height * factor), Image.NEAREST)
    return canvas


def build(studio, demo: gr.Blocks) -> None:
    ui = EvaluateHandlers(studio)
    gr.Markdown("Paper sections 4.2-4.3: two generators (A: the base model, B: the shot's LoRA by default; or an "
                "embedding, a full-fine-tune LoRA, with or without ControlNet) make images from the same caption "
                "and seed, scored with "
                "**CLIP-T** (image vs prompt) and **DINO** (image vs the real frame), with and without the shot "
                "type in the prompt (Tables 3-4), an α curve, and a shot-type judge trained on your labels. "
                "Admins only. Stopped runs resume where they left off.")
    with gr.Row():
        name = gr.Textbox("eval", label="Run name (folder under evaluations/)", elem_id="eval-name")
        frames = gr.Textbox("test", label="Held-out frames", info="'test' = the studio's test split, or an "
                            "imagefolder path with metadata.jsonl", elem_id="eval-frames")
        shots = gr.CheckboxGroup([], label="Shot types (none ticked: every shot with a LoRA)", elem_id="eval-shots")
    gen_a, gen_b = generator_dropdowns("eval", (generators.DEFAULT_A, generators.DEFAULT_B),
                                       "'lora' = the shot's LoRA at the α below; same captions and seeds as A")
    with gr.Row():
        pairs_n = gr.Number(1500, label="Captions (pairs)", precision=0, elem_id="eval-pairs")
        alpha = gr.Slider(0, 1.5, 1.0, step=0.05, label="α (LoRA parts without @α)", elem_id="eval-alpha")
        judge = gr.Radio(list(JUDGES), value="auto", label="Shot-type judge", elem_id="eval-judge")
    with gr.Accordion("Models and generation", open=False):
        with gr.Row():
            demo_info = "'demo' = tiny, random weights, built offline: shows the workflow, measures nothing"
            clip_model = gr.Textbox(embedders.default_clip(studio), label="CLIP model (Hub id, folder or demo)",
                                    info=demo_info, elem_id="eval-clip")
            dino_model = gr.Textbox(embedders.default_dino(studio), label="DINO model (Hub id, folder or demo)",
                                    info=demo_info, elem_id="eval-dino")
        with gr.Row():
            batch = gr.Number(4, label="Batch", precision=0, elem_id="eval-batch")
            size = gr.Number(512, label="Size (px)", precision=0, elem_id="eval-size")
            steps = gr.Number(16, label="Steps", precision=0, elem_id="eval-steps")
            alpha_values = gr.Textbox("0,0.25,0.5,0.75,1", label="α curve values", elem_id="eval-alpha-values")
        with gr.Row():
            ablation = gr.Checkbox(True, label="Ablation (Table 4: shot type removed from the prompt)")
            dirty = gr.Checkbox(False, label="Allow frames used for training (marks the results)")
    with gr.Row():
        run_btn = gr.Button("Run / resume evaluation", variant="primary", elem_id="eval-run")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="eval-stop")
        show_btn = gr.Button("Show results", elem_id="eval-show")
    status = gr.Markdown(elem_id="eval-status")
    plot = gr.Image(label="Tables 3-4 and α curve", type="pil", format="png", elem_id="eval-plot", height=500)
    tables = gr.Markdown(elem_id="eval-tables")
    gallery = gr.Gallery(label="Sample pairs (left: A, right: B)", columns=3, elem_id="eval-gallery")

    def evaluate_run(request: gr.Request, name, frames, shots, pairs, alpha, clip_model, dino_model, judge, batch,
                     size, steps, ablation, alpha_values, allow_contaminated, a="base", b="lora",
                     progress=gr.Progress()):
        form = EvalForm(name, frames, shots, pairs, alpha, clip_model, dino_model, judge, batch, size, steps,
                        ablation, alpha_values, allow_contaminated, a, b)
        return ui.run(form, request, progress=lambda f, text: progress(f, desc=text))

    outputs = [status, tables, plot, gallery]
    run_btn.click(guarded(evaluate_run), [name, frames, shots, pairs_n, alpha, clip_model, dino_model, judge, batch,
                                          size, steps, ablation, alpha_values, dirty, gen_a, gen_b], outputs,
                 api_name="evaluate_run")
    stop_btn.click(guarded(ui.stop), None, status, api_name="evaluate_stop")
    show_btn.click(guarded(ui.show), name, outputs, api_visibility="private")
    results_api = gr.Button(visible=False)   # /evaluate_results: a missing run is an error for scripts
    results_api.click(guarded(ui.results), name, outputs, api_name="evaluate_results")
    demo.load(guarded(ui.shot_choices), None, shots, api_visibility="private", **QUIET)
    demo.load(guarded(ui.generator_choices), None, [gen_a, gen_b], api_visibility="private", **QUIET)
