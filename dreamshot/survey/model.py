"""The survey's plain data and pure rules: a survey's name, its summary line (``SurveyInfo``), a
participant's plan, and what an A/B/N answer chose. No database, no studio (``service.py`` has those).
"""

from __future__ import annotations

import dataclasses
import random
import re

from dreamshot.errors import InvalidInput

_NAME = re.compile(r"^[\w .\-]{1,64}$")


def clean_survey_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InvalidInput("A survey name is 1-64 letters, digits, spaces, dots, dashes or underscores.")
    return name


def choice_of(answer: str, lora_side: str) -> str:
    """A/B/N as the participant saw it -> lora / base / neither."""
    return "neither" if answer == "N" else ("lora" if answer == lora_side else "base")


@dataclasses.dataclass
class SurveyInfo:
    id: int
    name: str
    state: str
    per_participant: int
    intro: str
    settings: dict
    pool: int
    ready: int
    participants: int    # not counting previews
    answers: int
    previews: int = 0    # studio members who tried it (their answers are kept, never counted)
    kept: tuple = ()     # from build only: the asked-for settings an unfinished survey's own settings won over

    def line(self) -> str:
        gens = (self.settings or {}).get("generators") or {}
        versus = f", A = {gens['a']['label']} vs B = {gens['b']['label']}" if gens else ""
        tried = f" (+{self.previews} preview(s) by studio members, not counted)" if self.previews else ""
        return (f"{self.name}: {self.state}, {self.ready}/{self.pool} pairs ready, {self.per_participant} "
                f"per participant (+1 repeat), {self.participants} participants, {self.answers} answers{tried}{versus}")


def make_plan(pairs: list[tuple[int, str]], k: int, rng: random.Random) -> list[dict]:
    """A participant's slots: k pairs balanced across shot types, shuffled, random sides, and one
    of them repeated later with its sides swapped (round 1)."""
    by_shot: dict[str, list[int]] = {}
    for pid, shot in pairs:
        by_shot.setdefault(shot, []).append(pid)
    for ids in by_shot.values():
        rng.shuffle(ids)
    groups, chosen = list(by_shot.values()), []
    rng.shuffle(groups)
    while len(chosen) < k and any(groups):
        for ids in groups:
            if ids and len(chosen) < k:
                chosen.append(ids.pop())
    rng.shuffle(chosen)
    plan = [{"pair": pid, "lora_side": rng.choice("AB"), "round": 0} for pid in chosen]
    first = rng.randrange(max(1, (len(plan) + 1) // 2))
    repeat = dict(plan[first], round=1, lora_side="B" if plan[first]["lora_side"] == "A" else "A")
    plan.insert(rng.randint(min(first + 2, len(plan)), len(plan)), repeat)
    return plan
