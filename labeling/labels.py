"""Annotator actions, quotas, final labels, agreement and disagreement resolution.

Every action is one row in ``labels`` committed at once; undo marks a row (``undone_at``), it never
deletes one. Actions: ``label`` (with a shot class), ``reject`` (bad quality or crop), ``skip`` (show
later) and ``resolve`` (the final class of a frame two annotators disagreed on; shot NULL = reject).

A frame's final label (:func:`final_labels`) is its latest resolution if any; otherwise the class all
its annotators agree on. Labels given after a class's quota was full are kept with ``is_extra``
and left out of training sets by default.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput, NotFound
from dreamshot.shots import Taxonomy, get_taxonomy
from dreamshot.storage import now

ACTIONS = ("label", "reject", "skip")
REJECT = "reject"
L = schema.labels
F = schema.frames


# ---- project settings -------------------------------------------------------------------------
_SNAPSHOT: contextvars.ContextVar = contextvars.ContextVar("label_settings_snapshot", default=None)


@contextlib.contextmanager
def settings_snapshot(studio):
    """Within the block, project settings are read once (one query) instead of once per lookup:
    a keypress reads the taxonomy, quotas, seed and overlap several times."""
    with studio.db.read() as conn:
        values = dict(conn.execute(sa.select(schema.project_settings.c.key, schema.project_settings.c.value)).all())
    token = _SNAPSHOT.set((id(studio), values))
    try:
        yield
    finally:
        _SNAPSHOT.reset(token)


def setting(studio, key: str, default=None):
    snap = _SNAPSHOT.get()
    if snap is not None and snap[0] == id(studio):
        value = snap[1].get(key)
        return default if value is None else value
    return studio.db.get_setting(key, default)


def current_taxonomy(studio) -> Taxonomy:
    return get_taxonomy(setting(studio, "taxonomy", None))


def quotas(studio, taxonomy: Taxonomy | None = None) -> dict[str, int]:
    taxonomy = taxonomy or current_taxonomy(studio)
    stored = setting(studio, "quotas", {}) or {}
    return {c: int(stored.get(c, taxonomy.default_quota)) for c in taxonomy.names}


def set_quotas(studio, values: dict[str, int]) -> dict[str, int]:
    taxonomy = current_taxonomy(studio)
    clean = {}
    for name, n in values.items():
        taxonomy.get(name)
        if int(n) < 0:
            raise InvalidInput("Quotas cannot be negative.")
        clean[name] = int(n)
    studio.db.set_setting("quotas", {**(studio.db.get_setting("quotas", {}) or {}), **clean})
    return quotas(studio, taxonomy)


# ---- writing actions --------------------------------------------------------------------------
@dataclass
class ActionResult:
    frame_id: int
    action: str
    shot: str | None
    is_extra: bool
    duplicate: bool = False   # the annotator had already labeled/rejected this frame: nothing written


def _active_count(conn, taxonomy: str, shot: str, exclude_frame: int) -> int:
    return conn.execute(
        sa.select(sa.func.count(sa.distinct(L.c.frame_id))).where(
            L.c.taxonomy == taxonomy, L.c.shot == shot, L.c.action.in_(["label", "resolve"]),
            L.c.undone_at.is_(None), L.c.is_extra.is_(False), L.c.frame_id != exclude_frame)
    ).scalar_one()


def insert_action(conn, studio, *, frame_id: int, annotator: str, action: str, shot: str | None,
                  taxonomy: Taxonomy | None = None) -> ActionResult:
    """Insert one action in an open write transaction (quota -> is_extra decided here)."""
    taxonomy = taxonomy or current_taxonomy(studio)
    is_extra = False
    if shot is not None:
        taxonomy.get(shot)
        counted = conn.execute(sa.select(L.c.id).where(
            L.c.frame_id == frame_id, L.c.shot == shot, L.c.taxonomy == taxonomy.name,
            L.c.undone_at.is_(None), L.c.is_extra.is_(False))).first()
        if counted is None:
            is_extra = _active_count(conn, taxonomy.name, shot, frame_id) >= quotas(studio, taxonomy)[shot]
    conn.execute(L.insert().values(frame_id=frame_id, annotator=annotator, taxonomy=taxonomy.name, action=action,
                                   shot=shot, is_extra=is_extra, created_at=now(), undone_at=None))
    return ActionResult(frame_id, action, shot, is_extra)


def record(studio, annotator: str, frame_id: int, action: str, crop_box: list[int] | None = None) -> ActionResult:
    """One keypress: ``action`` is a class name of the current taxonomy, 'reject' or 'skip'.
    ``crop_box``: the box the annotator saw, stored with the label when the frame has none yet."""
    taxonomy = current_taxonomy(studio)
    if action in ("reject", "skip"):
        kind, shot = action, None
    else:
        taxonomy.get(action)  # InvalidInput for an unknown class
        kind, shot = "label", action
    with studio.db.write() as conn:
        frame = conn.execute(sa.select(F.c.status, F.c.crop_box).where(F.c.id == int(frame_id))).first()
        if frame is None:
            raise NotFound(f"Frame {frame_id} does not exist.")
        if frame.status != "ok":
            raise InvalidInput(f"Frame {frame_id} was filtered out of the pool ({frame.status}).")
        done = conn.execute(sa.select(L.c.action, L.c.shot, L.c.is_extra).where(
            L.c.frame_id == int(frame_id), L.c.annotator == annotator, L.c.undone_at.is_(None),
            L.c.action.in_(["label", "reject"]), L.c.taxonomy == taxonomy.name)).first()
        if done is not None and kind != "skip":
            return ActionResult(int(frame_id), done.action, done.shot, bool(done.is_extra), duplicate=True)
        if crop_box is not None and frame.crop_box is None:
            conn.execute(F.update().where(F.c.id == int(frame_id))
                         .values(crop_box=[int(v) for v in crop_box], crop_source="auto"))
        return insert_action(conn, studio, frame_id=int(frame_id), annotator=annotator, action=kind, shot=shot,
                             taxonomy=taxonomy)


def undo(studio, annotator: str) -> ActionResult | None:
    """Undo the annotator's last label/reject/skip; None when there is nothing to undo."""
    taxonomy = current_taxonomy(studio)
    with studio.db.write() as conn:
        row = conn.execute(sa.select(L).where(
            L.c.annotator == annotator, L.c.undone_at.is_(None), L.c.action.in_(ACTIONS),
            L.c.taxonomy == taxonomy.name).order_by(L.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        conn.execute(L.update().where(L.c.id == row.id).values(undone_at=now()))
        if row.shot and not row.is_extra:
            _promote_extra(conn, taxonomy.name, row.shot, row.frame_id)
        return ActionResult(row.frame_id, row.action, row.shot, bool(row.is_extra))


def _promote_extra(conn, taxonomy: str, shot: str, freed_frame: int) -> None:
    """A counted label was undone: the oldest extra label of that class takes its place."""
    still = conn.execute(sa.select(L.c.id).where(
        L.c.frame_id == freed_frame, L.c.shot == shot, L.c.taxonomy == taxonomy,
        L.c.undone_at.is_(None), L.c.is_extra.is_(False))).first()
    if still is not None:
        return
    extra = conn.execute(sa.select(L.c.id, L.c.frame_id).where(
        L.c.taxonomy == taxonomy, L.c.shot == shot, L.c.undone_at.is_(None), L.c.is_extra.is_(True),
        L.c.action.in_(["label", "resolve"])).order_by(L.c.id).limit(1)).first()
    if extra is not None:
        conn.execute(L.update().where(L.c.frame_id == extra.frame_id, L.c.shot == shot, L.c.taxonomy == taxonomy,
                                      L.c.undone_at.is_(None)).values(is_extra=False))


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


# ---- reading: decisions per frame ---------------------------------------------------------------
@dataclass
class FrameDecision:
    frame_id: int
    votes: dict[str, str]            # annotator -> class name or 'reject' (latest active)
    resolved: str | None = None      # class name or 'reject'
    extra: bool = False

    @property
    def final(self) -> str | None:
        """Class name, 'reject', or None while annotators disagree."""
        if self.resolved is not None:
            return self.resolved
        values = set(self.votes.values())
        return values.pop() if len(values) == 1 else None


def decisions(studio, *, split: str | None = None) -> dict[int, FrameDecision]:
    taxonomy = current_taxonomy(studio)
    query = (sa.select(L.c.frame_id, L.c.annotator, L.c.action, L.c.shot, L.c.is_extra)
             .join(F, F.c.id == L.c.frame_id)
             .where(L.c.undone_at.is_(None), L.c.taxonomy == taxonomy.name, F.c.status == "ok",
                    L.c.action.in_(["label", "reject", "resolve"]))
             .order_by(L.c.id))
    if split:
        query = query.where(F.c.split == split)
    out: dict[int, FrameDecision] = {}
    extras: dict[int, list[bool]] = defaultdict(list)
    with studio.db.read() as conn:
        for row in conn.execute(query):
            d = out.setdefault(row.frame_id, FrameDecision(row.frame_id, {}))
            value = row.shot if row.shot else REJECT
            if row.action == "resolve":
                d.resolved = value
                extras[row.frame_id] = [bool(row.is_extra)]
            else:
                d.votes[row.annotator] = value
                if row.action == "label" and d.resolved is None:
                    extras[row.frame_id].append(bool(row.is_extra))
    for fid, flags in extras.items():
        out[fid].extra = bool(flags) and all(flags)
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
    extras: dict[str, int]
    rejects: int
    disagreements: int
    skips: int = 0
    annotators: dict[str, int] = field(default_factory=dict)

    @property
    def all_met(self) -> bool:
        return all(self.counts.get(c, 0) >= q for c, q in self.quotas.items())


def progress(studio) -> Progress:
    taxonomy = current_taxonomy(studio)
    counts, extras = Counter(), Counter()
    rejects = disagree = 0
    for d in decisions(studio).values():
        final = d.final
        if final is None:
            disagree += 1
        elif final == REJECT:
            rejects += 1
        elif d.extra:
            extras[final] += 1
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
                    per_annotator)


# ---- agreement ------------------------------------------------------------------------------
@dataclass
class Agreement:
    method: str                       # "cohen", "fleiss" or "none"
    kappa: float | None
    items: int
    categories: list[str]
    matrix: list[list[int]]           # rows: first rating, columns: second rating
    annotators: list[str]
    observed: float | None = None

    def text(self) -> str:
        if self.kappa is None:
            return f"Agreement: not enough overlapping frames yet ({self.items})."
        name = "Cohen's" if self.method == "cohen" else "Fleiss'"
        return (f"Agreement on {self.items} frames labeled twice: {name} kappa = {self.kappa:.3f} "
                f"(observed agreement {self.observed:.1%}; annotators: {', '.join(self.annotators)})")


def cohen_kappa(pairs: list[tuple[str, str]], categories: list[str]) -> tuple[float | None, float | None]:
    n = len(pairs)
    if not n:
        return None, None
    observed = sum(a == b for a, b in pairs) / n
    ca, cb = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(ca[c] * cb[c] for c in categories) / (n * n)
    if expected >= 1:
        return (1.0 if observed == 1 else 0.0), observed
    return (observed - expected) / (1 - expected), observed


def fleiss_kappa(table: list[list[int]]) -> float | None:
    """``table[i][j]``: raters who put item i in category j; every item rated by the same number."""
    if not table:
        return None
    n = sum(table[0])
    if n < 2 or any(sum(row) != n for row in table):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per item")
    items = len(table)
    p_j = [sum(row[j] for row in table) / (items * n) for j in range(len(table[0]))]
    p_i = [(sum(x * x for x in row) - n) / (n * (n - 1)) for row in table]
    p_bar, p_e = sum(p_i) / items, sum(p * p for p in p_j)
    if p_e >= 1:
        return 1.0 if p_bar == 1 else 0.0
    return (p_bar - p_e) / (1 - p_e)


def agreement(studio) -> Agreement:
    """Cohen's kappa when exactly two annotators overlap, Fleiss' kappa (two ratings per frame, the
    first two given) when more do. Rejects count as a category."""
    taxonomy = current_taxonomy(studio)
    categories = taxonomy.names + [REJECT]
    index = {c: i for i, c in enumerate(categories)}
    rated = [d for d in decisions(studio).values() if len(d.votes) >= 2]
    pairs, people = [], set()
    for d in rated:
        first_two = list(d.votes.items())[:2]
        people.update(d.votes)
        pairs.append(first_two)
    matrix = [[0] * len(categories) for _ in categories]
    if not pairs:
        return Agreement("none", None, 0, categories, matrix, [])
    annotators = sorted(people)
    if len(annotators) == 2:  # the same two people rated every overlapping frame
        a, b = annotators
        ordered = [(dict(p)[a], dict(p)[b]) for p in pairs]
        for x, y in ordered:
            matrix[index[x]][index[y]] += 1
        kappa, observed = cohen_kappa(ordered, categories)
        return Agreement("cohen", kappa, len(pairs), categories, matrix, annotators, observed)
    table = []
    for p in pairs:
        (_, x), (_, y) = p
        matrix[index[x]][index[y]] += 1
        row = [0] * len(categories)
        row[index[x]] += 1
        row[index[y]] += 1
        table.append(row)
    observed = sum(x == y for (_, x), (_, y) in pairs) / len(pairs)
    return Agreement("fleiss", fleiss_kappa(table), len(pairs), categories, matrix, annotators, observed)
