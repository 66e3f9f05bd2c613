"""Bulk caption edits: preview, then apply exactly what was previewed.

- Find and replace (plain text or a regular expression) and the shot-word strip (``a close-up of a
  man`` -> ``a man``: the LoRA must learn the shot scale from the ``{shot}`` phrase only).
- A regular expression runs on the ``regex`` engine with a time limit for the whole preview
  (``REGEX_TIME_LIMIT_S``): a pattern that backtracks for ever (``(a|aa)+$``) is stopped and
  refused with a message; nothing is changed. The engine counts the CPU time of the match, so on a
  busy machine the wall-clock wait can be longer; the server's work stays bounded either way.
- Applied changes are recorded as bulk edits (``edit_kind = "bulk"``), so the edit rate keeps
  counting what people changed by hand; a caption someone already changed by hand stays a hand edit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import regex as rx  # the `regex` engine: supports a timeout
import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.storage import now

from labeling.captions.service import BULK, HAND, CaptionFilter, CaptionView, clean_text, list_captions

REGEX_TIME_LIMIT_S = 2.0
MAX_FIND_CHARS = 500

# Words that tell the caption the shot scale: the LoRA must learn it from the {shot} phrase only.
SHOT_TERMS = [
    "extreme close-up", "extreme closeup", "extreme close up", "medium close-up", "medium close up",
    "close-up", "closeup", "close up", "close shot", "medium long shot", "medium shot", "mid shot",
    "mid-shot", "medium-shot", "extreme long shot", "extreme wide shot", "long shot", "wide shot",
    "full shot", "establishing shot", "wide-angle shot", "wide angle shot", "cowboy shot", "two shot",
    "over-the-shoulder shot", "over the shoulder shot",
]


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


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    return text.strip(" ,;:-")


def _changes(views: list[CaptionView], transform: Callable[[str], str]) -> list[BulkChange]:
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


# ---- find and replace ----------------------------------------------------------------------------
def _compile_find(find: str, *, use_regex: bool, case_sensitive: bool) -> rx.Pattern:
    if not find:
        raise InvalidInput("Enter the text to find.")
    if len(find) > MAX_FIND_CHARS:
        raise InvalidInput(f"The text to find is limited to {MAX_FIND_CHARS} characters.")
    try:
        return rx.compile(find if use_regex else rx.escape(find), 0 if case_sensitive else rx.IGNORECASE)
    except rx.error as exc:
        raise InvalidInput(f"Invalid regular expression: {exc}") from None


def _timed_sub(pattern: rx.Pattern, repl: str, limit_s: float) -> Callable[[str], str]:
    """``pattern.sub(repl, text)`` under one time budget shared by every caption of a preview."""
    deadline = time.monotonic() + limit_s

    def sub(text: str) -> str:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return pattern.sub(repl, text, timeout=left)

    return sub


def preview_replace(studio, find: str, replace: str, flt: CaptionFilter = CaptionFilter(), *,
                    regex: bool = False, case_sensitive: bool = False,
                    time_limit_s: float | None = None) -> list[BulkChange]:
    """What find-and-replace would change (captions it would empty are left out). InvalidInput for a
    bad pattern or one that runs past ``time_limit_s`` (default ``REGEX_TIME_LIMIT_S``) over the captions."""
    time_limit_s = REGEX_TIME_LIMIT_S if time_limit_s is None else time_limit_s
    pattern = _compile_find(find, use_regex=regex, case_sensitive=case_sensitive)
    repl = replace or ""
    if not regex:
        repl = repl.replace("\\", "\\\\")
    views = list_captions(studio, flt)
    try:
        return _changes(views, _timed_sub(pattern, repl, time_limit_s))
    except TimeoutError:
        raise InvalidInput(
            f"The regular expression took longer than {time_limit_s:g} s over {len(views)} captions "
            "(it backtracks too much, like (a|aa)+$); simplify it. Nothing was changed.") from None
    except (rx.error, IndexError) as exc:
        raise InvalidInput(f"Invalid replacement: {exc}") from None


# ---- shot-word strip -------------------------------------------------------------------------------
def shot_pattern(terms: list[str] | None = None) -> re.Pattern:
    """The shot words as one pattern (built from escaped words: no user regex, no backtracking risk)."""
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


# ---- apply -------------------------------------------------------------------------------------------
def apply_changes(studio, changes: list[BulkChange], editor: str) -> BulkResult:
    """Apply previewed changes in one committed transaction, recorded as bulk edits; a caption
    changed since the preview (another version) is left alone and reported as a conflict."""
    t, ts = schema.captions, now()
    kind = sa.case((t.c.edit_kind == HAND, t.c.edit_kind), else_=sa.literal(BULK))
    result = BulkResult()
    with studio.db.write() as conn:
        for ch in changes:
            after = clean_text(ch.after)
            done = conn.execute(t.update().where(t.c.frame_id == int(ch.frame_id), t.c.version == int(ch.version))
                                .values(caption=after, edited_by=editor, edited_at=ts, edit_kind=kind,
                                        version=t.c.version + 1, updated_at=ts)).rowcount
            if done:
                result.applied += 1
            else:
                result.conflicts.append(int(ch.frame_id))
    return result
