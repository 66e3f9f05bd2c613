"""``python -m labeling SUBCOMMAND``: headless labeling and captioning.

    import SOURCE     import a pool of frames (folder, .zip, datasets imagefolder/id, video files)
    export OUT        export the labeled set as a Hugging Face imagefolder
    stats             per-class counts, quotas, rejects, agreement and the shot-type model's accuracy
    suggest           pre-label unlabeled frames with the shot-type model (review them by class)
    caption           BLIP-2 captions for labeled frames

Every subcommand takes the studio settings (--data, --db, --model, ...).
"""

from __future__ import annotations

import sys

from dreamshot import cli

COMMAND_MODULES = ["labeling.cli", "labeling.suggest.cli", "labeling.captions.cli"]


def build_parser():
    return cli.build_parser("python -m labeling", __doc__, COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), argv, interrupted="everything acknowledged so far is saved")


if __name__ == "__main__":
    sys.exit(main())
