"""Annotator actions, relabels, quotas, final labels and disagreement resolution (no gradio).

Every action is one row in ``labels`` committed at once; undo marks a row (``undone_at``), it never
deletes one. Actions: ``label`` (with a shot class), ``reject`` (bad quality or crop), ``skip`` (show
later) and ``resolve`` (the final class of a frame two annotators disagreed on; shot NULL = reject).

**Relabel rule.** An annotator who labels a frame again with a *different* class (or rejects a frame
they had labeled) relabels it: the earlier row gets ``undone_at`` (kept in the history) and the new
row is written with the same timestamp; the reply says so (``ActionResult.relabeled_from``). Undoing
a relabel brings the earlier label back. The same class twice is a no-op reported as ``duplicate``.

**Quota rule.** Only *settled* frames count toward a class's quota: a single annotator's label, the
class all its annotators agree on, or a resolution. Settled frames of a class fill the quota in the
order they were settled (first vote, or the resolution); the ones beyond it are *extras*. So a frame
that leaves a class (undo, relabel, a second annotator disagreeing) frees its place and the oldest
extra fills it; a disputed frame counts again once resolved (as an extra when the quota filled up
meanwhile). Stats, the quota message and the export all read this one accounting
(:func:`decisions`). The ``is_extra`` column only records what the annotator was told at the time.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput, NotFound
from dreamshot.shots import Taxonomy
from dreamshot.storage import now

from labeling.provenance import IMPORTED, TYPED, Provenance  # noqa: F401 (labels.Provenance for callers)

ACTIONS = ("label", "reject", "skip")
REJECT = "reject"
QUOTAS_KEY = "quotas"
L = schema.labels
F = schema.frames


# ---- project settings -------------------------------------------------------------------------
_SNAPSHOT: contextvars.ContextVar = contextvars.ContextVar("label_settings_snapshot", default=None)


@dataclass
class _Snapshot:
    studio: object
    values: dict
    taxonomy: Taxonomy


@contextlib.contextmanager
def settings_snapshot(studio):
    """Within the block, project settings are read once (two queries) instead of once per lookup:
    a keypress reads the taxonomy, quotas, seed and overlap several times."""
    with studio.db.read() as conn:
        values = dict(conn.execute(sa.select(schema.project_settings.c.key, schema.project_settings.c.value)).all())
    token = _SNAPSHOT.set(_Snapshot(studio, values, studio.project.taxonomy()))
    try:
        yield
    finally:
        _SNAPSHOT.reset(token)


def _snapshot(studio) -> _Snapshot | None:
    snap = _SNAPSHOT.get()
    return snap if snap is not None and snap.studio is studio else None


def setting(studio, key: str, default=None):
    """A labeling setting (quotas, label_seed, label_overlap, crop_size); never the taxonomy or
    template, which only ``studio.project`` reads."""
    snap = _snapshot(studio)
    if snap is not None:
        value = snap.values.get(key)
        return default if value is None else value
    return studio.db.get_setting(key, default)


def current_taxonomy(studio) -> Taxonomy:
    snap = _snapshot(studio)
    return snap.taxonomy if snap is not None else studio.project.taxonomy()


def quotas(studio, taxonomy: Taxonomy | None = None) -> dict[str, int]:
    taxonomy = taxonomy or current_taxonomy(studio)
    stored = setting(studio, QUOTAS_KEY, {}) or {}
    return {c: int(stored.get(c, taxonomy.default_quota)) for c in taxonomy.names}


def parse_quotas(text: str) -> dict[str, int]:
    """``close=200, medium=150`` -> dict; InvalidInput with the bad part otherwise."""
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


def set_quotas(studio, values: dict[str, int]) -> dict[str, int]:
    taxonomy = current_taxonomy(studio)
    clean = {}
    for name, n in values.items():
        taxonomy.get(name)
        if int(n) < 0:
            raise InvalidInput("Quotas cannot be negative.")
        clean[name] = int(n)
    studio.db.set_setting(QUOTAS_KEY, {**(studio.db.get_setting(QUOTAS_KEY, {}) or {}), **clean})
    return quotas(studio, taxonomy)


# ---- writing actions --------------------------------------------------------------------------
@dataclass
class ActionResult:
    frame_id: int
    action: str
    shot: str | None
    is_extra: bool
    duplicate: bool = False            # the same label/reject again: nothing written
    relabeled_from: str | None = None  # a relabel: the annotator's earlier class (or 'reject')
    restored: str | None = None        # an undone relabel: the label that is active again

    @property
    def value(self) -> str:
        return self.shot or self.action


def _quota_looks_full(conn, taxonomy: Taxonomy, studio, shot: str, frame_id: int) -> bool:
    """The hint stored in ``is_extra`` (what the annotator is told); accounting is :func:`decisions`."""
    taken = conn.execute(
        sa.select(sa.func.count(sa.distinct(L.c.frame_id))).where(
            L.c.taxonomy == taxonomy.name, L.c.shot == shot, L.c.action.in_(["label", "resolve"]),
            L.c.undone_at.is_(None), L.c.frame_id != frame_id)
    ).scalar_one()
    return taken >= quotas(studio, taxonomy)[shot]


def insert_action(conn, studio, *, frame_id: int, annotator: str, action: str, shot: str | None,
                  taxonomy: Taxonomy | None = None, at: float | None = None,
                  provenance: Provenance | None = None) -> ActionResult:
    """Insert one action in an open write transaction."""
    taxonomy = taxonomy or current_taxonomy(studio)
    is_extra = False
    if shot is not None:
        taxonomy.get(shot)
        is_extra = _quota_looks_full(conn, taxonomy, studio, shot, frame_id)
    conn.execute(L.insert().values(frame_id=frame_id, annotator=annotator, taxonomy=taxonomy.name, action=action,
                                   shot=shot, is_extra=is_extra, created_at=at or now(), undone_at=None,
                                   **(provenance or TYPED).columns()))
    return ActionResult(frame_id, action, shot, is_extra)


def apply_label(conn, studio, *, frame_id: int, annotator: str, shot: str,
                provenance: Provenance = IMPORTED) -> str:
    """A label from a file for a frame that may already be labeled (a re-import): ``added``,
    ``relabeled`` (the annotator's earlier label is kept in the history) or ``unchanged``."""
    taxonomy = current_taxonomy(studio)
    shot = taxonomy.get(str(shot).strip()).name
    done = conn.execute(sa.select(L.c.id, L.c.action, L.c.shot).where(
        L.c.frame_id == int(frame_id), L.c.annotator == annotator, L.c.undone_at.is_(None),
        L.c.action.in_(["label", "reject"]), L.c.taxonomy == taxonomy.name).order_by(L.c.id.desc())).all()
    if done and (done[0].action, done[0].shot) == ("label", shot):
        return "unchanged"
    at = now()
    if done:
        conn.execute(L.update().where(L.c.id.in_([r.id for r in done])).values(undone_at=at))
    insert_action(conn, studio, frame_id=int(frame_id), annotator=annotator, action="label", shot=shot,
                  taxonomy=taxonomy, at=at, provenance=provenance)
    return "relabeled" if done else "added"


def _parse_action(taxonomy: Taxonomy, action: str) -> tuple[str, str | None]:
    if action in ("reject", "skip"):
        return action, None
    taxonomy.get(action)  # InvalidInput for an unknown class
    return "label", action


def record(studio, annotator: str, frame_id: int, action: str, crop_box: list[int] | None = None,
           provenance: Provenance | None = None) -> ActionResult:
    """One keypress: ``action`` is a class name of the current taxonomy, 'reject' or 'skip'.
    A different label on a frame the annotator already labeled is a relabel (see the module doc).
    ``crop_box``: the box the annotator saw, stored with the label when the frame has none yet;
    ``provenance``: how it was given (typed by default)."""
    taxonomy = current_taxonomy(studio)
    kind, shot = _parse_action(taxonomy, action)
    with studio.db.write() as conn:
        frame = conn.execute(sa.select(F.c.status, F.c.crop_box).where(F.c.id == int(frame_id))
                             .with_for_update()).first()  # one writer per frame (PostgreSQL)
        if frame is None:
            raise NotFound(f"Frame {frame_id} does not exist.")
        if frame.status != "ok":
            raise InvalidInput(f"Frame {frame_id} was filtered out of the pool ({frame.status}).")
        done = conn.execute(sa.select(L.c.id, L.c.action, L.c.shot, L.c.is_extra).where(
            L.c.frame_id == int(frame_id), L.c.annotator == annotator, L.c.undone_at.is_(None),
            L.c.action.in_(["label", "reject"]), L.c.taxonomy == taxonomy.name).order_by(L.c.id.desc())).all()
        at = now()
        relabeled_from = None
        if done and kind != "skip":
            latest = done[0]
            if (latest.action, latest.shot) == (kind, shot):
                return ActionResult(int(frame_id), latest.action, latest.shot, bool(latest.is_extra), duplicate=True)
            relabeled_from = latest.shot or REJECT
            conn.execute(L.update().where(L.c.id.in_([r.id for r in done])).values(undone_at=at))
        if crop_box is not None and frame.crop_box is None:
            conn.execute(F.update().where(F.c.id == int(frame_id))
                         .values(crop_box=[int(v) for v in crop_box], crop_source="auto"))
        result = insert_action(conn, studio, frame_id=int(frame_id), annotator=annotator, action=kind, shot=shot,
                               taxonomy=taxonomy, at=at, provenance=provenance)
        result.relabeled_from = relabeled_from
        return result


def undo(studio, annotator: str) -> ActionResult | None:
    """Undo the annotator's last label/reject/skip (a relabel brings the earlier label back);
    None when there is nothing to undo."""
    taxonomy = current_taxonomy(studio)
    with studio.db.write() as conn:
        row = conn.execute(sa.select(L).where(
            L.c.annotator == annotator, L.c.undone_at.is_(None), L.c.action.in_(ACTIONS),
            L.c.taxonomy == taxonomy.name).order_by(L.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        conn.execute(L.update().where(L.c.id == row.id).values(undone_at=now()))
        result = ActionResult(row.frame_id, row.action, row.shot, bool(row.is_extra))
        if row.action != "skip":  # a relabel stamped the row it replaced with its own time
            replaced = conn.execute(sa.select(L.c.id, L.c.action, L.c.shot).where(
                L.c.annotator == annotator, L.c.frame_id == row.frame_id, L.c.id < row.id,
                L.c.undone_at == row.created_at, L.c.action.in_(["label", "reject"]),
                L.c.taxonomy == taxonomy.name).order_by(L.c.id.desc()).limit(1)).first()
            if replaced is not None:
                conn.execute(L.update().where(L.c.id == replaced.id).values(undone_at=None))
                result.restored = replaced.shot or REJECT
        return result


def resolve(studio, frame_id: int, choice: str, resolver: str) -> ActionResult:
    """The final class of a frame (a class name or 'reject'), overriding its annotators' labels."""
    taxonomy = current_taxonomy(studio)
    shot = None if choice == REJECT else taxonomy.get(choice).name
    with studio.db.write() as conn:
        if conn.execute(sa.select(F.c.id).where(F.c.id == int(frame_id))).first() is None:
            raise NotFound(f"Frame {frame_id} does not exist.")
        conn.execute(L.update().where(L.c.frame_id == int(frame_id), L.c.action == "resolve",
                                      L.c.undone_at.is_(None)).values(undone_at=now()))
        return insert_action(conn, studio, frame_id=int(frame_id), annotator=resolver, action="resolve",
                             shot=shot, taxonomy=taxonomy)


def history(studio, frame_id: int) -> list[dict]:
    """Every row of a frame, oldest first, undone ones included (what a relabel keeps)."""
    with studio.db.read() as conn:
        rows = conn.execute(sa.select(L.c.annotator, L.c.action, L.c.shot, L.c.created_at, L.c.undone_at)
                            .where(L.c.frame_id == int(frame_id)).order_by(L.c.id)).all()
    return [dict(r._mapping) for r in rows]


# ---- reading: decisions per frame and the quota accounting -------------------------------------
@dataclass
class FrameDecision:
    frame_id: int
    votes: dict[str, str]            # annotator -> class name or 'reject' (latest active)
    resolved: str | None = None      # class name or 'reject'
    extra: bool = False              # settled on a class whose quota was already full (see module doc)
    first_vote: int = 0              # row ids: the settling order of the quota rule
    resolved_at: int = 0
    split: str = "train"

    @property
    def final(self) -> str | None:
        """Class name, 'reject', or None while annotators disagree."""
        if self.resolved is not None:
            return self.resolved
        values = set(self.votes.values())
        return values.pop() if len(values) == 1 else None

    @property
    def settled_at(self) -> int:
        return self.resolved_at or self.first_vote


def decisions(studio, *, split: str | None = None) -> dict[int, FrameDecision]:
    """Every usable frame with an active label, its votes and final class, with ``extra`` set by the
    quota rule over the training split (held-out frames are never extra)."""
    taxonomy = current_taxonomy(studio)
    query = (sa.select(L.c.id, L.c.frame_id, L.c.annotator, L.c.action, L.c.shot, F.c.split)
             .join(F, F.c.id == L.c.frame_id)
             .where(L.c.undone_at.is_(None), L.c.taxonomy == taxonomy.name, F.c.status == "ok",
                    L.c.action.in_(["label", "reject", "resolve"]))
             .order_by(L.c.id))
    out: dict[int, FrameDecision] = {}
    with studio.db.read() as conn:
        for row in conn.execute(query):
            d = out.get(row.frame_id)
            if d is None:
                d = out[row.frame_id] = FrameDecision(row.frame_id, {}, split=row.split)
            value = row.shot if row.shot else REJECT
            if row.action == "resolve":
                d.resolved, d.resolved_at = value, row.id
            else:
                d.votes[row.annotator] = value
                d.first_vote = d.first_vote or row.id
    limits = quotas(studio, taxonomy)
    filled: Counter = Counter()
    for d in sorted(out.values(), key=lambda d: d.settled_at):
        final = d.final
        # Quotas are training-set quotas: held-out (test) frames never fill or overflow them.
        if final is not None and final != REJECT and d.split == "train":
            d.extra = filled[final] >= limits.get(final, 0)
            filled[final] += not d.extra
    if split:
        out = {fid: d for fid, d in out.items() if d.split == split}
    return out


def final_labels(studio, *, include_extra: bool = False, split: str | None = None) -> dict[int, str]:
    """frame_id -> shot name for every frame whose label is settled (single annotator, agreement or
    resolution), rejects and open disagreements left out; extras only with ``include_extra``."""
    out = {}
    for fid, d in decisions(studio, split=split).items():
        final = d.final
        if final and final != REJECT and (include_extra or not d.extra):
            out[fid] = final
    return out


def disagreements(studio) -> list[FrameDecision]:
    return [d for d in decisions(studio).values() if d.final is None]


# ---- progress and quotas --------------------------------------------------------------------
@dataclass
class Progress:
    taxonomy: Taxonomy
    quotas: dict[str, int]
    counts: dict[str, int]          # settled, counted toward the quota
    extras: dict[str, int]          # settled beyond the quota
    rejects: int
    disagreements: int
    skips: int = 0
    annotators: dict[str, int] = field(default_factory=dict)
    extra_frames: set[int] = field(default_factory=set)
    held_out: dict[str, int] = field(default_factory=dict)  # settled test-split frames (no quota)

    @property
    def all_met(self) -> bool:
        return all(self.counts.get(c, 0) >= q for c, q in self.quotas.items())


def progress(studio) -> Progress:
    taxonomy = current_taxonomy(studio)
    counts, extras, held_out = Counter(), Counter(), Counter()
    rejects = disagree = 0
    extra_frames = set()
    for d in decisions(studio).values():
        final = d.final
        if final is None:
            disagree += 1
        elif final == REJECT:
            rejects += 1
        elif d.split != "train":
            held_out[final] += 1
        elif d.extra:
            extras[final] += 1
            extra_frames.add(d.frame_id)
        else:
            counts[final] += 1
    with studio.db.read() as conn:
        per_annotator = dict(conn.execute(
            sa.select(L.c.annotator, sa.func.count()).where(
                L.c.undone_at.is_(None), L.c.action.in_(["label", "reject"]), L.c.taxonomy == taxonomy.name)
            .group_by(L.c.annotator)).all())
        skips = conn.execute(sa.select(sa.func.count()).where(
            L.c.undone_at.is_(None), L.c.action == "skip", L.c.taxonomy == taxonomy.name)).scalar_one()
    return Progress(taxonomy, quotas(studio, taxonomy), dict(counts), dict(extras), rejects, disagree, skips,
                    per_annotator, extra_frames, dict(held_out))
