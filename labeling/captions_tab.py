"""Captions tab (UI builder). The feature is not built yet."""

from dreamshot.ui import not_built


def build(studio) -> None:
    not_built("Captioning (BLIP-2 drafts, human edits)")
