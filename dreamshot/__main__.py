"""``python -m dreamshot SUBCOMMAND``: headless generation (and, later, survey and evaluation).

    generate      images from a prompt with a shot LoRA at strength α (PNG with A1111 settings)
    sweep         shot types × α values for one prompt and seed, as one grid image (paper Fig. 3)
    storyboard    lines "shot | description" -> numbered contact sheet (PNG + PDF)
    read-png      print the settings stored in generated PNGs (A1111 'parameters' text)
    loras         list the LoRA library; `loras add FILE --name N` validates and adds an upload

Every subcommand takes the studio settings (--data, --db, --model, ...), before or after its name.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dreamshot import settings as config
from dreamshot.errors import DreamShotError
from dreamshot.safety import configure_logging

# Modules that add subcommands: each defines register(subparsers, parents) and sets a
# `run(studio, args)` default on its parsers (`run_without_studio` for commands needing none).
# A module not written yet is skipped.
COMMAND_MODULES = ["dreamshot.cli_generate", "dreamshot.cli_survey", "dreamshot.cli_evaluate"]


def _settings_parent() -> argparse.ArgumentParser:
    """The common flags for subparsers; SUPPRESS keeps a value given before the subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    config.add_arguments(parent)
    for action in parent._actions:
        action.default = argparse.SUPPRESS
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dreamshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    parents = [_settings_parent()]
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dreamshot.studio import Studio

    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        if getattr(args, "run_without_studio", None):
            return int(args.run_without_studio(args) or 0)
        studio = Studio.open(config.from_args(args))
        try:
            return int(args.run(studio, args) or 0)
        finally:
            studio.close()
    except DreamShotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; images finished so far are saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
