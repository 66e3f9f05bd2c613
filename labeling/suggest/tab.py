"""The Label tab's *Suggestions* panel: the model's state, its settings, pre-labels, its honest
measurements and the "second look" list. Layout and wiring only; ``SuggestHandlers`` does the work
(through ``labeling.suggest.service`` and ``labeling.suggest.stats``).

Endpoints: ``/label_suggest_status``, ``/label_suggest_settings``, ``/label_prelabel``,
``/label_model_stats``.
"""

from __future__ import annotations

import gradio as gr

from dreamshot.errors import AccessDenied, InvalidInput
from dreamshot.evaluate import embedders
from dreamshot.inputs import whole_number
from dreamshot.ui import QUIET, admin_name, guarded

from labeling import annotate, crop, labels
from labeling.suggest import stats as model_stats
from labeling.suggest.service import SuggestSettings, service

LOOK_HEADERS = ["frame", "label", "model", "confidence", "annotator"]


class SuggestHandlers:
    def __init__(self, studio):
        self.studio = studio

    def status(self, request: gr.Request | None = None) -> str:
        admin_name(self.studio, request)
        svc = service(self.studio)
        s = SuggestSettings.of(self.studio)
        clip = svc.spec or embedders.default_clip(self.studio)
        demo = (" - tiny, random weights: its suggestions show the workflow, not shot types"
                if clip == embedders.DEMO else "")
        return (f"**{svc.state.capitalize()}** - {svc.message}\n\nCLIP: `{clip}` (Evaluate's setting{demo}) · first "
                f"suggestions after {s.min_per_class} labels per shot type · refit every {s.refit_labels} labels or "
                f"{s.refit_seconds:g} s · blind checks on {s.blind_share:.0%} of frames")

    def current(self) -> tuple:
        s = SuggestSettings.of(self.studio)
        return s.enabled, s.min_per_class, s.refit_labels, s.refit_seconds, s.blind_share

    def save(self, enabled, min_per_class, refit_labels, refit_seconds, blind_share, request: gr.Request):
        admin_name(self.studio, request)
        SuggestSettings(enabled, min_per_class, refit_labels, refit_seconds, blind_share).save(self.studio)
        service(self.studio).settings_changed()
        annotate.service(self.studio).reset()
        return (*self.current(), self.status(request))

    def prelabel(self, request: gr.Request) -> str:
        admin_name(self.studio, request)
        report = service(self.studio).prelabel()
        written = report["written"]
        text = (f"Pre-labels written for {sum(written.values())} unlabeled frames ("
                + (", ".join(f"{c} {n}" for c, n in written.items()) or "none")
                + f"), model fit on {report['model_labels']} labels.")
        if report["without_features"]:
            text += (f" {report['without_features']} frames have no features yet (the background worker is on "
                     "it; pre-label again later, or run `python -m labeling suggest`).")
        return text + " Review them: Order -> 'Review: the model calls it ...'; Enter confirms."

    def measurements(self, request: gr.Request):
        admin_name(self.studio, request)
        ms = model_stats.model_stats(self.studio)
        rows = [[d[k] for k in LOOK_HEADERS] for d in ms.second_look[:200]]
        return "```\n" + "\n".join(model_stats.lines(ms)) + "\n```", rows

    def pick(self, row: list | None, request: gr.Request):
        admin_name(self.studio, request)
        if not row or row[0] in (None, ""):
            return gr.update(), gr.update()
        fid = whole_number(row[0], "The frame id")
        return fid, crop.cropped_image(self.studio, fid, 256)

    def resolve(self, frame, final, request: gr.Request):
        who = admin_name(self.studio, request)
        if frame in (None, "") or not final:
            raise InvalidInput("Pick a row of the second-look list and a final class.")
        fid = whole_number(frame, "The frame id")
        labels.resolve(self.studio, fid, final, who)
        return f"Frame {fid} resolved as **{final}**.", *self.measurements(request)

    def status_on_load(self, request: gr.Request):
        try:
            return self.status(request)
        except AccessDenied:           # not a studio member: nothing to show, no error on page load
            return gr.skip()

    def classes(self) -> dict:
        return gr.update(choices=labels.current_taxonomy(self.studio).names + [labels.REJECT])


def build(studio, demo: gr.Blocks) -> None:
    h = SuggestHandlers(studio)
    with gr.Accordion("Suggestions: the studio's shot-type model", open=False, elem_id="label-suggest"):
        gr.Markdown("A linear probe on CLIP features of your labels (Evaluate's judge) suggests each frame's shot "
                    "type; **Enter** accepts it. It is refit in the background as labels arrive. Its accuracy is "
                    "measured only on *blind checks* (frames shown without the suggestion), never on labels it "
                    "influenced.")
        with gr.Row():
            status = gr.Markdown(elem_id="label-suggest-status")
            refresh = gr.Button("Refresh", size="sm", scale=0, min_width=90)
        with gr.Row():
            enabled = gr.Checkbox(label="Suggestions on")
            min_per_class = gr.Number(label="Labels per shot type before the first suggestion", precision=0)
            refit_labels = gr.Number(label="Refit every N labels", precision=0)
            refit_seconds = gr.Number(label="... or every M seconds")
        with gr.Row():
            blind = gr.Slider(0, 0.5, step=0.05, label="Blind checks: share of frames shown without their suggestion",
                              scale=3)
            save = gr.Button("Save suggestion settings", scale=1)
        with gr.Row():
            prelabel = gr.Button("Pre-label unlabeled frames", elem_id="label-prelabel", scale=0, min_width=220)
            prelabel_note = gr.Markdown()
        measure = gr.Button("Model accuracy, acceptance, seconds per label", size="sm")
        text = gr.Markdown()
        look = gr.Dataframe(headers=LOOK_HEADERS, interactive=False, elem_id="label-second-look",
                            label="Second look: settled labels the model contradicted with high confidence (click a row)")
        with gr.Row():
            fid = gr.Number(label="Frame id", value=None, precision=0)
            final = gr.Dropdown(label="Final class", choices=[])
            resolve = gr.Button("Resolve", variant="primary")
        preview = gr.Image(label="Frame (crop)", type="pil", interactive=False, height=200)
        note = gr.Markdown()
    fields = [enabled, min_per_class, refit_labels, refit_seconds, blind]

    def on_row(evt: gr.SelectData, request: gr.Request):
        return h.pick(evt.row_value, request)

    refresh.click(guarded(h.status), None, status, api_name="label_suggest_status")
    save.click(guarded(h.save), fields, [*fields, status], api_name="label_suggest_settings", **QUIET)
    prelabel.click(guarded(h.prelabel), None, prelabel_note, api_name="label_prelabel")
    measure.click(guarded(h.measurements), None, [text, look], api_name="label_model_stats")
    look.select(guarded(on_row), None, [fid, preview], api_visibility="private", **QUIET)
    resolve.click(guarded(h.resolve), [fid, final], [note, text, look], api_visibility="private")
    demo.load(h.current, None, fields, api_visibility="private", **QUIET)
    demo.load(h.classes, None, final, api_visibility="private", **QUIET)
    demo.load(guarded(h.status_on_load), None, status, api_visibility="private")
