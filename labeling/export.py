"""Export the labeled set as a Hugging Face imagefolder: cropped images at the project crop size plus
``metadata.jsonl`` (file_name, shot, text, caption, caption_original, source, annotator, label_source:
typed/suggested/imported, label_order: the queue order, ...), loadable
with ``datasets.load_dataset("imagefolder", data_dir=OUT)``; optionally pushed to the Hub.

    1. final labels (single annotator, agreement or resolution; no rejects; extras only on request;
       the quota rule of ``labeling.labels``, the same accounting the stats show)
    2. captions from the ``captions`` table; ``text`` = the training prompt (``studio.project.prompt``)
    3. write into a temporary folder next to OUT, then swap it in (an export is never half-written)

An existing OUT is replaced only when a studio export made it (its ``.dreamshot-export`` marker; or,
inside the data folder's ``exports/``, the ``metadata.jsonl`` of an export from before the marker)
or when it is empty: never a folder the studio did not create. From the page (``roots``), OUT must
also lie inside the allowed roots (``dreamshot.server_paths``); the CLI is the operator's shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.server_paths import confine

from labeling import crop, labels

F, L, C = schema.frames, schema.labels, schema.captions
MARKER = ".dreamshot-export"   # written into every folder an export creates


def studio_made(out: Path, data_dir: Path | None = None) -> bool:
    """Whether the folder ``out`` may be replaced: empty, made by a studio export (its marker), or an
    export from before the marker inside ``<data>/exports``."""
    if not out.is_dir() or out.is_symlink():
        return False
    if (out / MARKER).is_file() or not any(out.iterdir()):
        return True
    exports = (Path(data_dir) / "exports").resolve() if data_dir is not None else None
    return exports is not None and exports in out.resolve().parents and (out / "metadata.jsonl").is_file()


def refuse_foreign(out: Path, data_dir: Path | None) -> None:
    """InvalidInput when ``out`` exists and the studio did not make it (checked before an export does
    any work, and again by ``replaced_folder`` just before it writes)."""
    if out.exists() and not studio_made(out, data_dir):
        raise InvalidInput(f"{out} exists and was not made by a studio export (it has no {MARKER} file): "
                           "choose a new or empty folder. The studio never replaces a folder it did not create.")


@contextlib.contextmanager
def replaced_folder(out: Path, data_dir: Path | None = None) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write an export into; when the block ends without an
    error it replaces ``out`` whole (readers never see half an export), otherwise it is removed.
    The new folder carries the marker; an existing ``out`` the studio did not make is refused."""
    refuse_foreign(out, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (tmp / MARKER).write_text("A DreamShot studio export: the studio may replace this folder.\n")
        yield tmp
        if out.exists():
            if not studio_made(out, data_dir):   # it changed while the export was written
                raise InvalidInput(f"{out} changed during the export and was not made by one: left as it is.")
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ExportReport:
    path: Path
    count: int
    per_class: dict[str, int]
    uncaptioned: int = 0
    size: int = 512
    pushed_to: str | None = None
    skipped: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.per_class.items())) or "none"
        lines = [f"Exported {self.count} frames ({self.size}x{self.size}) to {self.path}", f"  per class: {parts}"]
        if self.uncaptioned:
            lines.append(f"  {self.uncaptioned} frames have no caption yet: their text is the prompt with an "
                         "empty caption (caption them in the Captions tab and export again)")
        if self.skipped:
            lines.append(f"  {len(self.skipped)} frames could not be read: " + "; ".join(self.skipped[:10]))
        if self.pushed_to:
            lines.append(f"  pushed to https://huggingface.co/datasets/{self.pushed_to}")
        return "\n".join(lines)


def _annotators(conn, frame_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for i in range(0, len(frame_ids), 500):
        chunk = frame_ids[i:i + 500]
        rows = conn.execute(sa.select(L.c.frame_id, L.c.annotator).where(
            L.c.frame_id.in_(chunk), L.c.undone_at.is_(None), L.c.action.in_(["label", "resolve"]))
            .order_by(L.c.id))
        for fid, name in rows:
            if name not in out.setdefault(fid, []):
                out[fid].append(name)
    return out


def _label_provenance(conn, chosen: dict[int, str]) -> dict[int, tuple[str, str]]:
    """frame -> (label_source, label_order): how the labels that settled the frame's class were given
    (typed, suggested, imported; unrecorded for labels older than that record) and the queue orders
    they were given under, each list comma-joined in the order the labels came."""
    out: dict[int, tuple[list, list]] = {}
    ids = sorted(chosen)
    for i in range(0, len(ids), 500):
        rows = conn.execute(sa.select(L.c.frame_id, L.c.shot, L.c.source, L.c.queue_order).where(
            L.c.frame_id.in_(ids[i:i + 500]), L.c.undone_at.is_(None), L.c.action.in_(["label", "resolve"]))
            .order_by(L.c.id))
        for fid, shot, source, order in rows:
            if shot == chosen[fid]:
                sources, orders = out.setdefault(fid, ([], []))
                for seq, value in ((sources, source or "unrecorded"), (orders, order)):
                    if value and value not in seq:
                        seq.append(value)
    return {fid: (",".join(s), ",".join(o)) for fid, (s, o) in out.items()}


def _check_out_dir(out: Path, data_dir: Path, roots=None) -> Path:
    """The export folder to write (``roots``: the allowed roots when the path comes from the page)."""
    if roots is not None:
        out = confine(out, roots, "export folder")
    out_r, data_r = out.resolve(), data_dir.resolve()
    protected = [data_r] + [data_r / name for name in ("frames", "models", "loras", "runs", "outputs")]
    if any(out_r == p or (p != data_r and p in out_r.parents) for p in protected):
        raise InvalidInput(f"{out} is a studio folder; export somewhere else (e.g. {data_dir / 'exports' / 'set'}).")
    refuse_foreign(out, data_dir)
    return out


def export_imagefolder(studio, out_dir, *, shots=None, include_extra: bool = False, push_to_hub: str | None = None,
                       split: str | None = "train", progress=None, roots=None) -> "ExportReport":
    """``progress(done, total)`` is called after each image (the tab's progress bar); ``roots``: the
    allowed roots for a folder typed in the page (None: the CLI, the operator's shell)."""
    out = _check_out_dir(Path(str(out_dir or "")).expanduser(), studio.settings.data_dir, roots)
    taxonomy = labels.current_taxonomy(studio)
    wanted = set(shots) if shots else None
    for s in wanted or ():
        taxonomy.get(s)
    chosen = {fid: shot for fid, shot in labels.final_labels(studio, include_extra=include_extra, split=split).items()
              if wanted is None or shot in wanted}
    project = studio.project
    template = project.template()
    size = crop.crop_size(studio)
    ids = sorted(chosen)
    with studio.db.read() as conn:
        frames = {r.id: r for r in conn.execute(sa.select(F.c.id, F.c.source, F.c.meta, F.c.split).where(F.c.id.in_(ids)))} if ids else {}
        caps = {r.frame_id: r for r in conn.execute(sa.select(C.c.frame_id, C.c.caption, C.c.caption_original)
                                                    .where(C.c.frame_id.in_(ids)))} if ids else {}
        who = _annotators(conn, ids)
        given = _label_provenance(conn, chosen)
    report = ExportReport(path=out, count=0, per_class={}, size=size)
    with replaced_folder(out, studio.settings.data_dir) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for done, fid in enumerate(ids):
                if progress:
                    progress(done, len(ids))
                shot = chosen[fid]
                name = f"images/{fid:07d}_{shot}.png"
                try:
                    crop.cropped_image(studio, fid, size).save(tmp / name)
                except (OSError, ValueError) as exc:
                    report.skipped.append(f"frame {fid}: {exc.__class__.__name__}")
                    continue
                cap = caps.get(fid)
                caption = (cap.caption if cap else None) or ""
                if not caption:
                    report.uncaptioned += 1
                frame = frames[fid]
                meta.write(json.dumps({
                    "file_name": name, "shot": shot,
                    "text": project.prompt(shot, caption, template),
                    "caption": caption, "caption_original": (cap.caption_original if cap else None) or "",
                    "source": frame.source, "annotator": ",".join(who.get(fid, [])),
                    "frame_id": fid, "split": frame.split,
                    "label_source": given.get(fid, ("", ""))[0], "label_order": given.get(fid, ("", ""))[1],
                    "title": str((frame.meta or {}).get("title", "") or ""),
                }, ensure_ascii=False) + "\n")
                report.count += 1
                report.per_class[shot] = report.per_class.get(shot, 0) + 1
    if push_to_hub:
        push(out, push_to_hub)
        report.pushed_to = push_to_hub
    return report


def push(folder: Path, repo_id: str) -> None:
    """Upload an export to a (private) dataset repo. The token comes from HF_TOKEN only."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise InvalidInput("Set the HF_TOKEN environment variable (or Space secret) to push to the Hub.")
    if not repo_id or repo_id.count("/") != 1:
        raise InvalidInput("The Hub repository must look like 'user/name'.")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", ignore_patterns=[MARKER],
                      commit_message="DreamShot studio: labeled shot-type set")
