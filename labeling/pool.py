"""Import a pool of frames: read each item of a source, filter it, copy the kept ones into the data
folder (originals never modified) and record every item in ``frames``.

    1. open or resume an ``import_runs`` row (same source and options, not finished -> resume)
    2. stream the source's items from the stored cursor on
    3. per item (``labeling.importer``): size limits, full decode, channels, resolution, metadata rules,
       exact and near duplicates (an exact duplicate is a file already *in the pool*; a file an earlier
       import filtered out is judged again with this import's filters and its row updated)
    4. commit a batch of frames together with the new cursor (a killed import loses at most one batch
       of work and never records a frame twice)
    5. report counts per filter, every filtered file (with its twin for a duplicate), every file
       that could not be read (a damaged or encrypted zip entry included: reported, never fatal) and
       every entry skipped as not an image

Crops are *not* made here (see ``labeling.crop``: lazily, or prefetched while labeling).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.storage import now

from labeling import filters, sources
from labeling.filters import REASONS
from labeling.importer import Importer

BATCH_ITEMS = 32
BATCH_SECONDS = 2.0
MAX_PROBLEMS = 500   # unreadable files listed in the report (and stored with the run)
MAX_LISTED = 2000    # filtered files and skipped non-images listed
MAX_VIDEOS_LISTED = 50
UNREADABLE = ("corrupt", "too_large", "unsafe_path")
SHORT = {"grayscale": "grayscale", "too_small": "too small", "near_duplicate": "near-duplicate",
         "duplicate": "exact duplicate", "metadata_rule": "metadata rule"}
SPLITS = ("train", "test")

Progress = Callable[[int, int | None, str], None]


@dataclass
class ImportOptions:
    source: str
    kind: str | None = None
    split: str = "train"
    min_side: int = 256
    rules: list[str] = field(default_factory=list)
    metadata_file: str | None = None
    labels_file: str | None = None
    near_duplicate_distance: int = 6   # Hamming distance of 64-bit pHashes; -1 disables
    annotator: str = "import"          # annotator name for labels from --labels
    source_name: str | None = None     # what people call the source (uploaded file names), for the
                                       # report and frames.source, instead of a temporary path

    def check(self) -> "ImportOptions":
        if self.split not in SPLITS:
            raise InvalidInput(f"split must be one of {', '.join(SPLITS)}")
        if not 0 <= int(self.min_side) <= 10_000:
            raise InvalidInput("The minimum resolution must be between 0 and 10000 pixels.")
        if not -1 <= int(self.near_duplicate_distance) <= 32:  # a 64-bit pHash: past 32 everything matches
            raise InvalidInput("The near-duplicate distance must be between 0 and 32 pHash bits (-1 = off).")
        for rule in self.rules:
            filters.parse_rule(rule)
        for path in (self.metadata_file, self.labels_file):
            if path and not Path(path).is_file():
                raise InvalidInput(f"File {path!r} not found.")
        self.kind = self.kind or sources.detect_kind(self.source)
        return self


@dataclass
class ImportReport:
    run_id: int
    source: str
    kind: str
    status: str
    seen: int
    kept: int
    filtered: dict[str, int]
    labels_imported: int
    labels_rejected: int
    problems: list[dict]
    resumed_from: int
    seconds: float
    filtered_files: list[dict] = field(default_factory=list)  # item, reason, message (twin named)
    not_images: list[dict] = field(default_factory=list)      # item, message
    videos: dict = field(default_factory=dict)    # video file -> {"shots": found, "kept": frames kept}
    uploaded: bool = False                        # the source is files uploaded in the tab
    existing_labeled: dict = field(default_factory=dict)      # files already in the pool whose label
                                                              # the labels file gave: added/relabeled/unchanged

    def text(self) -> str:
        if self.uploaded and self.kind == "folder":   # "upload of 3 files: a.png, ..." says what it is
            head = f"Import #{self.run_id} ({self.source}): {self.status}"
        else:
            kind = f"uploaded {self.kind}" if self.uploaded else self.kind
            head = f"Import #{self.run_id} of {self.source} ({kind}): {self.status}"
        lines = [head, f"  items seen: {self.seen}   kept: {self.kept}"
                 + (f"   (resumed at item {self.resumed_from})" if self.resumed_from else "")]
        lines += self._video_lines()
        for reason, n in sorted(self.filtered.items()):
            lines.append(f"  filtered - {REASONS.get(reason, reason)}: {n}")
        if self.labels_imported or self.labels_rejected:
            lines.append(f"  labels imported: {self.labels_imported}   rejected: {self.labels_rejected}")
        if self.existing_labeled:
            n = sum(self.existing_labeled.values())
            lines.append(f"  already in the pool, labels from the file applied: {n} ("
                         + ", ".join(f"{k} {v}" for k, v in sorted(self.existing_labeled.items())) + ")")
        if self.seconds > 0:
            lines.append(f"  {self.seen - self.resumed_from} items in {self.seconds:.1f} s "
                         f"({(self.seen - self.resumed_from) / self.seconds:.1f} items/s)")
        if self.problems:
            lines.append("  files not imported (unreadable):")
            lines += [f"    {p['item']}: {p['message']}" for p in self.problems]
        if self.filtered_files:
            lines.append("  files filtered out:")
            lines += [f"    {p['item']}: {p['message']}" for p in self.filtered_files]
        if self.not_images:
            lines.append(f"  skipped, not images ({len(self.not_images)}):")
            lines += [f"    {p['item']}: {p['message']}" for p in self.not_images]
        return "\n".join(lines)

    def _video_lines(self) -> list[str]:
        """Per video: the shots the cut detection found (one frame each) and the frames kept."""
        def one(v: dict) -> str:
            if v.get("unreadable"):
                return "unreadable (see below)"
            return (f"{_plural(v.get('shots', 0), 'shot')} found (one frame each), "
                    f"{_plural(v.get('kept', 0), 'frame')} kept")

        if len(self.videos) <= 1:
            return [f"  video {name}: {one(v)}" for name, v in self.videos.items()]
        shots = sum(v.get("shots", 0) for v in self.videos.values())
        kept = sum(v.get("kept", 0) for v in self.videos.values())
        lines = [f"  {len(self.videos)} videos: {_plural(shots, 'shot')} found, {_plural(kept, 'frame')} kept"]
        lines += [f"    {name}: {one(v)}" for name, v in list(self.videos.items())[:MAX_VIDEOS_LISTED]]
        if len(self.videos) > MAX_VIDEOS_LISTED:
            lines.append(f"    … and {len(self.videos) - MAX_VIDEOS_LISTED} more videos")
        return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---- the run ---------------------------------------------------------------------------------
def _open_run(conn, opts: ImportOptions) -> tuple[int, int, dict]:
    runs = schema.import_runs
    options = {k: v for k, v in asdict(opts).items() if k not in ("source", "kind")}
    row = conn.execute(
        sa.select(runs.c.id, runs.c.cursor, runs.c.counts, runs.c.options)
        .where(runs.c.source == opts.source, runs.c.kind == opts.kind, runs.c.status.in_(["running", "interrupted"]))
        .order_by(runs.c.id.desc())
    ).first()
    if row is not None and row.options == options:
        conn.execute(runs.update().where(runs.c.id == row.id).values(status="running"))
        return row.id, int(row.cursor or 0), dict(row.counts or {})
    counts = {"seen": 0, "kept": 0, "filtered": {}, "labels_imported": 0, "labels_rejected": 0, "problems": [],
              "filtered_files": [], "not_images": []}
    run_id = conn.execute(runs.insert().values(
        source=opts.source, kind=opts.kind, status="running", options=options, counts=counts, cursor="0",
        created_at=now())).inserted_primary_key[0]
    return run_id, 0, counts


def count_items(opts: ImportOptions) -> int | None:
    if opts.kind == "folder":
        exts = sources.IMAGE_EXTS
        return sum(1 for p in sources._folder_files(Path(opts.source)) if p.suffix.lower() in exts) or None
    return None


def run_import(studio, opts: ImportOptions, progress: Progress | None = None,
               stop_after: int | None = None) -> ImportReport:
    """Import (or resume importing) ``opts.source``. ``stop_after`` items is for tests and benchmarks:
    the run is left 'interrupted' as if the process had been killed."""
    opts.check()
    started = time.monotonic()
    importer = Importer(studio, opts)
    with studio.db.write() as conn:
        run_id, cursor, counts = _open_run(conn, opts)
    resumed_from = cursor
    total = count_items(opts)
    pending: list[tuple[dict, str, tuple | None]] = []
    last_flush = time.monotonic()
    processed = 0
    status = "done"

    def flush(next_cursor: int) -> None:
        nonlocal pending, last_flush
        with studio.db.write() as conn:
            for row, key, video in pending:
                if row.get("_existing") is not None and _label_existing(importer, conn, counts, row, key, opts):
                    continue
                _count(counts, row, key)
                _count_video(counts, video, row)
                if row.get("duplicate"):
                    continue
                label, annotator = row.pop("_label", None), row.pop("_annotator", None)
                frame_id = _write_frame(conn, run_id, row)
                if label:
                    _import_label(importer, conn, counts, frame_id, label, annotator or opts.annotator, key)
            conn.execute(schema.import_runs.update().where(schema.import_runs.c.id == run_id)
                         .values(cursor=str(next_cursor), counts=counts))
        pending, last_flush = [], time.monotonic()

    next_index = cursor
    try:
        for index, item in sources.iter_items(opts.source, opts.kind, cursor):
            if stop_after is not None and processed >= stop_after:
                status = "interrupted"
                break
            next_index = index + 1
            if item.skipped:
                _listed(counts, "not_images", item.key, "not_image", item.skipped)
                continue
            pending.append((importer.process(item), item.key, _video_of(item)))
            processed += 1
            if len(pending) >= BATCH_ITEMS or time.monotonic() - last_flush > BATCH_SECONDS:
                flush(next_index)
                if progress:
                    progress(counts["seen"], total, f"{counts['kept']} kept")
        flush(next_index)
    except BaseException:
        with studio.db.write() as conn:
            conn.execute(schema.import_runs.update().where(schema.import_runs.c.id == run_id)
                         .values(status="interrupted"))
        raise
    with studio.db.write() as conn:
        conn.execute(schema.import_runs.update().where(schema.import_runs.c.id == run_id).values(
            status=status, counts=counts, finished_at=now() if status == "done" else None))
    if progress:
        progress(counts["seen"], total, "done")
    return _report(run_id, opts, status, counts, resumed_from, time.monotonic() - started)


def _write_frame(conn, run_id: int, row: dict) -> int:
    """Insert the item's row, or update the row of a file an earlier import filtered out (one row per
    content: a re-import with other filters - a lower minimum side, say - may keep it now)."""
    replaces = row.pop("_replaces", None)
    f = schema.frames
    if replaces is None:
        return conn.execute(f.insert().values(import_run_id=run_id, **row)).inserted_primary_key[0]
    conn.execute(f.update().where(f.c.id == replaces, f.c.status != "ok").values(import_run_id=run_id, **row))
    return replaces


def _count(counts: dict, row: dict, key: str) -> None:
    counts["seen"] += 1
    reason = "duplicate" if row.get("duplicate") else row["status"]
    if reason == "ok":
        counts["kept"] += 1
        return
    counts["filtered"][reason] = counts["filtered"].get(reason, 0) + 1
    message = row.get("filter_reason") or reason
    if reason in UNREADABLE:
        if len(counts["problems"]) < MAX_PROBLEMS:
            counts["problems"].append({"item": key, "reason": reason, "message": message})
    else:
        label = SHORT.get(reason, reason)
        _listed(counts, "filtered_files", key, reason, message if message.startswith(label) else f"{label} - {message}")


def _video_of(item) -> tuple[str, bool] | None:
    """(video file, whether the item is one of its shots) for an item from a video; None otherwise
    (an unreadable video comes as one item that is not a shot)."""
    file = str(item.meta.get("file") or "")
    if "video_frame" in item.meta:
        return file, True
    return (file, False) if Path(file).suffix.lower() in sources.VIDEO_EXTS else None


def _count_video(counts: dict, video: tuple[str, bool] | None, row: dict) -> None:
    if video is None:
        return
    name, is_shot = video
    entry = counts.setdefault("videos", {}).setdefault(name, {"shots": 0, "kept": 0})
    if not is_shot:
        entry["unreadable"] = True
        return
    entry["shots"] += 1
    entry["kept"] += int(row.get("status") == "ok" and not row.get("duplicate"))


def _listed(counts: dict, kind: str, key: str, reason: str, message: str) -> None:
    listed = counts.setdefault(kind, [])  # runs started before these lists existed have none
    if len(listed) < MAX_LISTED:
        listed.append({"item": key, "reason": reason, "message": message})


def _label_refused(counts: dict, key: str, exc: InvalidInput) -> None:
    counts["labels_rejected"] += 1
    if len(counts["problems"]) < MAX_PROBLEMS:
        counts["problems"].append({"item": key, "reason": "label", "message": str(exc)})


def _import_label(importer: Importer, conn, counts: dict, frame_id: int, shot: str, annotator: str, key: str) -> None:
    try:
        importer.taxonomy.get(str(shot).strip())
        importer.labels_mod.insert_action(conn, importer.studio, frame_id=frame_id, annotator=annotator,
                                          action="label", shot=str(shot).strip(),
                                          provenance=importer.labels_mod.IMPORTED)
        counts["labels_imported"] += 1
    except InvalidInput as exc:
        _label_refused(counts, key, exc)


def _label_existing(importer: Importer, conn, counts: dict, row: dict, key: str, opts: ImportOptions) -> bool:
    """A file already in the pool with a label in the labels file: the label applies to that frame
    (reported as such, not as an exact duplicate). False when the label is refused (then counted)."""
    try:
        outcome = importer.labels_mod.apply_label(conn, importer.studio, frame_id=row["_existing"],
                                                  annotator=row.get("_annotator") or opts.annotator, shot=row["_label"])
    except InvalidInput as exc:
        _label_refused(counts, key, exc)
        return False
    counts["seen"] += 1
    existing = counts.setdefault("existing_labeled", {})
    existing[outcome] = existing.get(outcome, 0) + 1
    return True


def _report(run_id, opts, status, counts, resumed_from, seconds) -> ImportReport:
    return ImportReport(run_id=run_id, source=opts.source_name or opts.source, kind=opts.kind, status=status, seen=counts["seen"],
                        kept=counts["kept"], filtered=dict(counts["filtered"]),
                        labels_imported=counts.get("labels_imported", 0),
                        labels_rejected=counts.get("labels_rejected", 0), problems=list(counts["problems"]),
                        resumed_from=resumed_from, seconds=seconds,
                        filtered_files=list(counts.get("filtered_files", [])),
                        not_images=list(counts.get("not_images", [])), videos=dict(counts.get("videos", {})),
                        uploaded=opts.source_name is not None,
                        existing_labeled=dict(counts.get("existing_labeled", {})))


def pool_summary(studio) -> dict:
    """Frames per status and split, for the tab and ``stats``."""
    f = schema.frames
    with studio.db.read() as conn:
        rows = conn.execute(sa.select(f.c.status, f.c.split, sa.func.count()).group_by(f.c.status, f.c.split)).all()
    out: dict = {}
    for status, split, n in rows:
        out.setdefault(split, {})[status] = n
    return out
