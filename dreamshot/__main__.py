"""``python -m dreamshot SUBCOMMAND``: generation, survey, evaluation and video, headless.

    generate      images from a prompt with a shot LoRA at strength α (PNG with A1111 settings)
    sweep         shot types × α values for one prompt and seed, as one grid image (paper Fig. 3)
    storyboard    lines "shot | description" -> numbered contact sheet (PNG + PDF)
    read-png      print the settings stored in generated PNGs (A1111 'parameters' text)
    loras         list the LoRA library; `loras add FILE --name N` validates and adds an upload
    survey        blind A/B survey: build, open, close, list, results, participants, exclude
    evaluate      CLIP-T / DINO evaluation (paper Tables 3-4): pairs.jsonl, results.json/.csv/.png
    video         AnimateDiff shot clips, shot-to-shot transitions, per-frame restyling of a video

Every subcommand takes the studio settings (--data, --db, --model, ...), before or after its name.
"""

from __future__ import annotations

import sys

from dreamshot import cli

COMMAND_MODULES = ["dreamshot.generate.cli", "dreamshot.survey.cli", "dreamshot.evaluate.cli", "dreamshot.video.cli"]


def build_parser():
    return cli.build_parser("python -m dreamshot", __doc__, COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), argv, interrupted="images finished so far are saved")


if __name__ == "__main__":
    sys.exit(main())
