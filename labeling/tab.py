"""Label tab (UI builder): import a pool, label with the keyboard, watch quotas and agreement,
resolve disagreements, export.

Keyboard: one key per class (from the taxonomy), ``x`` reject, ``s`` skip, ``u`` undo; the ``HEAD``
script below clicks the matching buttons (ignored while typing in a text field). Frames are shown as
small inline JPEGs rendered ahead of time (``labeling.crop.Previews``), so a keypress costs one DB
write and one small message. The annotator's place is in the database: reload or restart and the
same frame comes back.

Endpoints (gradio_client): label_import, label_settings, label_view, label_action, label_undo,
label_nudge, label_stats, label_disagreements, label_resolve, label_export.
"""

from __future__ import annotations

import base64
import html
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from dreamshot.access import clean_name
from dreamshot.errors import InvalidInput
from dreamshot.shots import PRESETS
from dreamshot.ui import admin_name, guarded

from labeling import crop, export, labels, pool
from labeling import cli as cli_label
from labeling.annotate import Annotation, FrameView
from labeling.sources import VIDEO_EXTS

MAX_SLOTS = max(len(t.classes) for t in PRESETS.values())
NUDGES = (("◀", "left"), ("▶", "right"), ("▲", "up"), ("▼", "down"), ("center", "center"), ("auto", "auto"))

HEAD = """
<script>
(() => {
  if (window.__dreamshotLabelKeys) return;
  window.__dreamshotLabelKeys = true;
  // One request at a time; a key pressed meanwhile waits (one is kept), so fast typists lose nothing.
  let pending = null, queued = null, observed = null;
  const frameRoot = () => document.querySelector("#label-frame .lf-root, #label-frame .lf-empty");
  const button = (id) => {
    const el = document.getElementById(id);
    if (!el) return null;
    const btn = el.tagName === "BUTTON" ? el : el.querySelector("button");
    return btn && !btn.disabled && btn.offsetParent !== null ? btn : null;
  };
  const settle = () => { pending = null; if (queued) { const k = queued; queued = null; fire(k); } };
  const watch = () => {
    const box = document.getElementById("label-frame");
    if (!box || observed === box) return;
    observed = box;
    new MutationObserver(() => {
      const root = frameRoot();
      if (pending && (!root || !root.dataset.pending)) { clearTimeout(pending.timer); settle(); }
    }).observe(box, {subtree: true, childList: true});
  };
  const showNext = (root) => {  // display the prefetched next frame now; the server confirms it
    const next = root && root.querySelector("template.lf-next");
    const cur = root && root.querySelector(".lf-cur");
    if (!next || !cur) return null;
    const before = {html: cur.innerHTML, frame: root.dataset.frame};
    cur.innerHTML = next.innerHTML;
    root.dataset.frame = next.dataset.frame;
    root.dataset.pending = "1";
    next.remove();
    return before;
  };
  function fire(key) {
    const map = document.getElementById("label-keymap");
    let id = null, advances = true;
    if (key === "x") id = "label-reject";
    else if (key === "s") id = "label-skip";
    else if (key === "u") { id = "label-undo"; advances = false; }
    else {
      const i = (map.dataset.keys || "").split(",").indexOf(key);
      if (i >= 0) id = "label-slot-" + i;
    }
    const btn = id && button(id);
    if (!btn) return false;
    watch();
    const root = frameRoot();
    const before = advances ? showNext(root) : null;
    pending = {timer: setTimeout(() => {  // no answer (an error): put the frame back
      if (before && root.isConnected && root.dataset.pending) {
        root.querySelector(".lf-cur").innerHTML = before.html;
        root.dataset.frame = before.frame;
        delete root.dataset.pending;
      }
      settle();
    }, 4000)};
    btn.click();
    return true;
  }
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
    const map = document.getElementById("label-keymap");
    if (!map || map.parentElement.offsetParent === null) return;
    const key = (e.key || "").toLowerCase();
    const known = ["x", "s", "u"].includes(key) || (map.dataset.keys || "").split(",").includes(key);
    if (!known) return;
    e.preventDefault();
    if (pending) { queued = key; return; }
    fire(key);
  });
})();
</script>
<style>
#label-frame .lf { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap }
#label-frame .lf-crop { width: 384px; height: 384px; border-radius: 6px }
#label-frame .lf-full { position: relative; display: inline-block; line-height: 0 }
#label-frame .lf-full img { max-width: 384px; max-height: 384px; border-radius: 4px; opacity: .9 }
#label-frame .lf-box { position: absolute; border: 2px solid #ffcc00 }
#label-frame .lf-meta { font-size: .9em; opacity: .8; margin-top: 6px }
#label-frame .lf-wrap-full { overflow: hidden; display: inline-block; border-radius: 4px }
#label-progress .lp-row { margin-bottom: 8px }
#label-progress .lp-n { float: right; opacity: .8 }
#label-progress .lp-bar { height: 8px; border-radius: 4px; background: rgba(128,128,128,.25); overflow: hidden }
#label-progress .lp-bar > div { height: 100%; background: #f97316 }
#label-progress .lp-foot { font-size: .9em; opacity: .8 }
</style>
"""


# ---- rendering ------------------------------------------------------------------------------
def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _frame_block(frame_id: int, p: dict, meta: str) -> str:
    w, h = p["size"]
    x0, y0, x1, y1 = p["box"]
    box = (f"left:{100 * x0 / w:.2f}%;top:{100 * y0 / h:.2f}%;"
           f"width:{100 * (x1 - x0) / w:.2f}%;height:{100 * (y1 - y0) / h:.2f}%")
    return (f'<div class="lf"><img class="lf-crop" alt="crop of frame {frame_id}" src="{_data_url(p["crop"])}">'
            f'<div><div class="lf-wrap-full"><div class="lf-full"><img alt="full frame" src="{_data_url(p["full"])}">'
            f'<div class="lf-box" style="{box}"></div></div></div>'
            f'<div class="lf-meta">frame {frame_id} &middot; {w}&times;{h} &middot; {meta}</div></div></div>')


def frame_html(view: FrameView) -> str:
    """The current frame, plus the next one hidden: the HEAD script shows it the moment a key is
    pressed and the server's answer (normally the same frame) replaces it."""
    keys = ",".join(c.key for c in view.progress.taxonomy.classes)
    keymap = f'<div id="label-keymap" data-keys="{html.escape(keys)}" style="display:none"></div>'
    message = f'<p class="lf-msg"><b>{html.escape(view.message)}</b></p>' if view.message else ""
    if view.frame_id is None:
        return f'<div class="lf-empty" data-frame="">{keymap}{message}</div>'
    who = html.escape(view.annotator)
    current = {"crop": view.crop_jpeg, "full": view.full_jpeg, "box": view.box, "size": view.size}
    nxt = ""
    if view.next_id is not None and view.next_preview:
        nxt = (f'<template class="lf-next" data-frame="{view.next_id}">'
               f'{_frame_block(view.next_id, view.next_preview, f"{max(view.remaining - 1, 0)} left for {who}")}'
               '</template>')
    return (f'<div class="lf-root" data-frame="{view.frame_id}">{keymap}{message}'
            f'<div class="lf-cur">{_frame_block(view.frame_id, current, f"{view.remaining} left for {who}")}</div>'
            f'{nxt}</div>')


def progress_html(p: labels.Progress) -> str:
    rows = []
    for c in p.taxonomy.classes:
        n, q = p.counts.get(c.name, 0), p.quotas[c.name]
        extra = p.extras.get(c.name, 0)
        pct = 100 if q <= 0 else min(100, 100 * n / q)
        rows.append(
            f'<div class="lp-row"><div><code>{html.escape(c.key)}</code> {html.escape(c.label)} '
            f'<span class="lp-n">{n}/{q}' + (f" +{extra} extra" if extra else "") + ("  &#10003;" if n >= q else "")
            + f'</span></div><div class="lp-bar"><div style="width:{pct:.1f}%"></div></div></div>')
    rows.append(f'<div class="lp-foot">rejected {p.rejects} &middot; skipped {p.skips} &middot; '
                f"disagreements {p.disagreements}</div>")
    if p.all_met:
        rows.append("<div><b>Every quota is met.</b></div>")
    return '<div class="lp">' + "".join(rows) + "</div>"


def _view_outputs(view: FrameView):
    return frame_html(view), progress_html(view.progress), view.frame_id


def _annotator(name: str | None, request: gr.Request | None) -> str:
    username = getattr(request, "username", None) if request is not None else None
    if username:
        return clean_name(username)
    if not (name or "").strip():
        raise InvalidInput("Type your name first: each annotator gets their own queue.")
    return clean_name(name)


def _frame_id(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise InvalidInput(f"Bad frame id {value!r}") from None


def _slot_buttons(studio):
    taxonomy = labels.current_taxonomy(studio)
    updates = []
    for i in range(MAX_SLOTS):
        if i < len(taxonomy.classes):
            c = taxonomy.classes[i]
            updates.append(gr.update(value=f"{c.label}  [{c.key}]", visible=True))
        else:
            updates.append(gr.update(visible=False))
    return updates


# ---- sections -------------------------------------------------------------------------------
def _import_section(studio):
    empty = not pool.pool_summary(studio)
    with gr.Accordion("1 · Import a pool of frames", open=empty):
        gr.Markdown("A folder on the server (recursive), a `.zip`, video files (one frame per detected shot), "
                    "`imagefolder:DIR` or `hf:DATASET_ID_OR_PATH` — or upload files below. Originals are never "
                    "modified; an interrupted import resumes when started again with the same source.")
        with gr.Row():
            source = gr.Textbox(label="Source on the server", placeholder="/path/to/frames or clip.mp4 or frames.zip")
            uploads = gr.File(label="…or upload images / a .zip / videos", file_count="multiple")
        with gr.Row():
            metadata = gr.File(label="Metadata (CSV/JSONL: file, title, year, …)", file_types=[".csv", ".jsonl", ".json"])
            labels_file = gr.File(label="Existing labels (CSV/JSONL: file, shot)", file_types=[".csv", ".jsonl", ".json"])
        with gr.Row():
            rules = gr.Textbox(label="Metadata rules (one per line)", placeholder="year >= 2013", lines=2)
            min_side = gr.Number(label="Minimum short side (px)", value=256, precision=0)
            near = gr.Number(label="Near-duplicate distance (pHash bits, -1 = off)", value=6, precision=0)
            split = gr.Radio(list(pool.SPLITS), value="train", label="Split")
        go = gr.Button("Import", variant="primary")
        report = gr.Textbox(label="Import report", lines=10, interactive=False)

    @guarded
    def do_import(source, uploads, metadata, labels_file, rules, min_side, near, split,
                  request: gr.Request, progress=gr.Progress()):
        admin_name(studio, request)
        src = _upload_source(uploads) if uploads else (source or "").strip()
        if not src:
            raise InvalidInput("Give a source path or upload files.")
        opts = pool.ImportOptions(
            source=src, split=split or "train", min_side=int(min_side or 0),
            rules=[r.strip() for r in (rules or "").splitlines() if r.strip()],
            metadata_file=_path(metadata), labels_file=_path(labels_file),
            near_duplicate_distance=int(near if near is not None else 6))

        def tick(done, total, note):
            progress((done, total), desc=f"Importing: {note}")
        report = pool.run_import(studio, opts, progress=tick)
        Annotation.of(studio).sampler.reset()
        return report.text()

    go.click(do_import, [source, uploads, metadata, labels_file, rules, min_side, near, split], report,
             api_name="label_import")


def _path(file) -> str | None:
    if not file:
        return None
    return file if isinstance(file, str) else getattr(file, "name", None)


def _upload_source(uploads) -> str:
    files = [Path(_path(f)) for f in (uploads if isinstance(uploads, list) else [uploads]) if _path(f)]
    if len(files) == 1 and files[0].suffix.lower() in {".zip", *VIDEO_EXTS}:
        return str(files[0])
    folder = Path(tempfile.mkdtemp(prefix="dreamshot-upload-"))
    for f in files:
        shutil.copyfile(f, folder / f.name)
    return str(folder)


def _settings_section(studio):
    with gr.Accordion("Project settings: taxonomy, quotas, crop, annotators", open=False):
        with gr.Row():
            taxonomy = gr.Dropdown([(t.title, n) for n, t in PRESETS.items()], label="Taxonomy")
            quota_text = gr.Textbox(label="Quotas (class=n, …)")
            size = gr.Radio([str(s) for s in crop.CROP_SIZES], label="Crop size (px)")
        with gr.Row():
            overlap = gr.Slider(0, 1, step=0.05, label="Overlap share (frames labeled by two annotators)")
            seed = gr.Number(label="Sampling seed", precision=0)
            save = gr.Button("Save settings")
        note = gr.Markdown()

    def current():
        t = labels.current_taxonomy(studio)
        q = labels.quotas(studio, t)
        return (t.name, ", ".join(f"{k}={v}" for k, v in q.items()), str(crop.crop_size(studio)),
                float(studio.db.get_setting("label_overlap", 0.0)), int(studio.db.get_setting("label_seed", 0)))

    @guarded
    def do_save(taxonomy_name, quota_text, size, overlap, seed, request: gr.Request):
        admin_name(studio, request)
        from dreamshot.shots import get_taxonomy
        get_taxonomy(taxonomy_name)
        if not 0 <= float(overlap or 0) <= 1:
            raise InvalidInput("The overlap share is between 0 and 1.")
        changed_taxonomy = taxonomy_name != labels.current_taxonomy(studio).name
        studio.db.set_setting("taxonomy", taxonomy_name)
        if not changed_taxonomy:
            labels.set_quotas(studio, _parse_quotas(quota_text))
        crop.set_crop_size(studio, int(size or crop.DEFAULT_CROP_SIZE))
        studio.db.set_setting("label_overlap", float(overlap or 0))
        studio.db.set_setting("label_seed", int(seed or 0))
        Annotation.of(studio).sampler.reset()
        return (*current(), "Saved.", *_slot_buttons(studio))

    fields = [taxonomy, quota_text, size, overlap, seed]

    def wire(slots):
        save.click(do_save, fields, [*fields, note, *slots], api_name="label_settings")
    return current, fields, wire


def _parse_quotas(text: str) -> dict[str, int]:
    out = {}
    for part in (text or "").replace("\n", ",").split(","):
        if part.strip():
            if "=" not in part:
                raise InvalidInput(f"Write quotas as class=n, got {part.strip()!r}")
            k, v = part.split("=", 1)
            try:
                out[k.strip()] = int(v)
            except ValueError:
                raise InvalidInput(f"Quota for {k.strip()!r} must be a whole number") from None
    return out


def _label_section(studio):
    gr.Markdown("### 2 · Label\nOne key per class, **x** reject, **s** skip, **u** undo. Every key is saved at once.")
    with gr.Row():
        name = gr.Textbox(label="Annotator name", placeholder="your name (kept in this browser)", scale=3)
        start = gr.Button("Start / resume", scale=1)
    frame_id = gr.Textbox(visible=False, elem_id="label-frame-id")
    with gr.Row():
        with gr.Column(scale=3):
            frame = gr.HTML(elem_id="label-frame")
        with gr.Column(scale=1):
            progress_box = gr.HTML(elem_id="label-progress")
    with gr.Row():
        slots = [gr.Button(f"class {i + 1}", elem_id=f"label-slot-{i}", variant="primary", min_width=80)
                 for i in range(MAX_SLOTS)]
    with gr.Row():
        reject = gr.Button("Reject  [x]", elem_id="label-reject", variant="stop", min_width=80)
        skip = gr.Button("Skip  [s]", elem_id="label-skip", min_width=80)
        undo = gr.Button("Undo  [u]", elem_id="label-undo", min_width=80)
    with gr.Row():
        gr.Markdown("Crop window:")
        nudges = {d: gr.Button(text, size="sm", min_width=60, elem_id=f"label-nudge-{d}") for text, d in NUDGES}
    store = gr.BrowserState("", storage_key="dreamshot-label-annotator")
    outs = [frame, progress_box, frame_id]
    service = Annotation.of(studio)
    fast = dict(show_progress="hidden", queue=False, api_visibility="private")

    @guarded
    def open_view(name, request: gr.Request):
        admin_name(studio, request)
        who = _annotator(name, request)
        return (*_view_outputs(service.view(who)), who, who)

    @guarded
    def on_load(stored, request: gr.Request):
        buttons = _slot_buttons(studio)
        username = getattr(request, "username", None)
        who = username or stored or ""
        if not who:
            return (frame_html_prompt(studio), progress_html(labels.progress(studio)), None, gr.update(), *buttons)
        admin_name(studio, request)
        return (*_view_outputs(service.view(clean_name(who))), who, *buttons)

    def act_slot(i):
        @guarded
        def act(name, fid, request: gr.Request):
            admin_name(studio, request)
            taxonomy = labels.current_taxonomy(studio)
            if i >= len(taxonomy.classes):
                raise InvalidInput("This class is not in the current taxonomy; reload the page.")
            return _view_outputs(service.act(_annotator(name, request), _frame_id(fid), taxonomy.classes[i].name))
        return act

    def act_named(action):
        @guarded
        def act(name, fid, request: gr.Request):
            admin_name(studio, request)
            return _view_outputs(service.act(_annotator(name, request), _frame_id(fid), action))
        return act

    @guarded
    def do_undo(name, request: gr.Request):
        admin_name(studio, request)
        return _view_outputs(service.undo(_annotator(name, request)))

    def nudge_to(direction):
        @guarded
        def nudge(name, fid, request: gr.Request):
            admin_name(studio, request)
            return _view_outputs(service.nudge(_annotator(name, request), _frame_id(fid), direction))
        return nudge

    start.click(open_view, [name], [*outs, name, store], api_visibility="private")
    name.submit(open_view, [name], [*outs, name, store], api_visibility="private")
    for i, b in enumerate(slots):
        b.click(act_slot(i), [name, frame_id], outs, **fast)
    reject.click(act_named("reject"), [name, frame_id], outs, **fast)
    skip.click(act_named("skip"), [name, frame_id], outs, **fast)
    undo.click(do_undo, [name], outs, **fast)
    for direction, b in nudges.items():
        b.click(nudge_to(direction), [name, frame_id], outs, **fast)
    _api_endpoints(studio, service)
    return slots, on_load, [store], [*outs, name, *slots]


def frame_html_prompt(studio) -> str:
    return '<div class="lf-empty" data-frame=""><p>Type your name and press <b>Start / resume</b>.</p></div>'



def _view_dict(view: FrameView) -> dict:
    p = view.progress
    return {"annotator": view.annotator, "frame_id": view.frame_id, "box": view.box, "message": view.message,
            "remaining": view.remaining, "counts": p.counts, "extras": p.extras, "quotas": p.quotas,
            "rejects": p.rejects, "all_quotas_met": p.all_met}


def _api_endpoints(studio, service: Annotation) -> None:
    """Scriptable twins of the keyboard actions (JSON in, JSON out)."""

    @guarded
    def label_view(annotator: str, request: gr.Request) -> dict:
        admin_name(studio, request)
        return _view_dict(service.view(_annotator(annotator, request)))

    @guarded
    def label_action(annotator: str, frame_id: int, action: str, request: gr.Request) -> dict:
        """action: a class name of the taxonomy, 'reject' or 'skip'."""
        admin_name(studio, request)
        return _view_dict(service.act(_annotator(annotator, request), _frame_id(frame_id), action))

    @guarded
    def label_undo(annotator: str, request: gr.Request) -> dict:
        admin_name(studio, request)
        return _view_dict(service.undo(_annotator(annotator, request)))

    @guarded
    def label_nudge(annotator: str, frame_id: int, direction: str, request: gr.Request) -> dict:
        """direction: left, right, up, down, center or auto."""
        admin_name(studio, request)
        return _view_dict(service.nudge(_annotator(annotator, request), _frame_id(frame_id), direction))

    for fn in (label_view, label_action, label_undo, label_nudge):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=None)


def _stats_section(studio):
    with gr.Accordion("3 · Stats, agreement and disagreements", open=False):
        refresh = gr.Button("Refresh stats")
        stats = gr.Markdown()
        table = gr.Dataframe(headers=["frame", "votes"], label="Open disagreements", interactive=False)
        with gr.Row():
            fid = gr.Number(label="Frame id", precision=0)
            show = gr.Button("Show frame")
            choice = gr.Dropdown(label="Final class", choices=[])
            resolve = gr.Button("Resolve", variant="primary")
        preview = gr.Image(label="Frame (crop)", type="pil", interactive=False, height=256)
        note = gr.Markdown()

    @guarded
    def do_stats(request: gr.Request):
        admin_name(studio, request)
        rows = [[d.frame_id, ", ".join(f"{a}: {v}" for a, v in d.votes.items())] for d in labels.disagreements(studio)]
        choices = labels.current_taxonomy(studio).names + [labels.REJECT]
        return "```\n" + cli_label.stats_text(studio) + "\n```", rows, gr.update(choices=choices)

    @guarded
    def do_show(frame, request: gr.Request):
        admin_name(studio, request)
        return crop.cropped_image(studio, int(frame), 256)

    @guarded
    def do_resolve(frame, final, request: gr.Request):
        who = admin_name(studio, request)
        if frame is None or not final:
            raise InvalidInput("Pick a frame id and a final class.")
        labels.resolve(studio, int(frame), final, who)
        return f"Frame {int(frame)} resolved as **{final}**.", *do_stats(request)

    refresh.click(do_stats, None, [stats, table, choice], api_name="label_stats")
    show.click(do_show, [fid], preview, api_name="label_show_frame")
    resolve.click(do_resolve, [fid, choice], [note, stats, table, choice], api_name="label_resolve")
    return do_stats, [stats, table, choice]


def _export_section(studio):
    with gr.Accordion("4 · Export (Hugging Face imagefolder)", open=False):
        with gr.Row():
            out = gr.Textbox(label="Output folder", value=str(studio.settings.data_dir / "exports" / "shots"))
            extra = gr.Checkbox(label="Include labels beyond the quotas (extras)")
            repo = gr.Textbox(label="Push to Hub dataset repo (optional, needs HF_TOKEN)", placeholder="user/name")
        go = gr.Button("Export", variant="primary")
        with gr.Row():
            report = gr.Textbox(label="Export report", lines=5, interactive=False)
            download = gr.File(label="Download the export (.zip)", interactive=False)

    @guarded
    def do_export(out, extra, repo, request: gr.Request, progress=gr.Progress()):
        admin_name(studio, request)
        result = export.export_imagefolder(studio, out, include_extra=bool(extra),
                                           push_to_hub=(repo or "").strip() or None,
                                           progress=lambda d, t: progress((d, t), desc="Exporting"))
        # A copy outside the data folder (which is never served), for people not on the server.
        folder = Path(tempfile.mkdtemp(prefix="dreamshot-export-"))
        archive = shutil.make_archive(str(folder / Path(result.path).name), "zip", root_dir=result.path)
        return result.text(), archive

    go.click(do_export, [out, extra, repo], [report, download], api_name="label_export")


def build(studio, demo: gr.Blocks) -> None:
    _import_section(studio)
    current, settings_outputs, wire_settings = _settings_section(studio)
    slots, on_load, load_inputs, load_outputs = _label_section(studio)
    wire_settings(slots)
    _stats_section(studio)
    _export_section(studio)
    demo.load(on_load, load_inputs, load_outputs, api_visibility="private")
    demo.load(lambda: current(), None, settings_outputs, api_visibility="private")
