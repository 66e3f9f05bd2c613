"""Captions: machine drafts, human edits, review, bulk operations and the training prompt.

One row per frame in the ``captions`` table: ``caption_original`` is the machine caption (never
changed by people), ``caption`` the text used for training (the machine caption until someone edits
it), ``edited_by``/``edited_at`` who last saved it and when, ``reviewed`` whether a person has looked
at it, ``version`` a counter bumped on every change of ``caption``.

Race rule: a machine caption only replaces ``caption`` while ``edited_by IS NULL`` - one conditional
UPDATE (compare-and-set), so an auto-caption run can never overwrite a human edit, whatever the
timing. Every edit is its own committed transaction.
"""

from __future__ import annotations

import functools
import re
import tempfile
import threading
from dataclasses import dataclass, field

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput, NotFound
from dreamshot.shots import DEFAULT_TEMPLATE, get_taxonomy, training_prompt
from dreamshot.storage import now

from labeling.captions import sources as caption_sources
from labeling.captions.captioner import clean_caption

TEMPLATE_KEY = "prompt_template"
CLIP_MAX_TOKENS = 77          # SD 1.5's text encoder context, start and end tokens included
MAX_CAPTION_CHARS = 1000
SPLITS = ("train", "test")

# Words that tell the caption the shot scale: the LoRA must learn it from the {shot} phrase only.
SHOT_TERMS = [
    "extreme close-up", "extreme closeup", "extreme close up", "medium close-up", "medium close up",
    "close-up", "closeup", "close up", "close shot", "medium long shot", "medium shot", "mid shot",
    "mid-shot", "medium-shot", "extreme long shot", "extreme wide shot", "long shot", "wide shot",
    "full shot", "establishing shot", "wide-angle shot", "wide angle shot", "cowboy shot", "two shot",
    "over-the-shoulder shot", "over the shoulder shot",
]


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

    @property
    def changed(self) -> bool:
        return self.caption_original is not None and self.caption is not None and self.caption != self.caption_original

    @property
    def too_long(self) -> bool:
        return self.tokens is not None and self.tokens > CLIP_MAX_TOKENS


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
class BulkChange:
    frame_id: int
    version: int
    before: str
    after: str


@dataclass
class BulkResult:
    applied: int = 0
    conflicts: list[int] = field(default_factory=list)   # frames changed by someone since the preview


@dataclass(frozen=True)
class CaptionStats:
    frames: int          # frames in scope (labeled frames of the split)
    captioned: int       # with a caption
    machine: int         # with a machine caption
    reviewed: int        # looked at by a person
    changed: int         # caption differs from the machine caption
    too_long: int        # training prompts over 77 CLIP tokens

    @property
    def edit_rate(self) -> float | None:
        """Share of machine-captioned frames whose caption people changed."""
        return self.changed / self.machine if self.machine else None

    def markdown(self) -> str:
        rate = f"**{self.edit_rate:.0%}**" if self.edit_rate is not None else "n/a"
        return (
            f"{self.captioned}/{self.frames} frames captioned · {self.reviewed} reviewed · "
            f"edit rate {rate} ({self.changed} of {self.machine} machine captions changed by people)"
            + (f" · ⚠ {self.too_long} prompts over {CLIP_MAX_TOKENS} tokens" if self.too_long else "")
        )


# ---- template and tokens -------------------------------------------------------------------------
def get_template(studio) -> str:
    return studio.db.get_setting(TEMPLATE_KEY, DEFAULT_TEMPLATE) or DEFAULT_TEMPLATE


def check_template(template: str) -> str:
    template = re.sub(r"\s+", " ", template or "").strip()
    if "{caption}" not in template:
        raise InvalidInput("The prompt template must contain {caption}.")
    if "{shot}" not in template:
        raise InvalidInput("The prompt template must contain {shot}: the LoRA learns the shot type from it.")
    if len(template) > 300:
        raise InvalidInput("The prompt template is limited to 300 characters.")
    leftover = re.sub(r"\{(shot|caption)\}", "", template)
    if "{" in leftover or "}" in leftover:
        raise InvalidInput("The prompt template may only use the placeholders {shot} and {caption}.")
    return template


def set_template(studio, template: str) -> str:
    template = check_template(template)
    studio.db.set_setting(TEMPLATE_KEY, template)
    return template


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    from dreamshot.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer

    folder = write_clip_tokenizer(tempfile.mkdtemp(prefix="dreamshot-clip-tok-"))
    return load_clip_tokenizer(folder)


_TOKENIZER_LOCK = threading.Lock()


_TOKEN_MEMO: dict[str, int] = {}


def token_counts(texts: list[str]) -> list[int]:
    """CLIP token counts (start and end tokens included), as SD 1.5's text encoder sees them."""
    with _TOKENIZER_LOCK:
        todo = list(dict.fromkeys(t for t in texts if t not in _TOKEN_MEMO))
        if todo:
            if len(_TOKEN_MEMO) > 50_000:
                _TOKEN_MEMO.clear()
            ids = _clip_tokenizer()(todo, truncation=False).input_ids
            _TOKEN_MEMO.update(zip(todo, map(len, ids)))
        return [_TOKEN_MEMO[t] for t in texts]


def prompt_for(studio, shot: str | None, caption: str | None, template: str | None = None) -> str | None:
    """The exact training prompt of a frame, or None while it has no shot label or caption."""
    return _prompt(_taxonomy(studio), shot, caption, template or get_template(studio))


def _prompt(tax, shot: str | None, caption: str | None, template: str) -> str | None:
    if not shot or not (caption or "").strip():
        return None
    shot_class = tax.get(shot) if shot in tax.names else shot.replace("_", " ")
    return training_prompt(shot_class, caption, template)


def _taxonomy(studio):
    return get_taxonomy(studio.db.get_setting("taxonomy"))


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


def _views(studio, frames: dict[int, str | None], split: str) -> list[CaptionView]:
    rows = _rows(studio, frames)
    template, tax = get_template(studio), _taxonomy(studio)
    labels = {c.name: c.label for c in tax.classes}
    prompts = {fid: _prompt(tax, shot, getattr(rows.get(fid), "caption", None), template)
               for fid, shot in frames.items()}
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


def get_caption(studio, frame_id: int) -> CaptionView:
    frame_id = int(frame_id)
    with studio.db.read() as conn:
        split = conn.execute(sa.select(schema.frames.c.split).where(schema.frames.c.id == frame_id)).scalar()
    if split is None:
        raise NotFound(f"Frame {frame_id} does not exist.")
    shot = caption_sources.shot_of(studio, frame_id)
    return _views(studio, {frame_id: shot}, split)[0]


def stats_of(views: list[CaptionView]) -> CaptionStats:
    return CaptionStats(
        frames=len(views),
        captioned=sum(1 for v in views if v.caption),
        machine=sum(1 for v in views if v.caption_original),
        reviewed=sum(1 for v in views if v.reviewed),
        changed=sum(1 for v in views if v.changed),
        too_long=sum(1 for v in views if v.too_long),
    )


def stats(studio, split: str = "train") -> CaptionStats:
    return stats_of(all_captions(studio, split))


# ---- writing -------------------------------------------------------------------------------------
def clean_text(text: str | None) -> str:
    """A caption as stored: one line, single spaces, no control characters; InvalidInput for an empty one."""
    text = clean_caption(text or "")
    if not text:
        raise InvalidInput("A caption cannot be empty.")
    if len(text) > MAX_CAPTION_CHARS:
        raise InvalidInput(f"A caption is limited to {MAX_CAPTION_CHARS} characters.")
    return text


def edit_caption(studio, req: EditRequest) -> CaptionView:
    """Save a person's caption (committed at once) and mark it reviewed.

    With ``expected_version``, a caption another *person* saved since the editor loaded it is not
    overwritten (InvalidInput); a newer *machine* caption, or the editor's own earlier save, is."""
    text = clean_text(req.text)
    t, ts = schema.captions, now()
    values = dict(caption=text, edited_by=req.editor, edited_at=ts, reviewed=True, updated_at=ts)
    fid = int(req.frame_id)
    cond = t.c.frame_id == fid
    if req.expected_version is not None:
        cond = sa.and_(cond, sa.or_(t.c.version == int(req.expected_version), t.c.edited_by.is_(None),
                                    t.c.edited_by == req.editor))
    update = t.update().where(cond).values(version=t.c.version + 1, **values)
    with studio.db.write() as conn:
        if not _write_edit(conn, fid, update, dict(frame_id=fid, caption_original=None, version=1, created_at=ts,
                                                   **values)):
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
    _require_frame(conn, fid)
    try:
        with conn.begin_nested():
            conn.execute(t.insert().values(**insert_values))
        return True
    except sa.exc.IntegrityError:  # PostgreSQL: a machine caption landed in between; edit it
        return bool(conn.execute(update).rowcount)


def revert_caption(studio, frame_id: int) -> CaptionView:
    """Back to the machine caption, as if no person had touched it (not reviewed)."""
    t, ts = schema.captions, now()
    with studio.db.write() as conn:
        done = conn.execute(
            t.update().where(t.c.frame_id == int(frame_id), t.c.caption_original.is_not(None)).values(
                caption=t.c.caption_original, edited_by=None, edited_at=None, reviewed=False,
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


def frames_with_machine_caption(studio, frame_ids) -> set[int]:
    return {fid for fid, row in _rows(studio, frame_ids).items() if row.caption_original is not None}


def _require_frame(conn, frame_id: int) -> None:
    if conn.execute(sa.select(schema.frames.c.id).where(schema.frames.c.id == frame_id)).first() is None:
        raise NotFound(f"Frame {frame_id} does not exist.")


# ---- bulk operations: preview, then apply exactly what was previewed ---------------------------
def _compile_find(find: str, *, regex: bool, case_sensitive: bool) -> re.Pattern:
    if not find:
        raise InvalidInput("Enter the text to find.")
    try:
        return re.compile(find if regex else re.escape(find), 0 if case_sensitive else re.IGNORECASE)
    except re.error as exc:
        raise InvalidInput(f"Invalid regular expression: {exc}") from None


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    return text.strip(" ,;:-")


def _changes(views: list[CaptionView], transform) -> list[BulkChange]:
    out = []
    for v in views:
        if not v.caption:
            continue
        raw = transform(v.caption)
        if raw == v.caption:  # untouched captions are not reformatted
            continue
        after = _tidy(raw)
        if after and after != v.caption:
            out.append(BulkChange(v.frame_id, v.version, v.caption, after))
    return out


def preview_replace(studio, find: str, replace: str, flt: CaptionFilter = CaptionFilter(), *,
                    regex: bool = False, case_sensitive: bool = False) -> list[BulkChange]:
    """What find-and-replace would change (captions it would empty are left out)."""
    pattern = _compile_find(find, regex=regex, case_sensitive=case_sensitive)
    repl = replace or ""
    if not regex:
        repl = repl.replace("\\", "\\\\")
    try:
        return _changes(list_captions(studio, flt), lambda text: pattern.sub(repl, text))
    except re.error as exc:
        raise InvalidInput(f"Invalid replacement: {exc}") from None


def shot_pattern(terms: list[str] | None = None) -> re.Pattern:
    terms = [t.strip() for t in (terms or SHOT_TERMS) if t and t.strip()]
    if not terms:
        raise InvalidInput("Give at least one word or phrase to strip.")
    alternatives = "|".join(re.escape(t).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]*")
                            for t in sorted(set(terms), key=len, reverse=True))
    return re.compile(
        rf"(?:\b(?:in|as)\s+)?(?:\b(?:an?|the)\s+)?\b(?:{alternatives})(?:\s+(?:shot|photo|view|image))?"
        rf"(?:\s+(?:of|showing|with)\b)?",
        re.IGNORECASE,
    )


def strip_shot_words(text: str, terms: list[str] | None = None) -> str:
    """``a close-up of a man in a hat`` -> ``a man in a hat``."""
    return _tidy(shot_pattern(terms).sub(" ", text))


def preview_strip(studio, flt: CaptionFilter = CaptionFilter(), terms: list[str] | None = None) -> list[BulkChange]:
    """Captions that mention the shot scale, with the words removed."""
    pattern = shot_pattern(terms)
    return _changes(list_captions(studio, flt), lambda text: pattern.sub(" ", text))


def apply_changes(studio, changes: list[BulkChange], editor: str) -> BulkResult:
    """Apply previewed changes in one committed transaction; a caption changed since the preview
    (another version) is left alone and reported as a conflict."""
    t, ts = schema.captions, now()
    result = BulkResult()
    with studio.db.write() as conn:
        for ch in changes:
            after = clean_text(ch.after)
            done = conn.execute(t.update().where(t.c.frame_id == ch.frame_id, t.c.version == ch.version).values(
                caption=after, edited_by=editor, edited_at=ts, version=t.c.version + 1, updated_at=ts)).rowcount
            if done:
                result.applied += 1
            else:
                result.conflicts.append(ch.frame_id)
    return result
