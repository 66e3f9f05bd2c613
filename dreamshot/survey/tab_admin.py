"""Survey tab, admin part (full studio only; every handler checks the caller): build a survey
with progress, open / close it, Table 5 with a bar chart, participants with exclusions, raw export.

Admin API: /survey_build /survey_state /survey_results /survey_exclude (admins only).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from dreamshot.errors import AccessDenied, InvalidInput
from dreamshot.generate import generators
from dreamshot.survey import results as survey_results
from dreamshot.survey.build import DEFAULT_INTRO, SurveySpec, parse_prompt_lines
from dreamshot.survey.service import QUESTIONS, service
from dreamshot.ui import QUIET, admin_name, generator_dropdowns, guarded

SOURCES = ("held-out frames", "pasted prompts")


@dataclass
class BuildForm:
    name: str
    shots: list
    pairs: int
    per_participant: int
    alpha: float
    source: str
    prompts: str
    frames: str
    intro: str
    steps: int
    size: int
    a: str = generators.DEFAULT_A
    b: str = generators.DEFAULT_B

    def spec(self) -> SurveySpec:
        pasted = self.source == SOURCES[1]
        frames = []
        if not pasted:      # a leftover in the frame field does not matter when prompts are pasted
            try:
                frames = [int(x) for x in (self.frames or "").replace(" ", "").split(",") if x]
            except ValueError:
                raise InvalidInput("Frame ids are whole numbers separated by commas.") from None
        size = _given(self.size, 512)
        return SurveySpec(name=self.name or "", shots=list(self.shots or []), pairs=_given(self.pairs, 0),
                          per_participant=_given(self.per_participant, 0), alpha=_given(self.alpha, 1.0),
                          prompts=parse_prompt_lines(self.prompts) if pasted else None,
                          frames=None if pasted else (frames or None), intro=self.intro or DEFAULT_INTRO,
                          steps=_given(self.steps, 16), width=size, height=size,
                          a=(self.a or generators.DEFAULT_A).strip(), b=(self.b or generators.DEFAULT_B).strip())


def _given(value, default):
    """A form number, or ``default`` when the field was left empty (0 stays 0: it is checked, not replaced)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{value!r} is not a number.") from None
    return int(number) if isinstance(default, int) and number.is_integer() else number


def chart_rows(res) -> list[dict]:
    return [{"question": r.question, "answer": res.sides[c], "share": round(100 * (r.shares[c].share or 0), 1)}
            for r in res.overall for c in survey_results.CHOICES]


class SurveyAdminHandlers:
    def __init__(self, studio):
        self.studio = studio

    @property
    def service(self):
        return service(self.studio)

    def names(self, request: gr.Request):
        admin_name(self.studio, request)
        surveys = self.service.list()
        return gr.Dropdown(choices=[s.name for s in surveys], value=surveys[-1].name if surveys else None), \
            "\n".join(f"- {s.line()}" for s in surveys) or "*No survey yet.*"

    def listing(self, request: gr.Request) -> str:
        """The survey list alone (after open / close: the chosen survey stays chosen)."""
        return self.names(request)[1]

    def names_if_admin(self, request: gr.Request):
        """Page load: the survey list for admins, nothing (and no error) for anyone else."""
        try:
            return self.names(request)
        except AccessDenied:
            return gr.skip(), ""

    def generator_choices(self, request: gr.Request):
        """Page load: what the library offers for generators A and B (admins; others keep the defaults)."""
        try:
            admin_name(self.studio, request)
        except AccessDenied:
            return gr.skip(), gr.skip()
        from dreamshot.generate.loras import LoraLibrary

        offered = generators.choices(LoraLibrary(self.studio).list())
        return (gr.Dropdown(choices=offered, value=generators.DEFAULT_A),
                gr.Dropdown(choices=offered, value=generators.DEFAULT_B))

    def build(self, form: BuildForm, request: gr.Request, progress=None) -> str:
        who = admin_name(self.studio, request)
        info = self.service.build(form.spec(), by=who, progress=progress)
        note = (" It was finished with the settings it was created with, not the form's: " + "; ".join(info.kept) + "."
                if info.kept else "")
        then = "Open it when you are ready." if info.state == "draft" else f"It is {info.state}."
        return f"Built: {info.line()}.{note} {then}"

    def set_state(self, name: str, state: str, request: gr.Request) -> str:
        admin_name(self.studio, request)
        if not name:
            raise InvalidInput("Choose a survey.")
        return self.service.set_state(name, state).line()

    def results(self, name: str, request: gr.Request):
        admin_name(self.studio, request)
        if not name:
            raise InvalidInput("Choose a survey.")
        res = survey_results.results(self.studio, name)
        people = survey_results.participant_quality(self.studio, name)
        table = [[p["token"][:10], f"{p['answers']}/{p['of']}",
                  None if p["median_seconds"] is None else round(p["median_seconds"], 1),
                  None if p["consistency"] is None else round(p["consistency"], 2),
                  ", ".join(p["flags"]), f"excluded: {p['exclusion_reason']}" if p["excluded"] else ""] for p in people]
        return res.markdown(), {"data": chart_rows(res)}, table

    def export(self, name: str, request: gr.Request) -> list[str]:
        admin_name(self.studio, request)
        rows = survey_results.export_rows(self.studio, name)
        folder = Path(tempfile.mkdtemp(prefix="dreamshot-survey-"))
        csv_path, json_path = folder / f"{name}-answers.csv", folder / f"{name}-answers.json"
        csv_path.write_text(survey_results.export_csv(rows), encoding="utf-8")
        json_path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        return [str(csv_path), str(json_path)]

    def exclude(self, name: str, token: str, reason: str, exclude: bool, request: gr.Request) -> str:
        who = admin_name(self.studio, request)
        self.service.set_excluded(name, token, exclude, reason, by=who)
        return f"{'Excluded' if exclude else 'Included'} {token.strip()} (votes kept)."


def build_admin(studio, demo: gr.Blocks) -> None:
    h = SurveyAdminHandlers(studio)
    taxonomy = studio.project.taxonomy()
    with gr.Accordion("Survey admin (build, open / close, results)", open=False, elem_id="survey-admin"):
        with gr.Tab("Build"):
            with gr.Row():
                name = gr.Textbox(label="Survey name", value="pilot")
                shots = gr.CheckboxGroup(taxonomy.names, value=taxonomy.names[:3], label="Shot types")
            with gr.Row():
                pairs = gr.Number(72, label="Pairs in the pool", precision=0)
                per = gr.Number(36, label="Pairs per participant", precision=0)
                alpha = gr.Slider(0.05, 1.5, value=1.0, step=0.05, label="LoRA α (parts without @α)")
            gen_a, gen_b = generator_dropdowns("survey", (generators.DEFAULT_A, generators.DEFAULT_B),
                                               "participants see A and B on random sides; results name them")
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Prompts from")
            prompts = gr.Textbox(label="Pasted prompts (one per line; 'shot | caption' keeps the shot)", lines=4)
            frames = gr.Textbox(label="Held-out frame ids (optional, comma-separated; default: all captioned test frames)")
            intro = gr.Textbox(DEFAULT_INTRO, label="Intro / consent text", lines=3)
            with gr.Row():
                steps = gr.Number(16, label="Steps", precision=0)
                size = gr.Number(512, label="Size (px)", precision=0)
            build_btn = gr.Button("Build (resumes an interrupted build)", variant="primary")
            build_out = gr.Markdown()
        with gr.Tab("Manage and results"):
            with gr.Row():
                chosen = gr.Dropdown([], label="Survey", allow_custom_value=True)
                refresh = gr.Button("Refresh", size="sm")
                open_btn = gr.Button("Open", size="sm")
                close_btn = gr.Button("Close", size="sm")
            listing = gr.Markdown()
            state_out = gr.Markdown()
            results_btn = gr.Button("Show results", variant="primary")
            table = gr.Markdown()
            chart = gr.BarPlot(x="question", y="share", color="answer", title="% of answers", y_lim=[0, 100],
                               sort=list(QUESTIONS))
            people = gr.Dataframe(headers=["token", "answers", "median s", "consistency", "flags", "excluded"],
                                  label="Participants", interactive=False)
            with gr.Row():
                token = gr.Textbox(label="Participant token (first 6+ characters)")
                reason = gr.Textbox(label="Reason (recorded)")
                exclude_btn = gr.Button("Exclude", size="sm")
                include_btn = gr.Button("Include again", size="sm")
            export_btn = gr.Button("Export raw answers (CSV + JSON)")
            files = gr.File(label="Raw answers", file_count="multiple")

    def do_build(name, shots, pairs, per_participant, alpha, source, prompts, frames, intro, steps, size,
                 a="base", b="lora", request: gr.Request = None, progress=gr.Progress()):
        form = BuildForm(name, shots, pairs, per_participant, alpha, source, prompts, frames, intro, steps, size,
                         a, b)
        return h.build(form, request, progress=lambda f, t: progress(f, desc=t))

    def do_results(name, request: gr.Request):
        md, chart_data, rows = h.results(name, request)
        import pandas as pd

        return md, pd.DataFrame(chart_data["data"]), rows

    form = [name, shots, pairs, per, alpha, source, prompts, frames, intro, steps, size, gen_a, gen_b]
    build_btn.click(guarded(do_build), inputs=form, outputs=build_out, api_name="survey_build")
    refresh.click(guarded(h.names), outputs=[chosen, listing], api_visibility="private", **QUIET)
    demo.load(guarded(h.names_if_admin), outputs=[chosen, listing], api_visibility="private", **QUIET)
    demo.load(guarded(h.generator_choices), outputs=[gen_a, gen_b], api_visibility="private", **QUIET)
    for btn, state in ((open_btn, "open"), (close_btn, "closed")):
        def set_state(n, request: gr.Request, state=state):
            return h.set_state(n, state, request)

        btn.click(guarded(set_state), inputs=chosen, outputs=state_out, api_visibility="private") \
            .success(guarded(h.listing), outputs=listing, api_visibility="private")
    results = [table, chart, people]
    results_btn.click(guarded(do_results), inputs=chosen, outputs=results, api_name="survey_results")
    for btn, flag in ((exclude_btn, True), (include_btn, False)):
        def exclude(n, t, r, request: gr.Request, flag=flag):
            return h.exclude(n, t, r, flag, request)

        # the tables are shown again at once: an exclusion changes them
        btn.click(guarded(exclude), inputs=[chosen, token, reason], outputs=state_out,
                  api_name="survey_exclude" if flag else "survey_include") \
            .success(guarded(do_results), inputs=chosen, outputs=results, api_visibility="private")
    export_btn.click(guarded(h.export), inputs=chosen, outputs=files, api_name="survey_export")
