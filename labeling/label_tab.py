"""Label tab (UI builder). The feature is not built yet."""

from dreamshot.ui import not_built


def build(studio) -> None:
    not_built("Labeling (import, filter, crop, label, export)")
