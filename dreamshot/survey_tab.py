"""Survey tab (UI builder). The feature is not built yet."""

from dreamshot.ui import not_built


def build(studio) -> None:
    not_built("The blind A/B survey (paper Table 5)")
