"""Captions: machine drafts, human edits, review, the edit rate and the training prompt.

One row per frame in the ``captions`` table: ``caption_original`` is the machine caption (never
changed by people), ``caption`` the text used for training (the machine caption until someone edits
it), ``edited_by``/``edited_at`` who last saved it and when, ``edit_kind`` how a person last changed
it (``hand``: typed in the editor; ``bulk``: find/replace or shot-word strip, see ``bulk.py``),
``reviewed`` whether a person has looked at it, ``version`` a counter bumped on every change.

Race rule: a machine caption only replaces ``caption`` while ``edited_by IS NULL`` - one conditional
UPDATE (compare-and-set), so an auto-caption run can never overwrite a person's edit, whatever the
timing. Every edit is its own committed transaction.

The training prompt is built by ``studio.project`` (``dreamshot.shots``), the one owner of the
taxonomy and the template; the token count by ``tokens.py``. Bulk edits live in ``bulk.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput, NotFound
from dreamshot.shots import training_prompt
from dreamshot.storage import now

from labeling.captions import sources as caption_sources
from labeling.captions.captioner import clean_caption
from labeling.captions.tokens import CLIP_MAX_TOKENS, over_limit, token_counts

MAX_CAPTION_CHARS = 1000
SPLITS = ("train", "test")
HAND, BULK = "hand", "bulk"     # captions.edit_kind
MAX_FRAME_ID = 2 ** 63 - 1      # the largest id a database integer holds


# ---- data objects ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptionView:
    frame_id: int
    split: str
    shot: str | None
    shot_label: str
    caption: str | None
    caption_original: str | None
    model: str | None
    edited_by: str | None
    edited_at: float | None
    reviewed: bool
    version: int
    prompt: str | None       # the exact training prompt
    tokens: int | None       # CLIP tokens of the prompt, start/end included
    edit_kind: str | None = None   # "hand", "bulk" or None (the machine caption)

    @property
    def changed(self) -> bool:
        """The training caption differs from the machine caption (by hand or by a bulk edit)."""
        return self.caption_original is not None and self.caption is not None and self.caption != self.caption_original

    @property
    def changed_by_hand(self) -> bool:
        return self.changed and self.edit_kind == HAND

    @property
    def changed_by_bulk(self) -> bool:
        return self.changed and self.edit_kind == BULK

    @property
    def too_long(self) -> bool:
        return over_limit(self.tokens)


@dataclass(frozen=True)
class CaptionFilter:
    split: str = "train"
    shot: str | None = None          # None: every shot type
    unreviewed: bool = False         # only captions no person has looked at yet
    search: str = ""                 # case-insensitive substring of the caption
    too_long: bool = False           # only prompts over CLIP's 77 tokens

    def check(self) -> "CaptionFilter":
        if self.split not in SPLITS:
            raise InvalidInput(f"split must be one of {', '.join(SPLITS)}")
        return self


@dataclass(frozen=True)
class EditRequest:
    frame_id: int
    text: str
    editor: str
    expected_version: int | None = None   # the version the editor saw; None = no conflict check


@dataclass(frozen=True)
class CaptionStats:
    frames: int          # frames in scope (labeled frames of the split)
    captioned: int       # with a caption
    machine: int         # with a machine caption
    reviewed: int        # looked at by a person
    changed: int         # caption differs from the machine caption (any way)
    too_long: int        # training prompts over 77 CLIP tokens
    hand_changed: int = 0   # ... changed by a person in the editor
    bulk_changed: int = 0   # ... changed only by bulk edits (find/replace, strip)

    @property
    def edit_rate(self) -> float | None:
        """Share of machine-captioned frames whose caption a person changed by hand."""
        return self.hand_changed / self.machine if self.machine else None

    @property
    def bulk_rate(self) -> float | None:
        """Share of machine-captioned frames changed only by bulk edits."""
        return self.bulk_changed / self.machine if self.machine else None

    def markdown(self) -> str:
        rate = f"**{self.edit_rate:.0%}**" if self.edit_rate is not None else "n/a"
        bulk = (f" · bulk edits {self.bulk_rate:.0%} ({self.bulk_changed} changed only by find/replace or strip)"
                if self.bulk_changed else "")
        return (
            f"{self.captioned}/{self.frames} frames captioned · {self.reviewed} reviewed · "
            f"edit rate {rate} ({self.hand_changed} of {self.machine} machine captions changed by hand){bulk}"
            + (f" · ⚠ {self.too_long} prompts over {CLIP_MAX_TOKENS} tokens" if self.too_long else "")
        )


@dataclass(frozen=True)
class PromptPreview:
    prompt: str | None       # None: no shot label or no caption yet
    tokens: int | None

    @property
    def too_long(self) -> bool:
        return over_limit(self.tokens)


# ---- input checks --------------------------------------------------------------------------------
def frame_ref(value) -> int:
    """A frame id as typed or sent through the API (``3``, ``3.0``), as an int; InvalidInput for
    anything else and NotFound for an id no database row can have (``1e20``)."""
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise InvalidInput("Open a caption first (no frame id given).")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"A frame id is a whole number, not {str(value)[:40]!r}.") from None
    if not math.isfinite(number) or number != int(number):
        raise InvalidInput(f"A frame id is a whole number, not {str(value)[:40]}.")
    frame_id = int(number) if not isinstance(value, int) else value
    if not 1 <= frame_id <= MAX_FRAME_ID:
        raise NotFound(f"Frame {frame_id} does not exist.")
    return frame_id


def clean_text(text: str | None) -> str:
    """A person's caption as stored: one line, single spaces, no control characters.
    InvalidInput for an empty or too long caption, or one with broken characters."""
    if any("\ud800" <= ch <= "\udfff" for ch in text or ""):
        raise InvalidInput("The caption contains a broken character (a lone UTF-16 surrogate); "
                           "retype or paste it again.")
    text = clean_caption(text or "")
    if not text:
        raise InvalidInput("A caption cannot be empty.")
    if len(text) > MAX_CAPTION_CHARS:
        raise InvalidInput(f"A caption is limited to {MAX_CAPTION_CHARS} characters.")
    return text


# ---- reading -----------------------------------------------------------------------------------
def _rows(studio, frame_ids) -> dict[int, sa.Row]:
    t = schema.captions
    ids = list(frame_ids)
    out: dict[int, sa.Row] = {}
    with studio.db.read() as conn:
        for i in range(0, len(ids), 500):
            for row in conn.execute(sa.select(t).where(t.c.frame_id.in_(ids[i:i + 500]))):
                out[row.frame_id] = row
    return out


class _Prompts:
    """Training prompts for many frames with one read of the taxonomy and template."""

    def __init__(self, studio):
        self.project = studio.project
        self.taxonomy, self.template = self.project.taxonomy(), self.project.template()

    def __call__(self, shot: str | None, caption: str | None) -> str | None:
        if not shot or not (caption or "").strip():
            return None
        return training_prompt(self.project.shot_phrase(shot, self.taxonomy), caption, self.template)


def _views(studio, frames: dict[int, str | None], split: str) -> list[CaptionView]:
    rows, prompt_of = _rows(studio, frames), _Prompts(studio)
    labels = {c.name: c.label for c in prompt_of.taxonomy.classes}
    prompts = {fid: prompt_of(shot, getattr(rows.get(fid), "caption", None)) for fid, shot in frames.items()}
    counted = [fid for fid, p in prompts.items() if p]
    counts = dict(zip(counted, token_counts([prompts[f] for f in counted])))
    views = []
    for fid in sorted(frames):
        row, shot = rows.get(fid), frames[fid]
        views.append(CaptionView(
            frame_id=fid, split=split, shot=shot,
            shot_label=labels.get(shot, shot or "no label"),
            caption=row.caption if row else None,
            caption_original=row.caption_original if row else None,
            model=row.model if row else None,
            edited_by=row.edited_by if row else None,
            edited_at=row.edited_at if row else None,
            reviewed=bool(row.reviewed) if row else False,
            version=row.version if row else 0,
            prompt=prompts[fid], tokens=counts.get(fid),
            edit_kind=row.edit_kind if row else None,
        ))
    return views


def all_captions(studio, split: str = "train") -> list[CaptionView]:
    """Every frame of the split to caption, with its caption (if any), in frame order."""
    CaptionFilter(split=split).check()
    return _views(studio, caption_sources.labeled_frames(studio, split), split)


def filter_views(views: list[CaptionView], flt: CaptionFilter) -> list[CaptionView]:
    needle = flt.search.strip().lower()
    return [
        v for v in views
        if (not flt.shot or v.shot == flt.shot)
        and (not flt.unreviewed or not v.reviewed)
        and (not needle or needle in (v.caption or "").lower())
        and (not flt.too_long or v.too_long)
    ]


def list_captions(studio, flt: CaptionFilter = CaptionFilter()) -> list[CaptionView]:
    """The frames of the split with their captions, filtered, in frame order."""
    flt.check()
    return filter_views(all_captions(studio, flt.split), flt)


def neighbour(views: list[CaptionView], frame_id: int | None, step: int) -> CaptionView | None:
    """The caption after (step > 0) or before ``frame_id`` in ``views``, wrapping around;
    the first one when no frame is open."""
    if not views:
        return None
    if frame_id is None:
        return views[0]
    if step > 0:
        later = [v for v in views if v.frame_id > frame_id]
        return later[0] if later else views[0]
    earlier = [v for v in views if v.frame_id < frame_id]
    return earlier[-1] if earlier else views[-1]


def get_caption(studio, frame_id) -> CaptionView:
    frame_id = frame_ref(frame_id)
    with studio.db.read() as conn:
        split = conn.execute(sa.select(schema.frames.c.split).where(schema.frames.c.id == frame_id)).scalar()
    if split is None:
        raise NotFound(f"Frame {frame_id} does not exist.")
    shot = caption_sources.shot_of(studio, frame_id)
    return _views(studio, {frame_id: shot}, split)[0]


def prompt_preview(studio, shot: str | None, caption: str | None) -> PromptPreview:
    """The training prompt a caption would give (as typed, before saving) and its CLIP tokens."""
    prompt = _Prompts(studio)(shot, clean_text(caption) if (caption or "").strip() else None)
    return PromptPreview(prompt, token_counts([prompt])[0] if prompt else None)


def prompt_for(studio, shot: str | None, caption: str | None) -> str | None:
    """The exact training prompt of a frame, or None while it has no shot label or caption."""
    return _Prompts(studio)(shot, caption)


def stats_of(views: list[CaptionView]) -> CaptionStats:
    return CaptionStats(
        frames=len(views),
        captioned=sum(1 for v in views if v.caption),
        machine=sum(1 for v in views if v.caption_original),
        reviewed=sum(1 for v in views if v.reviewed),
        changed=sum(1 for v in views if v.changed),
        too_long=sum(1 for v in views if v.too_long),
        hand_changed=sum(1 for v in views if v.changed_by_hand),
        bulk_changed=sum(1 for v in views if v.changed_by_bulk),
    )


def stats(studio, split: str = "train") -> CaptionStats:
    return stats_of(all_captions(studio, split))


def frames_with_machine_caption(studio, frame_ids) -> set[int]:
    return {fid for fid, row in _rows(studio, frame_ids).items() if row.caption_original is not None}


def frames_without_caption(studio, frame_ids) -> list[int]:
    """The frames of ``frame_ids`` that have no caption yet (none was written, or the captioner
    gave nothing), in id order."""
    rows = _rows(studio, frame_ids)
    return sorted(fid for fid in set(frame_ids) if not (rows[fid].caption if fid in rows else None))


# ---- writing -------------------------------------------------------------------------------------
def edit_caption(studio, req: EditRequest) -> CaptionView:
    """Save a person's caption (committed at once) and mark it reviewed.

    A changed text counts as a hand edit; saving the text unchanged (accepting it) keeps how it was
    made. With ``expected_version``, a caption another *person* saved since the editor loaded it is
    not overwritten (InvalidInput); a newer *machine* caption, or the editor's own earlier save, is."""
    fid, text = frame_ref(req.frame_id), clean_text(req.text)
    t, ts = schema.captions, now()
    values = dict(caption=text, edited_by=req.editor, edited_at=ts, reviewed=True, updated_at=ts)
    cond = t.c.frame_id == fid
    if req.expected_version is not None:
        cond = sa.and_(cond, sa.or_(t.c.version == int(req.expected_version), t.c.edited_by.is_(None),
                                    t.c.edited_by == req.editor))
    kind = sa.case((t.c.caption == text, t.c.edit_kind), else_=sa.literal(HAND))
    update = t.update().where(cond).values(version=t.c.version + 1, edit_kind=kind, **values)
    first = dict(frame_id=fid, caption_original=None, version=1, created_at=ts, edit_kind=HAND, **values)
    with studio.db.write() as conn:
        if not _write_edit(conn, fid, update, first):
            who = conn.execute(sa.select(t.c.edited_by).where(t.c.frame_id == fid)).scalar()
            raise InvalidInput(f"{who} saved this caption while you were editing it; reload to see their text.")
    return get_caption(studio, fid)


def _write_edit(conn, fid: int, update, insert_values: dict) -> bool:
    """The conditional update, or the first row of a frame; False on a conflict with another person."""
    t = schema.captions
    if conn.execute(update).rowcount:
        return True
    if conn.execute(sa.select(t.c.frame_id).where(t.c.frame_id == fid)).first() is not None:
        # PostgreSQL reads committed rows per statement: the row may have appeared just now
        return bool(conn.execute(update).rowcount)
    require_frame(conn, fid)
    try:
        with conn.begin_nested():
            conn.execute(t.insert().values(**insert_values))
        return True
    except sa.exc.IntegrityError:  # PostgreSQL: a machine caption landed in between; edit it
        return bool(conn.execute(update).rowcount)


def revert_caption(studio, frame_id) -> CaptionView:
    """Back to the machine caption, as if no person had touched it (not reviewed)."""
    frame_id = frame_ref(frame_id)
    t, ts = schema.captions, now()
    with studio.db.write() as conn:
        done = conn.execute(
            t.update().where(t.c.frame_id == frame_id, t.c.caption_original.is_not(None)).values(
                caption=t.c.caption_original, edited_by=None, edited_at=None, edit_kind=None, reviewed=False,
                version=t.c.version + 1, updated_at=ts)
        ).rowcount
    if not done:
        raise InvalidInput(f"Frame {frame_id} has no machine caption to go back to.")
    return get_caption(studio, frame_id)


def save_machine_caption(studio, frame_id: int, text: str, *, model: str, prompt: str = "") -> str:
    """Store a machine caption. Returns "new", "updated" or "kept" (a person's caption was kept)."""
    return save_machine_captions(studio, [(frame_id, text)], model=model, prompt=prompt)[0]


def save_machine_captions(studio, items: list[tuple[int, str]], *, model: str, prompt: str = "") -> list[str]:
    """Store a batch of machine captions in one committed transaction; an outcome per item."""
    with studio.db.write() as conn:
        return [_save_machine(conn, int(fid), text, model, prompt) for fid, text in items]


def _save_machine(conn, fid: int, text: str, model: str, prompt: str) -> str:
    t, ts = schema.captions, now()
    machine = dict(caption_original=text, model=model, captioner_prompt=prompt or None, updated_at=ts)
    # compare-and-set: replace the training caption only while no person has saved one
    if conn.execute(t.update().where(t.c.frame_id == fid, t.c.edited_by.is_(None)).values(
            caption=text, version=t.c.version + 1, **machine)).rowcount:
        return "updated"
    if conn.execute(t.update().where(t.c.frame_id == fid).values(**machine)).rowcount:
        return "kept"
    try:
        with conn.begin_nested():
            conn.execute(t.insert().values(frame_id=fid, caption=text, reviewed=False, version=1,
                                           created_at=ts, **machine))
        return "new"
    except sa.exc.IntegrityError:  # PostgreSQL: a person's first edit landed in between
        conn.execute(t.update().where(t.c.frame_id == fid).values(**machine))
        return "kept"


def require_frame(conn, frame_id: int) -> None:
    if conn.execute(sa.select(schema.frames.c.id).where(schema.frames.c.id == frame_id)).first() is None:
        raise NotFound(f"Frame {frame_id} does not exist.")
