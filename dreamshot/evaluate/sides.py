"""The two generators an evaluation compares: side A (``--a``, default ``base``) and side B
(``--b``, default ``lora``: the shot's LoRA at ``--alpha``), resolved per shot type against the
library, and the generation request of each side for one planned item.

Both sides get the same prompt and seed. The prompt is the item's (the project's template with the
shot words, or without them for the ablation); a side with a textual-inversion embedding gets its
token where the shot words stand (``shots.training_prompt(token, caption, template)``), as it was
trained; in the ablation there are no shot words, so no token either. A side with a ControlNet gets
its control image from the item's held-out frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamshot.errors import InvalidInput
from dreamshot.generate import generators
from dreamshot.generate.generators import GeneratorSpec, Resolved

SIDES = ("a", "b")


@dataclass
class Sides:
    a: GeneratorSpec
    b: GeneratorSpec
    shots: list[str]
    resolved: dict          # side -> {shot: Resolved}

    def spec(self, side: str) -> GeneratorSpec:
        return self.a if side == "a" else self.b

    def label(self, side: str) -> str:
        return generators.label(self.spec(side), list(self.resolved[side].values()))

    @property
    def default(self) -> bool:
        return generators.is_default_pair(self.a, self.b)

    @property
    def b_has_lora(self) -> bool:
        """The α curve varies side B's LoRA strength: only when B has a LoRA."""
        return any(r.lora is not None for r in self.resolved["b"].values())

    def loras(self) -> list:
        """Every LoRA file either side uses (to check it fits the base model)."""
        return [r.lora for side in SIDES for r in self.resolved[side].values() if r.lora is not None]

    def report(self) -> dict:
        return {side: {"spec": self.spec(side).text, "label": self.label(side),
                       "per_shot": {shot: r.record() for shot, r in self.resolved[side].items()}}
                for side in SIDES}

    def request(self, side: str, item, options, template: str, alpha: float | None = None):
        """The ``GenerationRequest`` of one side for one planned item (``alpha``: side B's α for
        an α-curve item)."""
        from dreamshot.generate.request import GenerationRequest
        from dreamshot.shots import training_prompt

        res: Resolved = self.resolved[side][item.shot]
        if alpha is not None:
            res = Resolved(res.spec.with_alpha(alpha), res.shot, res.lora, res.embedding)
        prompt = item.prompt
        if res.token and not item.ablation:
            prompt = training_prompt(res.token, item.caption, template)
        return GenerationRequest(prompt=prompt, use_template=False, sampler=options.sampler, steps=options.steps,
                                 cfg=options.cfg, width=options.width, height=options.height, seed=item.seed,
                                 **res.request_fields(item.frame_path))


def parse_sides(options) -> tuple[GeneratorSpec, GeneratorSpec]:
    """Side A and B of the options (a LoRA part without @α takes ``options.alpha``)."""
    return (generators.parse(options.a or generators.DEFAULT_A, options.alpha),
            generators.parse(options.b or generators.DEFAULT_B, options.alpha))


def resolve_sides(studio, entries: list, options) -> Sides:
    """Both generators for the requested shots (default: every shot type both can serve)."""
    a, b = parse_sides(options)
    generators.check_pair(a, b)
    taxonomy = studio.project.taxonomy()
    shots = list(options.shots or [])
    for shot in shots:
        taxonomy.get(shot)
    if not shots:
        shots, first_error = [], None
        for shot in taxonomy.names:
            try:
                generators.resolve(a, shot, entries), generators.resolve(b, shot, entries)
                shots.append(shot)
            except InvalidInput as exc:
                first_error = first_error or exc
        if not shots:
            if generators.is_default_pair(a, b):
                raise InvalidInput("No shot LoRA yet: train one (Train tab) or upload one before evaluating.")
            raise InvalidInput(f"No shot type can be evaluated with A = {a.text} and B = {b.text}: {first_error}")
    resolved = {side: {shot: generators.resolve(spec, shot, entries) for shot in shots}
                for side, spec in (("a", a), ("b", b))}
    return Sides(a, b, shots, resolved)
