"""What a studio run would train on, checked before it is queued (the Train tab, ``/train_start``
and ``python -m training --shots``): a labeled frame without a caption is refused there, with the
frames named, instead of training on the bare prompt ``a high-quality close shot picture of `` with
only the run's log saying so. Runs on an imagefolder are checked by the trainer (``training.data``:
a row without a caption or text is refused)."""

from __future__ import annotations

from dreamshot.errors import InvalidInput

SHOWN = 8   # frame ids named per shot type


def uncaptioned(studio, shots: list[str], *, method: str = "lora") -> dict[str, list[int]]:
    """Per shot type, the frames a studio run would export (final labels of the train split, no
    extras; for a motion run only those with a clip) that have no caption; shots without any left out.
    The final labels are read once for all the shots."""
    from dreamshot import schema
    from labeling import labels
    from labeling.captions.service import frames_without_caption

    final = labels.final_labels(studio, include_extra=False, split="train")
    ids = [fid for fid, s in final.items() if s in shots]
    if method == "motion" and ids:
        import sqlalchemy as sa

        f = schema.frames
        with studio.db.read() as conn:
            metas = dict(conn.execute(sa.select(f.c.id, f.c.meta).where(f.c.id.in_(ids))).all())
        ids = [fid for fid in ids if (metas.get(fid) or {}).get("clip")]
    missing: dict[str, list[int]] = {}
    for fid in frames_without_caption(studio, ids):
        missing.setdefault(final[fid], []).append(fid)
    return {shot: missing[shot] for shot in shots if shot in missing}


def refuse_uncaptioned(studio, shots: list[str], *, method: str = "lora") -> None:
    """InvalidInput naming, per shot type, the frames without a caption; nothing when all have one."""
    missing = uncaptioned(studio, shots, method=method)
    if not missing:
        return
    total = sum(len(ids) for ids in missing.values())
    parts = []
    for shot, ids in missing.items():
        named = ", ".join(str(i) for i in ids[:SHOWN]) + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")
        parts.append(f"{len(ids)} {shot} frame{'s' if len(ids) != 1 else ''} ({named})")
    one = total == 1
    it, they = ("it", "it shows") if one else ("them", "they show")
    raise InvalidInput(f"Not started: {'; '.join(parts)} ha{'s' if one else 've'} no caption and would train on the "
                       f"prompt without one. Caption {it} in the Captions tab ({they} “(no caption)”; Auto-caption "
                       f"fills only missing captions) or reject {it} in the Label tab, then start again.")
