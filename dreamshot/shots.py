"""Shot taxonomy as data, and the one owner of the project's taxonomy, prompt template and prompt.

The paper's three classes by default, plus presets for the finer framing scale and for camera
angles. A project picks one preset (stored in project settings) and can set a quota per class.

``ShotClass.prompt`` is the phrase put in the training prompt
``a high-quality {shot} picture of {caption}``; ``key`` is the one-key shortcut in the Label tab.

The paper's core invariant is that the prompt a LoRA is trained on and the prompt it is used with
are built the same way: every feature builds them through ``Project.prompt`` (or
``training_prompt``) and reads the taxonomy and template only through ``Project`` (``studio.project``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dreamshot.errors import InvalidInput

DEFAULT_TEMPLATE = "a high-quality {shot} picture of {caption}"
DEFAULT_QUOTA = 200
RESERVED_KEYS = frozenset("xsu")  # reject, skip, undo in the Label tab
TAXONOMY_KEY = "taxonomy"          # project_settings keys; read and written here only
TEMPLATE_KEY = "prompt_template"
MAX_TEMPLATE_CHARS = 300


@dataclass(frozen=True)
class ShotClass:
    name: str      # stable id stored in the database, e.g. "close"
    label: str     # shown to people, e.g. "Close shot"
    prompt: str    # used in prompts, e.g. "close shot"
    key: str       # one keyboard key


@dataclass(frozen=True)
class Taxonomy:
    name: str
    title: str
    classes: tuple[ShotClass, ...]
    default_quota: int = DEFAULT_QUOTA
    description: str = ""
    _by_name: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        names = [c.name for c in self.classes]
        keys = [c.key for c in self.classes]
        if len(set(names)) != len(names):
            raise InvalidInput(f"taxonomy {self.name!r}: class names must be unique")
        if len(set(keys)) != len(keys) or RESERVED_KEYS & set(keys):
            raise InvalidInput(f"taxonomy {self.name!r}: keys must be unique and not x, s or u")
        object.__setattr__(self, "_by_name", {c.name: c for c in self.classes})

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def get(self, name: str) -> ShotClass:
        """The class called ``name``; InvalidInput for an unknown class."""
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidInput(
                f"Unknown shot type {name!r} for taxonomy {self.title!r}; expected one of: "
                + ", ".join(self.names)
            ) from None

    def by_key(self, key: str) -> ShotClass | None:
        return next((c for c in self.classes if c.key == key), None)


PRESETS: dict[str, Taxonomy] = {
    t.name: t
    for t in (
        Taxonomy(
            "paper", "Shot scale (paper: close / medium / long)",
            (
                ShotClass("close", "Close shot", "close shot", "1"),
                ShotClass("medium", "Medium shot", "medium shot", "2"),
                ShotClass("long", "Long shot", "long shot", "3"),
            ),
            description="The three classes of the DreamShot paper, 200 frames each.",
        ),
        Taxonomy(
            "framing", "Framing scale (extreme close-up ... extreme long shot)",
            (
                ShotClass("extreme_close_up", "Extreme close-up", "extreme close-up shot", "1"),
                ShotClass("close_up", "Close-up", "close-up shot", "2"),
                ShotClass("medium_close_up", "Medium close-up", "medium close-up shot", "3"),
                ShotClass("medium", "Medium shot", "medium shot", "4"),
                ShotClass("medium_long", "Medium long shot", "medium long shot", "5"),
                ShotClass("long", "Long shot", "long shot", "6"),
                ShotClass("extreme_long", "Extreme long shot", "extreme long shot", "7"),
            ),
            description="The finer framing scale used in cinematic-language datasets.",
        ),
        Taxonomy(
            "angle", "Camera angle",
            (
                ShotClass("eye_level", "Eye level", "eye-level shot", "1"),
                ShotClass("high", "High angle", "high-angle shot", "2"),
                ShotClass("low", "Low angle", "low-angle shot", "3"),
                ShotClass("overhead", "Overhead", "overhead shot", "4"),
                ShotClass("dutch", "Dutch angle", "dutch-angle shot", "5"),
            ),
            description="Camera angles.",
        ),
    )
}
DEFAULT_TAXONOMY = "paper"


def get_taxonomy(name: str | None = None) -> Taxonomy:
    name = name or DEFAULT_TAXONOMY
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInput(f"Unknown taxonomy {name!r}; presets: {', '.join(PRESETS)}") from None


def training_prompt(shot: ShotClass | str, caption: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The paper's training prompt, e.g. ``a high-quality close shot picture of a woman``."""
    phrase = shot.prompt if isinstance(shot, ShotClass) else str(shot)
    caption = (caption or "").strip()
    if "{caption}" not in template:
        raise InvalidInput("The prompt template must contain {caption}.")
    return template.replace("{shot}", phrase).replace("{caption}", caption)


def check_template(template: str) -> str:
    """The template with its whitespace tidied; InvalidInput when it cannot build a training prompt."""
    template = re.sub(r"\s+", " ", template or "").strip()
    if "{caption}" not in template:
        raise InvalidInput("The prompt template must contain {caption}.")
    if "{shot}" not in template:
        raise InvalidInput("The prompt template must contain {shot}: the LoRA learns the shot type from it.")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise InvalidInput(f"The prompt template is limited to {MAX_TEMPLATE_CHARS} characters.")
    leftover = re.sub(r"\{(shot|caption)\}", "", template)
    if "{" in leftover or "}" in leftover:
        raise InvalidInput("The prompt template may only use the placeholders {shot} and {caption}.")
    return template


class Project:
    """The project's taxonomy and prompt template, as stored in its settings (``studio.project``).

    Cheap to build; every read goes to the database, so a change made in one tab is seen by all."""

    def __init__(self, db):
        self.db = db

    def taxonomy(self) -> Taxonomy:
        return get_taxonomy(self.db.get_setting(TAXONOMY_KEY, None))

    def set_taxonomy(self, name: str) -> Taxonomy:
        taxonomy = get_taxonomy(name)  # InvalidInput for an unknown preset
        self.db.set_setting(TAXONOMY_KEY, taxonomy.name)
        return taxonomy

    def template(self) -> str:
        return self.db.get_setting(TEMPLATE_KEY, None) or DEFAULT_TEMPLATE

    def set_template(self, template: str) -> str:
        template = check_template(template)
        self.db.set_setting(TEMPLATE_KEY, template)
        return template

    def shot_phrase(self, shot: str, taxonomy: Taxonomy | None = None) -> str:
        """The words for ``{shot}``: the class's phrase (``close shot``), or the name itself with
        spaces for a shot outside the current taxonomy (a LoRA trained under another preset)."""
        taxonomy = taxonomy or self.taxonomy()
        return taxonomy.get(shot).prompt if shot in taxonomy.names else str(shot).replace("_", " ")

    def prompt(self, shot: str, caption: str, template: str | None = None) -> str:
        """The training prompt of ``caption`` for ``shot`` - and the generation prompt: the same."""
        return training_prompt(self.shot_phrase(shot), caption, template or self.template())
