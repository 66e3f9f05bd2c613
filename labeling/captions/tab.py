"""Captions tab: auto-caption the labeled frames in the background, then review and edit every
caption fast (thumbnail grid + editor with keyboard flow), bulk find/replace and shot-word strip with
a preview, the exact training prompt and its CLIP token count, and the edit rate.

Keyboard (while the tab is open): Ctrl+Enter = save (mark reviewed) and go to the next caption,
Alt+Down / Alt+Up = next / previous (typed changes are saved, an untouched caption stays unreviewed).
Every action is also a named endpoint (``api_name``).
"""

from __future__ import annotations

import html
import time
from collections import OrderedDict

import gradio as gr
import sqlalchemy as sa

from dreamshot import schema
from dreamshot.shots import get_taxonomy
from dreamshot.ui import admin_name, guarded

from labeling.captions import jobs as caption_jobs
from labeling.captions import sources as caption_sources
from labeling.captions import service as captions
from labeling.captions.captioner import CAPTIONERS, DEFAULT_CAPTIONER, MAX_NEW_TOKENS_LIMIT

PAGE_SIZE = 40
THUMB = 160

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


class CaptionsUi:
    """The tab's handlers; each checks the caller's role and takes plain values (API-friendly)."""

    def __init__(self, studio):
        self.studio = studio
        self.stats_md = None  # the edit-rate line, set by build()
        self._thumbs: OrderedDict[tuple, object] = OrderedDict()

    # ---- helpers ---------------------------------------------------------------------------
    def _filter(self, split, shot, unreviewed, search, too_long) -> captions.CaptionFilter:
        return captions.CaptionFilter(split=split or "train", shot=None if shot in (None, "", "all") else shot,
                                      unreviewed=bool(unreviewed), search=search or "", too_long=bool(too_long))

    def _thumb(self, frame_id: int, stamps: dict):
        """A small copy of the cropped frame, cached until its file or crop box changes."""
        key = (frame_id, stamps.get(frame_id, ""))
        image = self._thumbs.get(key)
        if image is None:
            image = caption_sources.frame_image(self.studio, frame_id)
            image.thumbnail((THUMB, THUMB))
            self._thumbs[key] = image
            while len(self._thumbs) > 2000:
                self._thumbs.popitem(last=False)
        return image

    def _stamps(self, ids) -> dict[int, str]:
        f = schema.frames
        with self.studio.db.read() as conn:
            rows = conn.execute(sa.select(f.c.id, f.c.path, f.c.crop_box).where(f.c.id.in_(list(ids)))).all()
        return {r.id: f"{r.path}|{r.crop_box}" for r in rows}

    def _stats(self, split, views=None) -> str:
        views = captions.all_captions(self.studio, split or "train") if views is None else views
        return captions.stats_of(views).markdown()

    def _prompt_md(self, view: captions.CaptionView | None, text: str | None = None) -> str:
        if view is None:
            return ""
        caption = view.caption if text is None else text
        prompt = captions.prompt_for(self.studio, view.shot, caption)
        if prompt is None:
            return "*No training prompt yet (needs a shot label and a caption).*"
        tokens = captions.token_counts([prompt])[0]
        warn = (f" ⚠ **over CLIP's {captions.CLIP_MAX_TOKENS}: the end is cut off in training**"
                if tokens > captions.CLIP_MAX_TOKENS else "")
        return f"Training prompt: `` {prompt} ``  \n{tokens}/{captions.CLIP_MAX_TOKENS} CLIP tokens{warn}"

    def _editor(self, view: captions.CaptionView | None, note: str = ""):
        if view is None:
            return (None, note or "*Nothing to edit with these filters.*", None, None, "", "")
        image = caption_sources.frame_image(self.studio, view.frame_id, size=384)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(view.edited_at)) if view.edited_at else ""
        who = (f"saved by **{html.escape(view.edited_by)}** {when}" if view.edited_by else "machine caption, not edited")
        state = "reviewed" if view.reviewed else "**not yet reviewed**"
        original = html.escape(view.caption_original or "(none yet)")
        by_model = f" ({html.escape(view.model.rstrip('/').split('/')[-1])})" if view.model else ""
        info = (f"Frame **{view.frame_id}** · {html.escape(view.shot_label)} · {view.split} · {state} · {who}  \n"
                f"Machine caption{by_model}: *{original}*" + (f"  \n{note}" if note else ""))
        return (image, info, view.frame_id, view.version, view.caption or "", self._prompt_md(view))

    def _neighbour(self, frame_id, flt, step: int, views=None) -> captions.CaptionView | None:
        views = captions.filter_views(captions.all_captions(self.studio, flt.split) if views is None else views, flt)
        if not views:
            return None
        if frame_id is None:
            return views[0]
        frame_id = int(frame_id)
        if step > 0:
            later = [v for v in views if v.frame_id > frame_id]
            return later[0] if later else views[0]
        earlier = [v for v in views if v.frame_id < frame_id]
        return earlier[-1] if earlier else views[-1]

    # ---- list / editor -----------------------------------------------------------------------
    def list_page(self, split, shot, unreviewed, search, too_long, page, request: gr.Request):
        admin_name(self.studio, request)
        flt = self._filter(split, shot, unreviewed, search, too_long).check()
        every = captions.all_captions(self.studio, flt.split)
        views = captions.filter_views(every, flt)
        pages = max(1, -(-len(views) // PAGE_SIZE))
        page = min(max(1, int(page or 1)), pages)
        chunk = views[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        stamps = self._stamps(v.frame_id for v in chunk)
        items = [(self._thumb(v.frame_id, stamps), f"#{v.frame_id} {v.shot_label}{' ✓' if v.reviewed else ''}")
                 for v in chunk]
        table = [[v.frame_id, v.shot_label, "✓" if v.reviewed else "", "✎" if v.changed else "",
                  v.caption or "(no caption)", f"{v.tokens}{' ⚠' if v.too_long else ''}" if v.tokens else ""]
                 for v in chunk]
        info = f"{len(views)} captions match · page {page}/{pages}"
        return items, table, [v.frame_id for v in chunk], info, page, self._stats(split, every)

    def list_if_finished(self, split, shot, unreviewed, search, too_long, page, request: gr.Request):
        """After a poll: refresh the list once, when a captioning run has just ended."""
        p = caption_jobs.worker().snapshot()
        if p.running or not p.finished_at or time.time() - p.finished_at > 5:  # the timer ticks every second
            return tuple(gr.skip() for _ in range(6))
        return self.list_page(split, shot, unreviewed, search, too_long, page, request)

    def open_frame(self, frame_id, request: gr.Request):
        admin_name(self.studio, request)
        if frame_id is None:
            return self._editor(None)
        return self._editor(captions.get_caption(self.studio, int(frame_id)))

    def select(self, ids, evt: gr.SelectData, request: gr.Request):
        admin_name(self.studio, request)
        return self._editor(captions.get_caption(self.studio, int(ids[evt.index])))

    def select_row(self, ids, evt: gr.SelectData, request: gr.Request):
        admin_name(self.studio, request)
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return self._editor(captions.get_caption(self.studio, int(ids[row])))

    def first(self, split, shot, unreviewed, search, too_long, request: gr.Request):
        admin_name(self.studio, request)
        return self._editor(self._neighbour(None, self._filter(split, shot, unreviewed, search, too_long), 1))

    def move(self, step, frame_id, text, version, split, shot, unreviewed, search, too_long, request: gr.Request):
        """Previous/next caption. Text typed but not saved is saved first (nothing typed is lost);
        an untouched caption is left as it was (not marked reviewed)."""
        editor = admin_name(self.studio, request)
        note = ""
        if frame_id is not None and (text or "").strip():
            current = captions.get_caption(self.studio, int(frame_id))
            if captions.clean_text(text) != (current.caption or ""):
                captions.edit_caption(self.studio, captions.EditRequest(
                    int(frame_id), text, editor, None if version is None else int(version)))
                note = f"Saved frame {int(frame_id)} ✓"
        flt = self._filter(split, shot, unreviewed, search, too_long)
        return self._editor(self._neighbour(frame_id, flt, step), note)

    def next(self, frame_id, text, version, split, shot, unreviewed, search, too_long, request: gr.Request):
        return self.move(1, frame_id, text, version, split, shot, unreviewed, search, too_long, request)

    def prev(self, frame_id, text, version, split, shot, unreviewed, search, too_long, request: gr.Request):
        return self.move(-1, frame_id, text, version, split, shot, unreviewed, search, too_long, request)

    def prompt_preview(self, frame_id, text, request: gr.Request):
        admin_name(self.studio, request)
        if frame_id is None:
            return ""
        return self._prompt_md(captions.get_caption(self.studio, int(frame_id)), text)

    def save(self, frame_id, text, version, split, request: gr.Request):
        editor = admin_name(self.studio, request)
        if frame_id is None:
            raise gr.Error("Open a caption first.")
        view = captions.edit_caption(self.studio, captions.EditRequest(
            int(frame_id), text, editor, None if version is None else int(version)))
        return (*self._editor(view, "Saved ✓"), self._stats(split))

    def save_next(self, frame_id, text, version, split, shot, unreviewed, search, too_long, request: gr.Request):
        editor = admin_name(self.studio, request)
        if frame_id is None:
            raise gr.Error("Open a caption first.")
        captions.edit_caption(self.studio, captions.EditRequest(
            int(frame_id), text, editor, None if version is None else int(version)))
        flt = self._filter(split, shot, unreviewed, search, too_long).check()
        every = captions.all_captions(self.studio, flt.split)
        nxt = self._neighbour(frame_id, flt, 1, every)
        if nxt is not None and nxt.frame_id == int(frame_id):
            nxt = None
        return (*self._editor(nxt, f"Saved frame {int(frame_id)} ✓"), self._stats(split, every))

    def revert(self, frame_id, split, request: gr.Request):
        admin_name(self.studio, request)
        if frame_id is None:
            raise gr.Error("Open a caption first.")
        return (*self._editor(captions.revert_caption(self.studio, int(frame_id)), "Back to the machine caption"),
                self._stats(split))

    # ---- auto-caption ------------------------------------------------------------------------
    def start(self, model, batch, prefix, max_length, split, redo, request: gr.Request):
        admin_name(self.studio, request)
        req = caption_jobs.CaptionRequest(model=(model or DEFAULT_CAPTIONER).strip(), batch_size=int(batch or 8),
                                          prefix=prefix or "", max_new_tokens=int(max_length or 30),
                                          split=split or "train", redo=bool(redo))
        progress = caption_jobs.worker().start(self.studio, req)
        return progress.summary(), gr.Timer(active=True)

    def poll(self, split, request: gr.Request):
        admin_name(self.studio, request)
        p = caption_jobs.worker().snapshot()
        return p.summary(), gr.Timer(active=p.running), self._stats(split)

    def cancel(self, request: gr.Request):
        admin_name(self.studio, request)
        if caption_jobs.worker().cancel():
            return "Cancelling after the current batch ..."
        return caption_jobs.worker().snapshot().summary()

    # ---- template and bulk -------------------------------------------------------------------
    def save_template(self, template, split, request: gr.Request):
        admin_name(self.studio, request)
        saved = captions.set_template(self.studio, template)
        return saved, f"Template saved: `{saved}`", self._stats(split)

    def _bulk(self, kind, find, replace, regex, terms, flt):
        if kind == "replace":
            return captions.preview_replace(self.studio, find or "", replace or "", flt, regex=bool(regex))
        return captions.preview_strip(self.studio, flt, [t for t in (terms or "").split(",") if t.strip()] or None)

    def bulk_preview(self, kind, find, replace, regex, terms, split, shot, unreviewed, search, too_long,
                     request: gr.Request):
        admin_name(self.studio, request)
        changes = self._bulk(kind, find, replace, regex, terms, self._filter(split, shot, unreviewed, search, too_long))
        rows = [[c.frame_id, c.before, c.after] for c in changes]
        note = (f"{len(changes)} captions would change. Check them, then Apply {kind}." if changes
                else "Nothing would change.")
        return rows, note, (kind, changes)

    def bulk_apply(self, kind, find, replace, regex, terms, split, shot, unreviewed, search, too_long, previewed,
                   request: gr.Request):
        editor = admin_name(self.studio, request)
        changes = previewed[1] if previewed and previewed[0] == kind else self._bulk(
            kind, find, replace, regex, terms, self._filter(split, shot, unreviewed, search, too_long))
        result = captions.apply_changes(self.studio, changes, editor)
        note = f"Applied to {result.applied} captions."
        if result.conflicts:
            note += f" {len(result.conflicts)} changed since the preview and were left alone: {result.conflicts[:10]}"
        return [], note, None, self._stats(split)


def _autocaption_panel(ui: CaptionsUi, split, refresh_if_done):
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
                    outputs=[progress_md, timer], api_name="caption_start")
    timer.tick(guarded(ui.poll), inputs=[split], outputs=[progress_md, timer, ui.stats_md],
               api_name="caption_progress", show_progress="hidden").then(**refresh_if_done)
    cancel_btn.click(guarded(ui.cancel), outputs=progress_md, api_name="caption_cancel")
    return progress_md, timer


def _template_panel(ui: CaptionsUi, split, refresh) -> None:
    with gr.Accordion("Training prompt template", open=False):
        with gr.Row():
            template = gr.Textbox(value=lambda: captions.get_template(ui.studio),
                                  label="Template ({shot}, {caption})", scale=4)
            template_btn = gr.Button("Save template")
        template_md = gr.Markdown()
    template_btn.click(guarded(ui.save_template), inputs=[template, split],
                       outputs=[template, template_md, ui.stats_md], api_name="caption_template").then(**refresh)


def _bulk_panel(ui: CaptionsUi, filters, refresh) -> None:
    with gr.Accordion("Bulk edit (with preview)", open=False):
        with gr.Row():
            find = gr.Textbox(label="Find")
            replace = gr.Textbox(label="Replace with")
            regex = gr.Checkbox(False, label="Regular expression")
            replace_preview_btn = gr.Button("Preview replace")
        with gr.Row():
            terms = gr.Textbox(", ".join(captions.SHOT_TERMS), label="Shot words to strip (comma-separated)", scale=4)
            strip_preview_btn = gr.Button("Preview strip")
        bulk_table = gr.Dataframe(headers=["frame", "before", "after"], interactive=False, wrap=True)
        with gr.Row():
            bulk_md = gr.Markdown()
            apply_replace_btn = gr.Button("Apply replace", variant="stop")
            apply_strip_btn = gr.Button("Apply strip", variant="stop")
        previewed = gr.State(None)
    bulk_inputs = [find, replace, regex, terms, *filters]
    for kind, preview_btn, apply_btn in (("replace", replace_preview_btn, apply_replace_btn),
                                         ("strip", strip_preview_btn, apply_strip_btn)):
        kind_state = gr.State(kind)
        preview_btn.click(guarded(ui.bulk_preview), inputs=[kind_state, *bulk_inputs],
                          outputs=[bulk_table, bulk_md, previewed], api_name=f"caption_{kind}_preview")
        apply_btn.click(guarded(ui.bulk_apply), inputs=[kind_state, *bulk_inputs, previewed],
                        outputs=[bulk_table, bulk_md, previewed, ui.stats_md],
                        api_name=f"caption_{kind}_apply").then(**refresh)


def _filters_row(studio):
    shots = ["all"] + get_taxonomy(studio.db.get_setting("taxonomy")).names
    with gr.Row():
        split = gr.Radio(["train", "test"], value="train", label="Frames")
        shot = gr.Dropdown(shots, value="all", label="Shot type")
        unreviewed = gr.Checkbox(False, label="Not yet reviewed")
        too_long = gr.Checkbox(False, label="Over 77 tokens")
        search = gr.Textbox(label="Search captions", placeholder="text in the caption")
    return [split, shot, unreviewed, search, too_long]


def _list_column():
    with gr.Column(scale=3):
        with gr.Row():
            page = gr.Number(1, precision=0, minimum=1, label="Page", scale=1)
            list_md = gr.Markdown()
            refresh_btn = gr.Button("Refresh", scale=1)
        gallery = gr.Gallery(columns=6, height=400, allow_preview=False, object_fit="cover",
                             label="Captions (click to edit)")
        table = gr.Dataframe(headers=["frame", "shot", "reviewed", "changed", "caption", "tokens"],
                             interactive=False, wrap=True, label="This page (click a row to edit)",
                             elem_id="captions-table")
        ids = gr.State([])
    return page, list_md, refresh_btn, gallery, table, ids


def _editor_column():
    with gr.Column(scale=2, elem_id="captions-editor"):
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


def _wire_editor(ui: CaptionsUi, editor, buttons, filters, refresh) -> None:
    _, _, frame_id, version, caption, prompt_md = editor
    split, with_stats = filters[0], [*editor, ui.stats_md]
    frame_id.submit(guarded(ui.open_frame), inputs=[frame_id], outputs=editor, api_name="caption_open")
    caption.input(guarded(ui.prompt_preview), inputs=[frame_id, caption], outputs=prompt_md,
                  api_name="caption_prompt", trigger_mode="always_last", show_progress="hidden")
    buttons["save"].click(guarded(ui.save), inputs=[frame_id, caption, version, split], outputs=with_stats,
                          api_name="caption_save").then(**refresh)
    buttons["save_next"].click(guarded(ui.save_next), inputs=[frame_id, caption, version, *filters],
                               outputs=with_stats, api_name="caption_save_next").then(
        None, js=FOCUS_JS).then(**refresh)
    for name in ("next", "prev"):
        buttons[name].click(guarded(getattr(ui, name)), inputs=[frame_id, caption, version, *filters],
                            outputs=editor, api_name=f"caption_{name}").then(None, js=FOCUS_JS).then(**refresh)
    buttons["revert"].click(guarded(ui.revert), inputs=[frame_id, split], outputs=with_stats,
                            api_name="caption_revert").then(**refresh)


def build(studio, demo: gr.Blocks) -> None:
    ui = CaptionsUi(studio)
    ui.stats_md = gr.Markdown(elem_id="captions-stats")
    accordions = gr.Column()  # filled below, once the filters exist
    filters = _filters_row(studio)
    with gr.Row():
        page, list_md, refresh_btn, gallery, table, ids = _list_column()
        editor, buttons = _editor_column()

    list_outputs = [gallery, table, ids, list_md, page, ui.stats_md]
    show_list = dict(fn=guarded(ui.list_page), inputs=[*filters, page], outputs=list_outputs)
    refresh = dict(**show_list, api_visibility="private", show_progress="hidden")
    refresh_if_done = dict(fn=guarded(ui.list_if_finished), inputs=[*filters, page], outputs=list_outputs,
                           api_visibility="private", show_progress="hidden")
    with accordions:
        progress_md, timer = _autocaption_panel(ui, filters[0], refresh_if_done)
        _template_panel(ui, filters[0], refresh)
        _bulk_panel(ui, filters, refresh)

    refresh_btn.click(**show_list, api_name="captions_list")
    first = dict(fn=guarded(ui.first), inputs=filters, outputs=editor, api_visibility="private")
    for comp in filters[:3] + filters[4:]:
        comp.change(**show_list, api_visibility="private").then(**first)
    filters[3].submit(**show_list, api_visibility="private").then(**first)
    page.submit(**show_list, api_visibility="private")
    for comp, handler in ((gallery, ui.select), (table, ui.select_row)):
        comp.select(guarded(handler), inputs=[ids], outputs=editor, api_visibility="private").then(None, js=FOCUS_JS)
    _wire_editor(ui, editor, buttons, filters, refresh)

    root = demo
    if root is not None:
        # a run started before this page was opened (or reloaded) shows its progress at once
        root.load(**show_list, api_visibility="private").then(**first).then(
            guarded(ui.poll), inputs=[filters[0]], outputs=[progress_md, timer, ui.stats_md],
            api_visibility="private", show_progress="hidden")
