"""``python -m labeling SUBCOMMAND``: headless labeling and captioning.

    import SOURCE     import a pool of frames (folder, .zip, datasets imagefolder/id, video files)
    export OUT        export the labeled set as a Hugging Face imagefolder
    stats             per-class counts, quotas, rejects and agreement
    caption           BLIP-2 captions for labeled frames

Every subcommand takes the studio settings (--data, --db, --model, ...).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dreamshot import settings as config
from dreamshot.errors import DreamShotError
from dreamshot.safety import configure_logging

# Modules that add subcommands: each defines register(subparsers) and sets a `run(studio, args)`
# default on its parsers. A module not written yet is skipped.
COMMAND_MODULES = ["labeling.cli_label", "labeling.cli_captions"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labeling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dreamshot.studio import Studio

    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        studio = Studio.open(config.from_args(args))
        return int(args.run(studio, args) or 0)
    except DreamShotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything acknowledged so far is saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
