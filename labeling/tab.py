"""Label tab: import a pool, label with the keyboard, watch quotas and agreement, resolve
disagreements, export. Layout and wiring only; the handlers are ``LabelHandlers`` (labeling and its
API twins, here) and ``labeling.tab_admin.AdminHandlers`` (import, settings, stats, export); the page
parts (keyboard script, frame and quota HTML) are in ``labeling.tab_html``.

Once a pool exists the tab opens on labeling: the Import panel is folded away on page load.

The labeling keys run without the queue (``queue=False``, for speed), and Gradio shows no toast for
an error of such an event: a refusal ("type your name first", "no frame to label") is written into
the frame area instead, over the annotator's current frame (``LabelHandlers.inline``).

Above the frame an annotator chooses their queue: **train** or **held-out** frames (held-out ones
are labeled in their own queue, marked as such, never counted in quotas) and the **order** (random,
uncertain first, fill the emptiest quota first, or review the frames the model calls a class); the
choice is kept per annotator. The model's suggestion and its confidence are shown over the frame;
**Enter** accepts it. The *Suggestions* panel (``labeling.suggest.tab``) holds the model's state,
settings, pre-labels and measurements.

Endpoints (gradio_client): label_import, label_settings, label_view, label_action (a class, reject,
skip or accept), label_queue, label_undo, label_nudge, label_stats, label_show_frame, label_resolve,
label_export; the Suggestions panel's are listed there.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from dreamshot.access import clean_name
from dreamshot.errors import DreamShotError, InvalidInput
from dreamshot.inputs import whole_number
from dreamshot.shots import PRESETS
from dreamshot.ui import QUIET, admin_name, guarded

from labeling import annotate, clips, labels
from labeling.annotate import FrameView
from labeling.sampler import SPLITS
from labeling.suggest import orders
from labeling.suggest import tab as suggest_tab
from labeling.tab_admin import AdminHandlers, build_export, build_import, build_settings, build_stats
from labeling.tab_html import HEAD, frame_html, notice_html, progress_html, prompt_html

__all__ = ["HEAD", "LabelHandlers", "build"]

MAX_SLOTS = max(len(t.classes) for t in PRESETS.values())
NUDGES = (("◀", "left"), ("▶", "right"), ("▲", "up"), ("▼", "down"), ("center", "center"), ("auto", "auto"))


def _frame_id(value) -> int | None:
    if value in (None, ""):
        return None
    return whole_number(value, "The frame id")


def view_dict(view: FrameView) -> dict:
    """The JSON answer of the label_* endpoints."""
    p, last, s = view.progress, view.last, view.suggestion
    return {"annotator": view.annotator, "frame_id": view.frame_id, "box": view.box, "message": view.message,
            "remaining": view.remaining, "counts": p.counts, "extras": p.extras, "quotas": p.quotas,
            "rejects": p.rejects, "disagreements": p.disagreements, "all_quotas_met": p.all_met,
            "held_out": p.held_out, "queue": {"frames": view.queue.split, "order": view.queue.order},
            "suggestion": None if s is None else {
                "shot": s.shot if s.shown else None, "confidence": s.confidence if s.shown else None,
                "shown": s.shown, "origin": s.origin, "model_labels": s.model_labels},
            "last_action": None if last is None else {
                "frame_id": last.frame_id, "action": last.action, "shot": last.shot,
                "duplicate": last.duplicate, "relabeled_from": last.relabeled_from, "restored": last.restored}}


class LabelHandlers:
    """Keyboard labeling: each method takes the annotator's name (or the logged-in user), the frame
    id shown and the action, and returns (frame HTML, quota HTML, frame id)."""

    def __init__(self, studio):
        self.studio = studio
        self._clip_dir: Path | None = None

    @property
    def service(self) -> annotate.Annotation:
        return annotate.service(self.studio)

    def annotator(self, name: str | None, request: gr.Request | None) -> str:
        admin_name(self.studio, request)
        username = getattr(request, "username", None) if request is not None else None
        if username:
            return clean_name(username)
        if not (name or "").strip():
            raise InvalidInput("Type your name first: each annotator gets their own queue.")
        return clean_name(name)

    @staticmethod
    def outputs(view: FrameView) -> tuple[str, str, int | None]:
        return frame_html(view), progress_html(view.progress, view.queue.split), view.frame_id

    def queue_fields(self, who: str | None) -> tuple[dict, dict]:
        """The Frames radio and the Order dropdown (its choices follow the taxonomy) for an annotator."""
        key = self.service.queue_of(who) if who else annotate.TRAIN
        choices = orders.choices(labels.current_taxonomy(self.studio))
        return gr.update(value=key.split), gr.update(choices=choices, value=key.order)

    def slot_buttons(self) -> list[dict]:
        taxonomy = labels.current_taxonomy(self.studio)
        return [gr.update(value=f"{c.label}  [{c.key}]", visible=True) for c in taxonomy.classes] + \
            [gr.update(visible=False)] * (MAX_SLOTS - len(taxonomy.classes))

    # ---- UI events ---------------------------------------------------------------------------
    def on_load(self, stored: str, request: gr.Request):
        """Page load: the stored (or logged-in) annotator's current frame, and the class buttons."""
        buttons = self.slot_buttons()
        who = getattr(request, "username", None) or stored or ""
        if not who:
            return (prompt_html(labels.current_taxonomy(self.studio)), progress_html(labels.progress(self.studio)), None,
                    gr.update(), *buttons, *self.queue_fields(None))
        who = self.annotator(who, request)
        return (*self.outputs(self.service.view(who)), who, *buttons, *self.queue_fields(who))

    def start(self, name: str, request: gr.Request):
        who = self.annotator(name, request)
        return (*self.outputs(self.service.view(who)), who, who, *self.queue_fields(who))

    def set_queue(self, name: str, split: str, order: str, request: gr.Request | None):
        return self.outputs(self.service.set_queue(self.annotator(name, request), split, order))

    def act(self, name: str, frame_id, action: str, request: gr.Request | None):
        return self.outputs(self.service.act(self.annotator(name, request), _frame_id(frame_id), action))

    def act_slot(self, slot: int, name: str, frame_id, request: gr.Request | None):
        taxonomy = labels.current_taxonomy(self.studio)
        if slot >= len(taxonomy.classes):
            raise InvalidInput("This class is not in the current taxonomy; reload the page.")
        return self.act(name, frame_id, taxonomy.classes[slot].name, request)

    def undo(self, name: str, request: gr.Request):
        return self.outputs(self.service.undo(self.annotator(name, request)))

    def nudge(self, name: str, frame_id, direction: str, request: gr.Request | None):
        return self.outputs(self.service.nudge(self.annotator(name, request), _frame_id(frame_id), direction))

    def refusal(self, name: str | None, message: str, request: gr.Request | None) -> tuple:
        """A refused key or button: the message over the annotator's current frame (or alone when
        there is no annotator yet), so the page says why nothing happened."""
        try:
            who = self.annotator(name, request)
            view = self.service.view(who, message)
            if view.frame_id is None:  # nothing left for them: say that rather than what was refused
                view = self.service.view(who)
        except DreamShotError:
            return notice_html(message, labels.current_taxonomy(self.studio)), \
                progress_html(labels.progress(self.studio)), None
        return self.outputs(view)

    def inline(self, fn):
        """``guarded(fn)`` whose refusals are shown in the frame area (see the module docstring)."""
        safe = guarded(fn)

        @functools.wraps(fn)
        def run(*args):  # (name, [frame id,] request): every event's request comes last
            try:
                return safe(*args)
            except gr.Error as exc:
                return self.refusal(args[0], exc.message, args[-1])
        return run

    def slot_event(self, slot: int):
        def act(name, frame_id, request: gr.Request):
            return self.act_slot(slot, name, frame_id, request)
        return self.inline(act)

    def action_event(self, action: str):
        def act(name, frame_id, request: gr.Request):
            return self.act(name, frame_id, action, request)
        return self.inline(act)

    def nudge_event(self, direction: str):
        def nudge(name, frame_id, request: gr.Request):
            return self.nudge(name, frame_id, direction, request)
        return self.inline(nudge)

    def refresh(self, name: str, request: gr.Request):
        """After an import or new settings: the frame, the class keys and the quota bars again (the
        queues were rebuilt, the quotas or the taxonomy may have changed)."""
        if not (name or "").strip() and not getattr(request, "username", None):
            admin_name(self.studio, request)
            return prompt_html(labels.current_taxonomy(self.studio)), progress_html(labels.progress(self.studio)), None
        return self.outputs(self.service.view(self.annotator(name, request)))

    def shot_clip(self, name: str, frame_id, request: gr.Request | None) -> str:
        """The short clip of the shown frame's shot (frames imported from a video); labeling the
        frame labels its clip."""
        self.annotator(name, request)
        fid = _frame_id(frame_id)
        if fid is None:
            raise InvalidInput("No frame is shown: type your name and start labeling first.")
        path = clips.frame_clip(self.studio, fid)
        if path is None:
            raise InvalidInput("This frame is a still (not imported from a video): it has no shot clip.")
        # The data folder is never served: the browser gets a copy (named by content, so one per clip).
        if self._clip_dir is None:
            self._clip_dir = Path(tempfile.mkdtemp(prefix="dreamshot-label-clips-"))
        shown = self._clip_dir / path.name
        if not shown.exists():
            shutil.copyfile(path, shown)
        return str(shown)

    # ---- API twins (JSON in, JSON out) --------------------------------------------------------------
    def label_view(self, annotator: str, request: gr.Request) -> dict:
        return view_dict(self.service.view(self.annotator(annotator, request)))

    def label_action(self, annotator: str, frame_id: int, action: str, request: gr.Request) -> dict:
        """action: a class name of the taxonomy, 'reject' or 'skip'. A different class on a frame
        you labeled before relabels it (``last_action.relabeled_from``)."""
        return view_dict(self.service.act(self.annotator(annotator, request), _frame_id(frame_id), action))

    def label_queue(self, annotator: str, frames: str = "train", order: str = "random",
                    request: gr.Request = None) -> dict:
        """frames: 'train' or 'test' (held-out); order: random, uncertain, quota or class:<shot type>."""
        return view_dict(self.service.set_queue(self.annotator(annotator, request), frames, order))

    def label_undo(self, annotator: str, request: gr.Request) -> dict:
        return view_dict(self.service.undo(self.annotator(annotator, request)))

    def label_nudge(self, annotator: str, frame_id: int, direction: str, request: gr.Request) -> dict:
        """direction: left, right, up, down, center or auto."""
        return view_dict(self.service.nudge(self.annotator(annotator, request), _frame_id(frame_id), direction))


def _build_label(h: LabelHandlers) -> dict:
    gr.Markdown("### 2 · Label\nOne key per class, **Enter** accepts the model's suggestion, **x** reject, **s** skip, "
                "**u** undo. Every key is saved at once; a different key on a frame you labeled before relabels it "
                "(**u** undoes).")
    with gr.Row():
        name = gr.Textbox(label="Annotator name", placeholder="your name (kept in this browser)", scale=3)
        start = gr.Button("Start / resume", scale=1)
    with gr.Row():
        split = gr.Radio([(label, value) for value, label in SPLITS.items()], value="train", label="Frames",
                         info="held-out frames: their own queue, never counted in quotas", elem_id="label-split")
        order = gr.Dropdown(orders.choices(labels.current_taxonomy(h.studio)), value="random", label="Order",
                            info="uncertain first and the quota order need the model's suggestions",
                            elem_id="label-order")
    frame_id = gr.Textbox(visible=False, elem_id="label-frame-id")
    with gr.Row():
        with gr.Column(scale=3):
            frame = gr.HTML(elem_id="label-frame")
        with gr.Column(scale=1):
            quota_box = gr.HTML(elem_id="label-progress")
    with gr.Row():
        slots = [gr.Button(f"class {i + 1}", elem_id=f"label-slot-{i}", variant="primary", min_width=80)
                 for i in range(MAX_SLOTS)]
    with gr.Row():
        accept = gr.Button("Accept suggestion  [Enter]", elem_id="label-accept", variant="primary", min_width=80)
        reject = gr.Button("Reject  [x]", elem_id="label-reject", variant="stop", min_width=80)
        skip = gr.Button("Skip  [s]", elem_id="label-skip", min_width=80)
        undo = gr.Button("Undo  [u]", elem_id="label-undo", min_width=80)
    with gr.Row():
        gr.Markdown("Crop window:")
        nudges = {d: gr.Button(text, size="sm", min_width=60, elem_id=f"label-nudge-{d}") for text, d in NUDGES}
    with gr.Accordion("Shot clip (frames imported from a video keep a short clip of their shot)", open=False):
        show_clip = gr.Button("Play this shot's clip", size="sm", elem_id="label-show-clip")
        clip_video = gr.Video(label="Shot clip", autoplay=True, loop=True, interactive=False, height=240)
    store = gr.BrowserState("", storage_key="dreamshot-label-annotator")

    outs = [frame, quota_box, frame_id]
    fast = dict(show_progress="hidden", queue=False, api_visibility="private")
    # Progress, and the mark of a refusal (its message is a toast), on the frame only: the name box stays usable.
    for trigger in (start.click, name.submit):
        trigger(guarded(h.start), [name], [*outs, name, store, split, order], api_visibility="private",
                show_progress_on=frame)
    for i, b in enumerate(slots):
        b.click(h.slot_event(i), [name, frame_id], outs, **fast)
    accept.click(h.action_event(annotate.ACCEPT), [name, frame_id], outs, **fast)
    for choice in (split, order):  # .input: a person's change only (not the page load setting it)
        choice.input(h.inline(h.set_queue), [name, split, order], outs, api_visibility="private",
                     show_progress="hidden")
    reject.click(h.action_event("reject"), [name, frame_id], outs, **fast)
    skip.click(h.action_event("skip"), [name, frame_id], outs, **fast)
    undo.click(h.inline(h.undo), [name], outs, **fast)
    for direction, b in nudges.items():
        b.click(h.nudge_event(direction), [name, frame_id], outs, **fast)
    show_clip.click(guarded(h.shot_clip), [name, frame_id], [clip_video], api_visibility="private",
                    show_progress="hidden")  # a refusal is a toast; the player is not marked "Error"
    # a clip belongs to one frame: the next frame never plays the previous shot's clip
    frame_id.change(None, None, clip_video, js="() => null", queue=False, api_visibility="private")
    for fn in (h.label_view, h.label_action, h.label_queue, h.label_undo, h.label_nudge):
        gr.api(guarded(fn), api_name=fn.__name__, concurrency_limit=None)
    return {"slots": slots, "quota_box": quota_box, "store": store,
            "load_outputs": [*outs, name, *slots, split, order], "order": order,
            "name": name, "outs": outs, "clip": clip_video, "frame_id": frame_id}


def build(studio, demo: gr.Blocks) -> None:
    admin, label = AdminHandlers(studio), LabelHandlers(studio)
    import_panel, imported = build_import(admin)
    settings_fields, save, saved_note = build_settings(admin)
    ui = _build_label(label)
    refresh = dict(fn=label.inline(label.refresh), inputs=[ui["name"]], outputs=ui["outs"], api_visibility="private",
                   show_progress="hidden")
    imported.success(**refresh)
    suggest_tab.build(studio, demo)
    build_stats(admin, ui["quota_box"])
    build_export(admin)

    def save_settings(taxonomy, quota_text, size, overlap, seed, request: gr.Request):
        return (*admin.do_save(taxonomy, quota_text, size, overlap, seed, request), *label.slot_buttons(),
                gr.update(choices=orders.choices(labels.current_taxonomy(studio))))

    save.click(guarded(save_settings), settings_fields, [*settings_fields, saved_note, *ui["slots"], ui["order"]],
               api_name="label_settings", **QUIET).success(**refresh)  # a refusal: one toast, the form stays usable
    demo.load(guarded(label.on_load), [ui["store"]], ui["load_outputs"], api_visibility="private", **QUIET)
    demo.load(admin.current_settings, None, settings_fields, api_visibility="private", **QUIET)
    demo.load(admin.import_open, None, import_panel, api_visibility="private")
