"""The Captions tab's handlers: each takes the values of named inputs (the order is the endpoint's
argument order), checks the caller's role itself and returns the outputs. Testable without a running
app; ``tab.build`` only lays out the components and wires these methods to them.

A refusal raises a DreamShotError (``dreamshot.ui.guarded`` shows it as a toast, API clients get it
as an error); the tab wires the editor events with ``show_progress="hidden"`` so a refusal leaves
every output as it was.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr

from dreamshot.errors import InvalidInput
from dreamshot.ui import admin_name

from labeling.captions import bulk
from labeling.captions import jobs as caption_jobs
from labeling.captions import service as captions
from labeling.captions import sources as caption_sources
from labeling.captions.captioner import DEFAULT_CAPTIONER
from labeling.captions.tokens import CLIP_MAX_TOKENS

PAGE_SIZE = 40
# The poll that first sees a run ended refreshes the list and the editor. It is the last tick (the
# timer stops then), so the window only has to outlast a busy server's queue, not a second.
FINISHED_WINDOW_S = 120.0
EDITOR_IMAGE = 384
LIST_HEADERS = ["frame", "shot", "reviewed", "changed", "caption", "tokens"]
BULK_HEADERS = ["frame", "before", "after"]


@dataclass(frozen=True)
class Filters:
    """The filter row above the list (split, shot type, not yet reviewed, search, over 77 tokens)."""
    split: str = "train"
    shot: str | None = "all"
    unreviewed: bool = False
    search: str = ""
    too_long: bool = False

    def caption_filter(self) -> captions.CaptionFilter:
        return captions.CaptionFilter(
            split=self.split or "train", shot=None if self.shot in (None, "", "all") else self.shot,
            unreviewed=bool(self.unreviewed), search=self.search or "", too_long=bool(self.too_long)).check()


def _version(version) -> int | None:
    return None if version is None else int(version)


# What the bulk-edit boxes asked for, by the names people see (a preview remembers it).
_FORM_NAMES = {"find": "The Find box", "replace": "The Replace box", "regex": "The Regular expression box",
               "terms": "The shot words", "filters": "The filters above the list"}


def _form_of(kind: str, find, replace, regex, terms, filters: Filters) -> dict:
    boxes = (dict(find=find or "", replace=replace or "", regex=bool(regex)) if kind == "replace"
             else dict(terms=terms or ""))
    return {**boxes, "filters": [filters.split or "train", filters.shot or "all", bool(filters.unreviewed),
                                 filters.search or "", bool(filters.too_long)]}


def _changed_since(previewed, now: dict) -> str | None:
    """The first box that differs from what the preview was made with (None: the same; a preview
    from before previews remembered their boxes: nothing to compare)."""
    then = previewed[2] if len(previewed) > 2 else None
    if not then:
        return None
    return next((_FORM_NAMES[k] for k in now if then.get(k) != now[k]), None)


def _edit_text(kind: str, find, replace, regex, terms) -> str:
    if kind == "replace":
        what = f"/{find}/" if regex else f"“{find}”"
        return f"replace {what} with “{replace or ''}”"
    words = [t.strip() for t in (terms or "").split(",") if t.strip()]
    shown = ", ".join(words[:4]) + (f" and {len(words) - 4} more" if len(words) > 4 else "")
    return f"strip the shot words ({shown or 'the default list'})"


class CaptionsHandlers:
    def __init__(self, studio):
        self.studio = studio

    # ---- shared pieces ---------------------------------------------------------------------------
    def stats_line(self, split: str, views=None) -> str:
        views = captions.all_captions(self.studio, split or "train") if views is None else views
        return captions.stats_of(views).markdown()

    def prompt_line(self, shot: str | None, text: str | None) -> str:
        try:
            preview = captions.prompt_preview(self.studio, shot, text)
        except InvalidInput as exc:
            return f"⚠ {html.escape(str(exc))}"
        if preview.prompt is None:
            return "*No training prompt yet (needs a shot label and a caption).*"
        warn = (f" ⚠ **over CLIP's {CLIP_MAX_TOKENS}: the end is cut off in training**" if preview.too_long else "")
        return (f"Training prompt: `` {preview.prompt} ``  \n"
                f"{preview.tokens}/{CLIP_MAX_TOKENS} CLIP tokens{warn}")

    def editor(self, view: captions.CaptionView | None, note: str = "") -> tuple:
        """(image, info, frame id, version, caption, prompt line) for the editor column."""
        if view is None:
            return (None, note or "*Nothing to edit with these filters.*", None, None, "", "")
        image = caption_sources.frame_image(self.studio, view.frame_id, size=EDITOR_IMAGE)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(view.edited_at)) if view.edited_at else ""
        how = {"bulk": " (bulk edit)"}.get(view.edit_kind or "", "")
        who = (f"saved by **{html.escape(view.edited_by)}**{how} {when}" if view.edited_by
               else "machine caption, not edited")
        state = "reviewed" if view.reviewed else "**not yet reviewed**"
        original = html.escape(view.caption_original or "(none yet)")
        by_model = f" ({html.escape(view.model.rstrip('/').split('/')[-1])})" if view.model else ""
        info = (f"Frame **{view.frame_id}** · {html.escape(view.shot_label)} · {view.split} · {state} · {who}  \n"
                f"Machine caption{by_model}: *{original}*" + (f"  \n{note}" if note else ""))
        return (image, info, view.frame_id, view.version, view.caption or "", self.prompt_line(view.shot, view.caption))

    # ---- list ------------------------------------------------------------------------------------
    def list_page(self, split: str, shot: str, unreviewed: bool, search: str, too_long: bool, page: float | None,
                  request: gr.Request = None) -> tuple:
        """(thumbnails, table rows, frame ids, info, page, stats) of one page of the filtered list."""
        admin_name(self.studio, request)
        flt = Filters(split, shot, unreviewed, search, too_long).caption_filter()
        every = captions.all_captions(self.studio, flt.split)
        views = captions.filter_views(every, flt)
        pages = max(1, -(-len(views) // PAGE_SIZE))
        page = min(max(1, int(page or 1)), pages)
        chunk = views[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        thumbs = caption_sources.thumbnails(self.studio).get(v.frame_id for v in chunk)
        items = [(im, f"#{v.frame_id} {v.shot_label}{' ✓' if v.reviewed else ''}") for im, v in zip(thumbs, chunk)]
        table = [[v.frame_id, v.shot_label, "✓" if v.reviewed else "",
                  {"hand": "✎", "bulk": "✎ bulk"}.get(v.edit_kind or "", "✎") if v.changed else "",
                  v.caption or "(no caption)", f"{v.tokens}{' ⚠' if v.too_long else ''}" if v.tokens else ""]
                 for v in chunk]
        info = f"{len(views)} captions match · page {page}/{pages}"
        return items, table, [v.frame_id for v in chunk], info, page, self.stats_line(flt.split, every)

    def list_if_finished(self, split: str, shot: str, unreviewed: bool, search: str, too_long: bool,
                         page: float | None, request: gr.Request = None) -> tuple:
        """After a poll: refresh the list once, when a captioning run has just ended."""
        if not caption_jobs.service(self.studio).just_finished(within_s=FINISHED_WINDOW_S):
            return tuple(gr.skip() for _ in range(6))
        return self.list_page(split, shot, unreviewed, search, too_long, page, request)

    def editor_if_finished(self, frame_id: float | None, text: str, request: gr.Request = None) -> tuple:
        """After a poll: when a captioning run has just ended, the open frame again, with the caption
        the run wrote; left alone when someone has typed in the editor."""
        admin_name(self.studio, request)
        if (frame_id is None or (text or "").strip()
                or not caption_jobs.service(self.studio).just_finished(within_s=FINISHED_WINDOW_S)):
            return tuple(gr.skip() for _ in range(6))
        return self.editor(captions.get_caption(self.studio, frame_id))

    # ---- editor ------------------------------------------------------------------------------------
    def open_frame(self, frame_id: float | None, request: gr.Request = None) -> tuple:
        admin_name(self.studio, request)
        return self.editor(None if frame_id is None else captions.get_caption(self.studio, frame_id))

    def select_thumb(self, ids: list[int], evt: gr.SelectData, request: gr.Request = None) -> tuple:
        admin_name(self.studio, request)
        return self.editor(captions.get_caption(self.studio, ids[evt.index]))

    def select_row(self, ids: list[int], evt: gr.SelectData, request: gr.Request = None) -> tuple:
        admin_name(self.studio, request)
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return self.editor(captions.get_caption(self.studio, ids[row]))

    def first(self, split: str, shot: str, unreviewed: bool, search: str, too_long: bool,
              request: gr.Request = None) -> tuple:
        admin_name(self.studio, request)
        flt = Filters(split, shot, unreviewed, search, too_long).caption_filter()
        return self.editor(captions.neighbour(captions.list_captions(self.studio, flt), None, 1))

    def _move(self, step: int, frame_id, text: str, version, filters: Filters, request) -> tuple:
        """Previous/next caption. Text typed but not saved is saved first (nothing typed is lost);
        an untouched caption is left as it was (not marked reviewed)."""
        editor = admin_name(self.studio, request)
        flt, note = filters.caption_filter(), ""
        current = None if frame_id is None else captions.frame_ref(frame_id)
        if current is not None and (text or "").strip():
            if captions.clean_text(text) != (captions.get_caption(self.studio, current).caption or ""):
                captions.edit_caption(self.studio, captions.EditRequest(current, text, editor, _version(version)))
                note = f"Saved frame {current} ✓"
        views = captions.list_captions(self.studio, flt)
        return self.editor(captions.neighbour(views, current, step), note)

    def next(self, frame_id: float | None, text: str, version: float | None, split: str, shot: str,
             unreviewed: bool, search: str, too_long: bool, request: gr.Request = None) -> tuple:
        return self._move(1, frame_id, text, version, Filters(split, shot, unreviewed, search, too_long), request)

    def prev(self, frame_id: float | None, text: str, version: float | None, split: str, shot: str,
             unreviewed: bool, search: str, too_long: bool, request: gr.Request = None) -> tuple:
        return self._move(-1, frame_id, text, version, Filters(split, shot, unreviewed, search, too_long), request)

    def prompt_preview(self, frame_id: float | None, text: str, request: gr.Request = None) -> str:
        admin_name(self.studio, request)
        if frame_id is None:
            return ""
        return self.prompt_line(captions.get_caption(self.studio, frame_id).shot, text)

    def save(self, frame_id: float | None, text: str, version: float | None, split: str,
             request: gr.Request = None) -> tuple:
        editor = admin_name(self.studio, request)
        view = captions.edit_caption(self.studio, captions.EditRequest(
            captions.frame_ref(frame_id), text, editor, _version(version)))
        return (*self.editor(view, "Saved ✓"), self.stats_line(split))

    def save_next(self, frame_id: float | None, text: str, version: float | None, split: str, shot: str,
                  unreviewed: bool, search: str, too_long: bool, request: gr.Request = None) -> tuple:
        editor = admin_name(self.studio, request)
        flt = Filters(split, shot, unreviewed, search, too_long).caption_filter()
        fid = captions.frame_ref(frame_id)
        captions.edit_caption(self.studio, captions.EditRequest(fid, text, editor, _version(version)))
        every = captions.all_captions(self.studio, flt.split)
        nxt = captions.neighbour(captions.filter_views(every, flt), fid, 1)
        if nxt is not None and nxt.frame_id == fid:
            nxt = None
        return (*self.editor(nxt, f"Saved frame {fid} ✓"), self.stats_line(flt.split, every))

    def revert(self, frame_id: float | None, split: str, request: gr.Request = None) -> tuple:
        admin_name(self.studio, request)
        view = captions.revert_caption(self.studio, frame_id)
        return (*self.editor(view, "Back to the machine caption"), self.stats_line(split))

    # ---- auto-caption ------------------------------------------------------------------------------
    def start(self, model: str, batch: float | None, prefix: str, max_length: float | None, split: str,
              redo: bool, request: gr.Request = None) -> tuple:
        admin_name(self.studio, request)
        req = caption_jobs.CaptionRequest(model=(model or DEFAULT_CAPTIONER).strip(), batch_size=int(batch or 8),
                                          prefix=prefix or "", max_new_tokens=int(max_length or 30),
                                          split=split or "train", redo=bool(redo))
        return caption_jobs.service(self.studio).start(req).summary(), gr.Timer(active=True)

    def poll(self, split: str, request: gr.Request = None) -> tuple:
        admin_name(self.studio, request)
        p = caption_jobs.service(self.studio).snapshot()
        return p.summary(), gr.Timer(active=p.running), self.stats_line(split)

    def cancel(self, request: gr.Request = None) -> str:
        admin_name(self.studio, request)
        worker = caption_jobs.service(self.studio)
        return "Cancelling after the current batch ..." if worker.cancel() else worker.snapshot().summary()

    # ---- template and bulk ---------------------------------------------------------------------------
    def current_template(self, request: gr.Request = None) -> str:
        admin_name(self.studio, request)
        return self.studio.project.template()

    def save_template(self, template: str, split: str, request: gr.Request = None) -> tuple:
        admin_name(self.studio, request)
        saved = self.studio.project.set_template(template)
        return saved, f"Template saved: `{saved}`", self.stats_line(split)

    def _changes(self, kind: str, find: str, replace: str, regex: bool, terms: str, filters: Filters):
        flt = filters.caption_filter()
        if kind == "replace":
            return bulk.preview_replace(self.studio, find or "", replace or "", flt, regex=bool(regex))
        return bulk.preview_strip(self.studio, flt, [t for t in (terms or "").split(",") if t.strip()] or None)

    def _preview(self, kind: str, find, replace, regex, terms, filters: Filters, request) -> tuple:
        admin_name(self.studio, request)
        changes = self._changes(kind, find, replace, regex, terms, filters)
        rows = [[c.frame_id, c.before, c.after] for c in changes]
        note = (f"{len(changes)} captions would change ({_edit_text(kind, find, replace, regex, terms)}). "
                f"Check them, then Apply {kind}." if changes else "Nothing would change.")
        return rows, note, (kind, changes, _form_of(kind, find, replace, regex, terms, filters))

    def _apply(self, kind: str, find, replace, regex, terms, filters: Filters, previewed, request) -> tuple:
        """Applies the preview of this kind when the boxes still show what was previewed; refuses when
        they changed since (the table shows another edit than the boxes); without a preview, the
        edit the boxes show."""
        editor = admin_name(self.studio, request)
        if previewed and previewed[0] == kind:
            changed = _changed_since(previewed, _form_of(kind, find, replace, regex, terms, filters))
            if changed:
                raise InvalidInput(f"{changed} changed since the preview: press Preview {kind} again, check the "
                                   f"list, then Apply {kind}. Nothing was changed.")
            changes = previewed[1]
        else:
            changes = self._changes(kind, find, replace, regex, terms, filters)
        result = bulk.apply_changes(self.studio, changes, editor)
        note = (f"Applied to {result.applied} caption{'' if result.applied == 1 else 's'}: "
                f"{_edit_text(kind, find, replace, regex, terms)} (recorded as bulk edits).")
        if result.conflicts:
            note += f" {len(result.conflicts)} changed since the preview and were left alone: {result.conflicts[:10]}"
        return [], note, None, self.stats_line(filters.split)

    def replace_preview(self, find: str, replace: str, regex: bool, terms: str, split: str, shot: str,
                        unreviewed: bool, search: str, too_long: bool, request: gr.Request = None) -> tuple:
        filters = Filters(split, shot, unreviewed, search, too_long)
        return self._preview("replace", find, replace, regex, terms, filters, request)

    def strip_preview(self, find: str, replace: str, regex: bool, terms: str, split: str, shot: str,
                      unreviewed: bool, search: str, too_long: bool, request: gr.Request = None) -> tuple:
        filters = Filters(split, shot, unreviewed, search, too_long)
        return self._preview("strip", find, replace, regex, terms, filters, request)

    def replace_apply(self, find: str, replace: str, regex: bool, terms: str, split: str, shot: str,
                      unreviewed: bool, search: str, too_long: bool, previewed=None,
                      request: gr.Request = None) -> tuple:
        filters = Filters(split, shot, unreviewed, search, too_long)
        return self._apply("replace", find, replace, regex, terms, filters, previewed, request)

    def strip_apply(self, find: str, replace: str, regex: bool, terms: str, split: str, shot: str,
                    unreviewed: bool, search: str, too_long: bool, previewed=None,
                    request: gr.Request = None) -> tuple:
        filters = Filters(split, shot, unreviewed, search, too_long)
        return self._apply("strip", find, replace, regex, terms, filters, previewed, request)
