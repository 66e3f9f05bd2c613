"""One item of a source -> the ``frames`` row an import writes (``labeling.pool`` runs the import:
the run, its batches, cursor and report). Per item: read it (a refused or unreadable entry is a
row, never an exception), exact duplicates (a file already in the pool; one an earlier import
filtered out is judged again), full decode, channels, resolution, metadata rules, near duplicates
(pHash), then the kept file is copied into the data folder. Plus the side files (metadata and
existing labels) that an import reads by file name.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.storage import now, store_blob

from labeling import clips, filters, sources
from labeling.filters import Rejected

if TYPE_CHECKING:
    from labeling.pool import ImportOptions

log = logging.getLogger(__name__)

_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


# ---- side files: metadata (file, title, year, ...) and existing labels (file, shot) --------------
def read_table(path: str | None) -> dict[str, dict]:
    """CSV or JSONL rows keyed by their ``file`` column (and its base name)."""
    if not path:
        return {}
    rows: list[dict] = []
    text = Path(path).read_text(encoding="utf-8-sig")
    if path.lower().endswith((".jsonl", ".json")):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise InvalidInput(f"{Path(path).name} line {n} is not JSON.") from None
    else:
        rows = list(csv.DictReader(text.splitlines()))
    table: dict[str, dict] = {}
    for row in rows:
        key = str(row.get("file") or row.get("file_name") or "").strip()
        if not key:
            raise InvalidInput(f"{Path(path).name}: every row needs a 'file' column.")
        table[key] = row
        table.setdefault(Path(key).name, row)
    return table


def lookup(table: dict[str, dict], item: sources.Item) -> dict:
    file = str(item.meta.get("file") or item.key)
    return table.get(file) or table.get(Path(file).name) or {}


def source_label(opts: ImportOptions, key: str) -> str:
    if opts.kind == "zip":
        return f"{opts.source_name or opts.source}!{key}"
    if opts.source_name:
        return key
    if opts.kind == "folder" and Path(opts.source).is_dir():
        return str(Path(opts.source) / key)
    if opts.kind == "video":
        return str(Path(opts.source).parent / key)
    return key


class Importer:
    """Judges one import's items against the pool (its pHashes read once) and copies kept files."""

    def __init__(self, studio, opts: ImportOptions):
        self.studio, self.opts = studio, opts
        self.rules = [filters.parse_rule(r) for r in opts.rules]
        self.metadata = read_table(opts.metadata_file)
        self.labels = read_table(opts.labels_file)
        with studio.db.read() as conn:
            f = schema.frames
            hashes = conn.execute(sa.select(f.c.phash).where(f.c.status == "ok", f.c.phash.is_not(None))
                                  .order_by(f.c.id)).scalars()
            self.phashes = filters.PhashIndex(list(hashes), threshold=opts.near_duplicate_distance)
            self.known: dict[str, str] = {}  # content hash -> item, this run (the DB has the older ones)
            self.kept_phashes: list[str] = []    # this run's kept pHashes, in PhashIndex order after the DB's
            self.db_phashes = self.phashes._n
        from labeling import labels as labels_mod
        self.labels_mod = labels_mod
        self.taxonomy = labels_mod.current_taxonomy(studio)

    def process(self, item: sources.Item) -> dict:
        """One item -> a frames row to insert (or {"duplicate": True}). Never raises for bad input."""
        meta = {**lookup(self.metadata, item), **item.meta}
        meta.pop("shot", None)
        row = dict(source=source_label(self.opts, item.key), meta=meta, split=self.opts.split, created_at=now(),
                   path=None, content_hash=None, phash=None, width=None, height=None, mode=None,
                   crop_box=None, crop_source=None)
        try:
            data = item.read()
        except sources.Refused as exc:
            return {**row, "status": exc.reason, "filter_reason": str(exc)}
        except OSError as exc:
            return {**row, "status": "corrupt", "filter_reason": f"cannot read: {exc.strerror or exc}"}
        except Exception as exc:  # a source's own read error: one bad entry never stops the import
            log.warning("cannot read %s: %s", item.key, exc.__class__.__name__, exc_info=exc)
            return {**row, "status": "corrupt", "filter_reason": f"cannot read: {exc.__class__.__name__}"}
        digest = hashlib.sha256(data).hexdigest()
        earlier = None if digest in self.known else self._earlier(digest)
        twin = self.known.get(digest) or (earlier.source if earlier is not None and earlier.status == "ok" else None)
        if twin:
            dup = {"duplicate": True, "filter_reason": f"same content as {twin}"}
            given = lookup(self.labels, item)
            if digest not in self.known and (label := given.get("shot")):
                # a frame already in the pool: the labels file still applies to it (a re-import)
                dup.update(_existing=earlier.id, _label=label, _annotator=given.get("annotator"))
            return dup
        self.known[digest] = item.key
        row["content_hash"] = digest
        if earlier is not None:  # filtered out by an earlier import: judged again with this one's filters
            row["_replaces"] = earlier.id
        try:
            decoded = filters.decode(data)
            row.update(width=decoded.width, height=decoded.height, mode=decoded.mode)
            self._check(decoded, meta)
            hexhash = filters.phash_hex(decoded.small)
            row["phash"] = hexhash
            if self.phashes.is_near_duplicate(hexhash):
                at, distance = self.phashes.closest(hexhash)
                raise Rejected("near_duplicate", f"near-duplicate of {self._phash_twin(at)} "
                                                 f"(pHash {distance} bits apart)")
        except Rejected as exc:
            return {**row, "status": exc.reason, "filter_reason": str(exc)}
        except Exception as exc:  # one odd file never stops an import of thousands
            log.warning("cannot process %s: %s", item.key, exc.__class__.__name__, exc_info=exc)
            return {**row, "status": "corrupt", "filter_reason": f"cannot process: {exc.__class__.__name__}"}
        self.phashes.add(hexhash)
        self.kept_phashes.append(item.key)
        row["path"] = self._store(digest, decoded.format, data)
        clips.keep_clip(self.studio, item, meta)  # a video shot's clip, linked in frames.meta["clip"]
        return {**row, "status": "ok", "filter_reason": None, "_label": lookup(self.labels, item).get("shot"),
                "_annotator": lookup(self.labels, item).get("annotator")}

    def _check(self, decoded: filters.Decoded, meta: dict) -> None:
        if filters.is_grayscale(decoded):
            raise Rejected("grayscale", f"mode {decoded.mode}, no color")
        if min(decoded.width, decoded.height) < self.opts.min_side:
            raise Rejected("too_small", f"{decoded.width}x{decoded.height} < {self.opts.min_side} px")
        for rule in self.rules:
            if not rule.check(meta):
                raise Rejected("metadata_rule", f"fails {rule}")

    def _earlier(self, digest: str):
        """The row an earlier import recorded for this content (id, source, status), if any."""
        with self.studio.db.read() as conn:
            f = schema.frames
            return conn.execute(sa.select(f.c.id, f.c.source, f.c.status).where(f.c.content_hash == digest)
                                .limit(1)).first()

    def _phash_twin(self, at: int) -> str:
        if at >= self.db_phashes:
            return self.kept_phashes[at - self.db_phashes]
        with self.studio.db.read() as conn:  # a frame of an earlier import: the index order is the query's
            f = schema.frames
            sources_ = conn.execute(sa.select(f.c.source).where(f.c.status == "ok", f.c.phash.is_not(None))
                                    .order_by(f.c.id).limit(1).offset(at)).scalar()
        return sources_ or "a frame already in the pool"

    def _store(self, digest: str, fmt: str | None, data: bytes) -> str:
        return store_blob(self.studio.settings.data_dir, "frames", digest, _EXT.get(fmt or "", ".img"), data)
