"""Captions tab: auto-caption the labeled frames in the background, then review and edit every
caption fast (thumbnail grid + editor with keyboard flow), bulk find/replace and shot-word strip with
a preview, the exact training prompt and its CLIP token count, and the edit rate.

Keyboard (while the tab is open): Ctrl+Enter = save (mark reviewed) and go to the next caption,
Alt+Down / Alt+Up = next / previous (typed changes are saved, an untouched caption stays unreviewed).
Every action is also a named endpoint (``api_name``). Layout and wiring only: the handlers are
``tab_handlers.CaptionsHandlers``. Events that can be refused run with ``show_progress="hidden"``:
the refusal is a toast and the page stays as it was (Gradio marks every output of a failed event
"Error" otherwise, and the image disappears).
"""

from __future__ import annotations

import gradio as gr

from dreamshot.ui import QUIET, guarded  # QUIET: a refusal leaves the outputs as they were

from labeling.captions import jobs as caption_jobs
from labeling.captions.bulk import SHOT_TERMS
from labeling.captions.captioner import CAPTIONERS, DEFAULT_CAPTIONER, MAX_NEW_TOKENS_LIMIT
from labeling.captions.tab_handlers import BULK_HEADERS, LIST_HEADERS, CaptionsHandlers, Filters  # noqa: F401

HEAD = """<script>
(() => {
  if (window.__dreamshotCaptionKeys) return;
  window.__dreamshotCaptionKeys = true;
  const visible = (el) => el && el.offsetParent !== null;
  const click = (id) => { const b = document.getElementById(id); if (visible(b)) { b.click(); return true; } return false; };
  document.addEventListener("keydown", (e) => {
    if (!visible(document.getElementById("captions-editor"))) return;
    let done = false;
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") done = click("caption-save-next");
    else if (e.altKey && e.key === "ArrowDown") done = click("caption-next");
    else if (e.altKey && e.key === "ArrowUp") done = click("caption-prev");
    if (done) { e.preventDefault(); e.stopPropagation(); }
  }, true);
})();
</script>"""

FOCUS_JS = """() => { setTimeout(() => {
  const t = document.querySelector("#caption-box textarea");
  if (t) { t.focus(); t.setSelectionRange(t.value.length, t.value.length); }
}, 60); }"""



def _filters_row(studio) -> list:
    shots = ["all"] + studio.project.taxonomy().names
    with gr.Row():
        split = gr.Radio(["train", "test"], value="train", label="Frames")
        shot = gr.Dropdown(shots, value="all", label="Shot type")
        unreviewed = gr.Checkbox(False, label="Not yet reviewed")
        too_long = gr.Checkbox(False, label="Over 77 tokens")
        search = gr.Textbox(label="Search captions", placeholder="text in the caption")
    return [split, shot, unreviewed, search, too_long]  # the order of every endpoint's filter arguments


def _list_column():
    with gr.Column(scale=3, min_width=320):
        with gr.Row():
            page = gr.Number(1, precision=0, minimum=1, label="Page", scale=1)
            list_md = gr.Markdown()
            refresh_btn = gr.Button("Refresh", scale=1)
        gallery = gr.Gallery(columns=6, height=400, allow_preview=False, object_fit="cover",
                             label="Captions (click to edit)")
        table = gr.Dataframe(headers=LIST_HEADERS, interactive=False, wrap=True, label="This page (click a row to edit)",
                             elem_id="captions-table", column_widths=["64px", "112px", "88px", "84px", "300px", "64px"],
                             max_height=480)
        ids = gr.State([])
    return page, list_md, refresh_btn, gallery, table, ids


def _editor_column():
    with gr.Column(scale=2, min_width=300, elem_id="captions-editor"):
        image = gr.Image(type="pil", format="png", interactive=False, label="Cropped frame (as trained)", height=320)
        info = gr.Markdown(elem_id="caption-info")
        frame_id = gr.Number(None, precision=0, label="Frame id", visible=False)
        version = gr.Number(None, precision=0, label="Version", visible=False)
        caption = gr.Textbox(lines=3, label="Caption (Ctrl+Enter: save and next)", elem_id="caption-box")
        prompt_md = gr.Markdown(elem_id="caption-prompt")
        with gr.Row():
            buttons = dict(
                prev=gr.Button("◀ Previous (Alt+↑)", elem_id="caption-prev"),
                save=gr.Button("Save", elem_id="caption-save"),
                save_next=gr.Button("Save & next (Ctrl+Enter)", variant="primary", elem_id="caption-save-next"),
                next=gr.Button("Skip ▶ (Alt+↓)", elem_id="caption-next"),
            )
        buttons["revert"] = gr.Button("Revert to the machine caption", size="sm")
    return [image, info, frame_id, version, caption, prompt_md], buttons


def _autocaption_panel(ui: CaptionsHandlers, stats_md, split, refresh_if_done):
    with gr.Accordion("Auto-caption", open=False):
        with gr.Row():
            model = gr.Dropdown([c for c, _ in CAPTIONERS], value=DEFAULT_CAPTIONER, allow_custom_value=True,
                                label="Captioner (Hub id or local folder)", scale=3, elem_id="captioner-model",
                                info="; ".join(f"{c.split('/')[-1]}: {d}" for c, d in CAPTIONERS))
            batch = gr.Number(8, precision=0, minimum=1, maximum=caption_jobs.MAX_BATCH, label="Batch size")
            max_length = gr.Slider(5, MAX_NEW_TOKENS_LIMIT, value=30, step=1, label="Length limit (tokens)")
        with gr.Row():
            prefix = gr.Textbox(label="Prompt prefix for the captioner (optional)", placeholder="a photo of")
            run_split = gr.Radio(["train", "test"], value="train", label="Frames",
                                 info="train: labeled frames; test: held-out frames")
            redo = gr.Checkbox(False, label="Caption again frames that already have a machine caption")
        with gr.Row():
            start_btn = gr.Button("Start captioning", variant="primary", elem_id="caption-start")
            cancel_btn = gr.Button("Cancel")
        progress_md = gr.Markdown(elem_id="caption-progress")
        timer = gr.Timer(1.0, active=False)
    start_btn.click(guarded(ui.start), inputs=[model, batch, prefix, max_length, run_split, redo],
                    outputs=[progress_md, timer], api_name="caption_start", **QUIET)
    ticked = timer.tick(guarded(ui.poll), inputs=[split], outputs=[progress_md, timer, stats_md],
                        api_name="caption_progress", **QUIET).then(**refresh_if_done)
    cancel_btn.click(guarded(ui.cancel), outputs=progress_md, api_name="caption_cancel", **QUIET)
    return progress_md, timer, ticked


def _template_panel(ui: CaptionsHandlers, stats_md, split, refresh, demo: gr.Blocks) -> None:
    with gr.Accordion("Training prompt template", open=False):
        with gr.Row():
            template = gr.Textbox(label="Template ({shot}, {caption})", scale=4)
            template_btn = gr.Button("Save template")
        template_md = gr.Markdown()
    template_btn.click(guarded(ui.save_template), inputs=[template, split], outputs=[template, template_md, stats_md],
                       api_name="caption_template", **QUIET).then(**refresh)
    demo.load(guarded(ui.current_template), None, template, api_visibility="private", **QUIET)


def _bulk_panel(ui: CaptionsHandlers, stats_md, filters, refresh) -> None:
    with gr.Accordion("Bulk edit (with preview)", open=False):
        with gr.Row():
            find = gr.Textbox(label="Find")
            replace = gr.Textbox(label="Replace with")
            regex = gr.Checkbox(False, label="Regular expression", info="time-limited to 2 s")
            replace_preview_btn = gr.Button("Preview replace")
        with gr.Row():
            terms = gr.Textbox(", ".join(SHOT_TERMS), label="Shot words to strip (comma-separated)", scale=4)
            strip_preview_btn = gr.Button("Preview strip")
        bulk_table = gr.Dataframe(headers=BULK_HEADERS, interactive=False, wrap=True, elem_id="captions-bulk-table",
                                  column_widths=["64px", "46%", "46%"], max_height=420)
        with gr.Row():
            bulk_md = gr.Markdown(elem_id="captions-bulk-note")
            apply_replace_btn = gr.Button("Apply replace", variant="stop")
            apply_strip_btn = gr.Button("Apply strip", variant="stop")
        previewed = gr.State(None)
    inputs = [find, replace, regex, terms, *filters]
    for kind, preview_btn, apply_btn in (("replace", replace_preview_btn, apply_replace_btn),
                                         ("strip", strip_preview_btn, apply_strip_btn)):
        preview_btn.click(guarded(getattr(ui, f"{kind}_preview")), inputs=inputs,
                          outputs=[bulk_table, bulk_md, previewed], api_name=f"caption_{kind}_preview", **QUIET)
        apply_btn.click(guarded(getattr(ui, f"{kind}_apply")), inputs=[*inputs, previewed],
                        outputs=[bulk_table, bulk_md, previewed, stats_md], api_name=f"caption_{kind}_apply",
                        **QUIET).then(**refresh)


def _wire_editor(ui: CaptionsHandlers, editor, buttons, filters, stats_md, refresh) -> None:
    _, _, frame_id, version, caption, prompt_md = editor
    split, with_stats = filters[0], [*editor, stats_md]
    frame_id.submit(guarded(ui.open_frame), inputs=[frame_id], outputs=editor, api_name="caption_open", **QUIET)
    # .change, not .input: Gradio 6 sends no input event for a deletion (Backspace, cut, select-all +
    # Delete), so the prompt and token count stayed those of the longer text
    caption.change(guarded(ui.prompt_preview), inputs=[frame_id, caption], outputs=prompt_md,
                   api_name="caption_prompt", trigger_mode="always_last", **QUIET)
    buttons["save"].click(guarded(ui.save), inputs=[frame_id, caption, version, split], outputs=with_stats,
                          api_name="caption_save", **QUIET).then(**refresh)
    buttons["save_next"].click(guarded(ui.save_next), inputs=[frame_id, caption, version, *filters],
                               outputs=with_stats, api_name="caption_save_next", **QUIET).then(
        None, js=FOCUS_JS).then(**refresh)
    for name in ("next", "prev"):
        buttons[name].click(guarded(getattr(ui, name)), inputs=[frame_id, caption, version, *filters],
                            outputs=editor, api_name=f"caption_{name}", **QUIET).then(None, js=FOCUS_JS).then(**refresh)
    buttons["revert"].click(guarded(ui.revert), inputs=[frame_id, split], outputs=with_stats,
                            api_name="caption_revert", **QUIET).then(**refresh)


def build(studio, demo: gr.Blocks) -> None:
    ui = CaptionsHandlers(studio)
    stats_md = gr.Markdown(elem_id="captions-stats")
    accordions = gr.Column()  # filled below, once the filters exist
    filters = _filters_row(studio)
    with gr.Row():
        page, list_md, refresh_btn, gallery, table, ids = _list_column()
        editor, buttons = _editor_column()

    list_outputs = [gallery, table, ids, list_md, page, stats_md]
    show_list = dict(fn=guarded(ui.list_page), inputs=[*filters, page], outputs=list_outputs, **QUIET)
    refresh = dict(**show_list, api_visibility="private")
    refresh_if_done = dict(fn=guarded(ui.list_if_finished), inputs=[*filters, page], outputs=list_outputs,
                           api_visibility="private", **QUIET)
    with accordions:
        progress_md, timer, ticked = _autocaption_panel(ui, stats_md, filters[0], refresh_if_done)
        _template_panel(ui, stats_md, filters[0], refresh, demo)
        _bulk_panel(ui, stats_md, filters, refresh)
    # the caption the run just wrote for the open frame appears in the editor (unless someone typed there)
    ticked.then(guarded(ui.editor_if_finished), inputs=[editor[2], editor[4]], outputs=editor,
                api_visibility="private", **QUIET)

    refresh_btn.click(**show_list, api_name="captions_list")
    first = dict(fn=guarded(ui.first), inputs=filters, outputs=editor, api_visibility="private", **QUIET)
    for comp in filters[:3] + filters[4:]:
        comp.change(**refresh).then(**first)
    filters[3].submit(**refresh).then(**first)
    page.submit(**refresh)
    for comp, handler in ((gallery, ui.select_thumb), (table, ui.select_row)):
        comp.select(guarded(handler), inputs=[ids], outputs=editor, api_visibility="private", **QUIET).then(
            None, js=FOCUS_JS)
    _wire_editor(ui, editor, buttons, filters, stats_md, refresh)
    # a run started before this page was opened (or reloaded) shows its progress at once
    demo.load(**refresh).then(**first).then(guarded(ui.poll), inputs=[filters[0]],
                                            outputs=[progress_md, timer, stats_md], api_visibility="private", **QUIET)
