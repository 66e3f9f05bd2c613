"""Evaluate tab (UI builder). The feature is not built yet."""

from dreamshot.ui import not_built


def build(studio) -> None:
    not_built("CLIP-T / DINO evaluation (paper Tables 3-4)")
