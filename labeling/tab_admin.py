"""The Label tab's admin sections: import a pool, project settings, stats and disagreements, export.

Handlers are methods of small classes that take plain values and return outputs (testable without a
running app); each ``build_*`` function only lays out components and wires them. Every handler
checks the caller's role itself (``admin_name``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from dreamshot.errors import InvalidInput
from dreamshot.inputs import whole_number
from dreamshot.server_paths import confine
from dreamshot.shots import PRESETS
from dreamshot.ui import QUIET, admin_name, guarded

from labeling import annotate, crop, export, labels, pool, stats, uploads
from labeling.clips import export_clips
from labeling.tab_html import progress_html


def _path(file) -> str | None:
    if not file:
        return None
    return file if isinstance(file, str) else getattr(file, "name", None)


def confined_source(source: str, roots) -> str:
    """A source typed in the page: a server folder, file or local dataset must lie inside the allowed
    roots (``dreamshot.server_paths``); a Hub dataset id (``hf:user/name``) is not a server path."""
    text = (source or "").strip()
    if not text:
        return text
    prefix, _, spec = text.partition(":") if text.startswith(("hf:", "imagefolder:")) else ("", "", text)
    if prefix == "hf" and not Path(spec).expanduser().exists() and not spec.startswith(("/", ".", "~")):
        return text
    confine(spec, roots, "source")
    return text


@dataclass
class ImportForm:
    source: str = ""
    uploads: list[str] = field(default_factory=list)
    metadata: str | None = None
    labels_file: str | None = None
    rules: str = ""
    min_side: int = 256
    near: int = 6
    split: str = "train"

    def options(self) -> pool.ImportOptions:
        return pool.ImportOptions(
            source=(self.source or "").strip(), split=self.split or "train", min_side=int(self.min_side or 0),
            rules=[r.strip() for r in (self.rules or "").splitlines() if r.strip()],
            metadata_file=self.metadata, labels_file=self.labels_file,
            near_duplicate_distance=int(self.near if self.near is not None else 6))


@dataclass
class SettingsForm:
    taxonomy: str
    quotas: str
    crop_size: str
    overlap: float
    seed: int


class AdminHandlers:
    """Import, settings, stats/resolve and export handlers of the Label tab."""

    def __init__(self, studio):
        self.studio = studio

    # ---- import ------------------------------------------------------------------------------
    def import_pool(self, form: ImportForm, progress=None) -> str:
        def tick(done, total, note):
            if progress is not None:
                progress((done, total), desc=f"Importing: {note}")
        if form.uploads:
            report = uploads.service(self.studio).run_import(form.uploads, form.options(), progress=tick)
        elif form.options().source:
            report = pool.run_import(self.studio, form.options(), progress=tick)
        else:
            raise InvalidInput("Give a source path or upload files.")
        annotate.service(self.studio).reset()
        return report.text()

    def do_import(self, source, uploads_, metadata, labels_file, rules, min_side, near, split,
                  request: gr.Request, progress=gr.Progress()):
        admin_name(self.studio, request)
        files = [_path(f) for f in (uploads_ if isinstance(uploads_, list) else [uploads_]) if _path(f)]
        form = ImportForm(confined_source(source or "", self.studio.settings.allowed_roots), files, _path(metadata),
                          _path(labels_file), rules or "", min_side, near, split)
        return self.import_pool(form, progress)

    def import_open(self) -> dict:
        """The Import panel is open only while the pool has no frame to label (an import that kept
        nothing leaves it open): then the tab opens on labeling."""
        kept = any(split.get("ok") for split in pool.pool_summary(self.studio).values())
        return gr.update(open=not kept)

    # ---- settings ----------------------------------------------------------------------------
    def current_settings(self) -> tuple:
        t = labels.current_taxonomy(self.studio)
        q = labels.quotas(self.studio, t)
        return (t.name, ", ".join(f"{k}={v}" for k, v in q.items()), str(crop.crop_size(self.studio)),
                float(labels.setting(self.studio, "label_overlap", 0.0)),
                int(labels.setting(self.studio, "label_seed", 0)))

    def save_settings(self, form: SettingsForm) -> tuple:
        if not 0 <= float(form.overlap or 0) <= 1:
            raise InvalidInput("The overlap share is between 0 and 1.")
        quotas = labels.parse_quotas(form.quotas)  # refused before anything is written
        project = self.studio.project
        changed = form.taxonomy != project.taxonomy().name
        project.set_taxonomy(form.taxonomy)  # InvalidInput for an unknown preset
        if not changed:
            labels.set_quotas(self.studio, quotas)
        crop.set_crop_size(self.studio, int(form.crop_size or crop.DEFAULT_CROP_SIZE))
        self.studio.db.set_setting("label_overlap", float(form.overlap or 0))
        self.studio.db.set_setting("label_seed", int(form.seed or 0))
        annotate.service(self.studio).reset()
        return (*self.current_settings(), "Saved.")

    def do_save(self, taxonomy, quota_text, size, overlap, seed, request: gr.Request):
        admin_name(self.studio, request)
        return self.save_settings(SettingsForm(taxonomy, quota_text, size, overlap, seed))

    # ---- stats, disagreements, resolve ------------------------------------------------------------
    def stats_outputs(self) -> tuple[str, list[list], dict]:
        rows = [[d.frame_id, ", ".join(f"{a}: {v}" for a, v in d.votes.items())]
                for d in labels.disagreements(self.studio)]
        choices = labels.current_taxonomy(self.studio).names + [labels.REJECT]
        return "```\n" + stats.stats_text(self.studio) + "\n```", rows, gr.update(choices=choices)

    def do_stats(self, request: gr.Request):
        admin_name(self.studio, request)
        return self.stats_outputs()

    def do_show(self, frame, request: gr.Request):
        admin_name(self.studio, request)
        return crop.cropped_image(self.studio, _frame_number(frame), 256)

    def do_resolve(self, frame, final, request: gr.Request):
        who = admin_name(self.studio, request)
        if frame in (None, "") or not final:
            raise InvalidInput("Pick a frame id (click a row of the table) and a final class.")
        labels.resolve(self.studio, _frame_number(frame), final, who)
        return f"Frame {_frame_number(frame)} resolved as **{final}**.", *self.stats_outputs()

    def pick_row(self, row: list | None, request: gr.Request):
        """A click on a disagreement row: its frame id goes to the Frame id box and its crop is shown."""
        admin_name(self.studio, request)
        if not row or row[0] in (None, ""):
            return gr.update(), gr.update()
        fid = _frame_number(row[0])
        return fid, crop.cropped_image(self.studio, fid, 256)

    def quota_bars(self) -> str:
        return progress_html(labels.progress(self.studio))

    # ---- export --------------------------------------------------------------------------------
    def do_export(self, out, extra, repo, request: gr.Request, progress=gr.Progress()):
        admin_name(self.studio, request)
        result = export.export_imagefolder(self.studio, out, include_extra=bool(extra),
                                           push_to_hub=(repo or "").strip() or None,
                                           roots=self.studio.settings.allowed_roots,
                                           progress=lambda d, t: progress((d, t), desc="Exporting"))
        # A copy outside the data folder (which is never served), for people not on the server.
        folder = Path(tempfile.mkdtemp(prefix="dreamshot-export-"))
        archive = shutil.make_archive(str(folder / Path(result.path).name), "zip", root_dir=result.path)
        return result.text(), archive

    def do_export_clips(self, out, extra, request: gr.Request):
        """The labeled video shots' clips (``clips/*.mp4`` + metadata.jsonl), for motion LoRAs."""
        admin_name(self.studio, request)
        result = export_clips(self.studio, out, include_extra=bool(extra), roots=self.studio.settings.allowed_roots)
        folder = Path(tempfile.mkdtemp(prefix="dreamshot-export-"))
        archive = shutil.make_archive(str(folder / Path(result.path).name), "zip", root_dir=result.path)
        return result.text(), archive


def _frame_number(value) -> int:
    return whole_number(value, "The frame id")


# ---- layout and wiring ---------------------------------------------------------------------------
def build_import(h: AdminHandlers) -> tuple[gr.Accordion, object]:
    """The Import panel; returns it and the import event (the Label section refreshes after it)."""
    with gr.Accordion("1 · Import a pool of frames", open=True) as panel:
        gr.Markdown("A folder on the server (recursive), a `.zip`, video files (one frame per detected shot), "
                    "`imagefolder:DIR` or `hf:DATASET_ID_OR_PATH` — or upload files below. Originals are never "
                    "modified; an interrupted import resumes when started again with the same source.")
        with gr.Row():
            source = gr.Textbox(label="Source on the server", placeholder="/path/to/frames or clip.mp4 or frames.zip")
            files = gr.File(label="…or upload images / a .zip / videos", file_count="multiple")
        with gr.Row():
            metadata = gr.File(label="Metadata (CSV/JSONL: file, title, year, …)", file_types=[".csv", ".jsonl", ".json"])
            labels_file = gr.File(label="Existing labels (CSV/JSONL: file, shot)", file_types=[".csv", ".jsonl", ".json"])
        with gr.Row():
            rules = gr.Textbox(label="Metadata rules (one per line)", placeholder="year >= 2013", lines=2)
            min_side = gr.Number(label="Minimum short side (px)", value=256, precision=0)
            near = gr.Number(label="Near-duplicate distance (pHash bits, -1 = off)", value=6, precision=0)
            split = gr.Radio(list(pool.SPLITS), value="train", label="Split")
        go = gr.Button("Import", variant="primary")
        report = gr.Textbox(label="Import report", lines=10, max_lines=30, interactive=False)
    event = go.click(guarded(h.do_import), [source, files, metadata, labels_file, rules, min_side, near, split],
                     report, api_name="label_import")
    return panel, event


def build_settings(h: AdminHandlers) -> tuple[list, gr.Button, gr.Markdown]:
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
    return [taxonomy, quota_text, size, overlap, seed], save, note


def build_stats(h: AdminHandlers, quota_box: gr.HTML) -> list:
    with gr.Accordion("3 · Stats, agreement and disagreements", open=False):
        refresh = gr.Button("Refresh stats")
        text = gr.Markdown()
        table = gr.Dataframe(headers=["frame", "votes"], label="Open disagreements (click a row)",
                             interactive=False, elem_id="label-disagreements")
        with gr.Row():
            fid = gr.Number(label="Frame id", value=None, precision=0)
            show = gr.Button("Show frame")
            choice = gr.Dropdown(label="Final class", choices=[])
            resolve = gr.Button("Resolve", variant="primary")
        preview = gr.Image(label="Frame (crop)", type="pil", interactive=False, height=256)
        note = gr.Markdown()

    def on_row(evt: gr.SelectData, request: gr.Request):
        return h.pick_row(evt.row_value, request)

    refresh.click(guarded(h.do_stats), None, [text, table, choice], api_name="label_stats", **QUIET)
    show.click(guarded(h.do_show), [fid], preview, api_name="label_show_frame")
    table.select(guarded(on_row), None, [fid, preview], api_visibility="private", **QUIET)
    resolve.click(guarded(h.do_resolve), [fid, choice], [note, text, table, choice], api_name="label_resolve",
                  **QUIET).success(h.quota_bars, None, quota_box, api_visibility="private")
    return [text, table, choice]


def build_export(h: AdminHandlers) -> None:
    with gr.Accordion("4 · Export (Hugging Face imagefolder)", open=False):
        with gr.Row():
            out = gr.Textbox(label="Output folder", value=str(h.studio.settings.data_dir / "exports" / "shots"))
            extra = gr.Checkbox(label="Include labels beyond the quotas (extras)")
            repo = gr.Textbox(label="Push to Hub dataset repo (optional, needs HF_TOKEN)", placeholder="user/name")
        with gr.Row():
            go = gr.Button("Export", variant="primary")
            clips_out = gr.Textbox(label="Shot clips folder (video shots; for motion LoRAs)", scale=2,
                                   value=str(h.studio.settings.data_dir / "exports" / "shot-clips"))
            go_clips = gr.Button("Export shot clips")
        with gr.Row():
            report = gr.Textbox(label="Export report", lines=5, interactive=False)
            download = gr.File(label="Download the export (.zip)", interactive=False)
    go.click(guarded(h.do_export), [out, extra, repo], [report, download], api_name="label_export")
    go_clips.click(guarded(h.do_export_clips), [clips_out, extra], [report, download], api_name="label_export_clips")
