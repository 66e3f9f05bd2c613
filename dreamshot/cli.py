"""Plumbing shared by the project's ``python -m`` commands (dreamshot, labeling; training has its
own single command): the common settings flags before *or* after the subcommand, subcommands
contributed by modules, and one way of reporting errors (a line on stderr and exit status 2).

A command module defines ``register(subparsers, parents)``: it adds its parsers with
``parents=parents`` and sets ``run(studio, args)`` on each (``run_without_studio(args)`` for a
command that needs no studio). A listed module that cannot be imported is an error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dreamshot import settings as config
from dreamshot.errors import DreamShotError
from dreamshot.safety import configure_logging, harden_pillow, input_message


def settings_parent(*, model: bool = True) -> argparse.ArgumentParser:
    """The common flags for subparsers; SUPPRESS keeps a value given before the subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    config.add_arguments(parent, model=model)
    for action in parent._actions:
        action.default = argparse.SUPPRESS
    return parent


def build_parser(prog: str, description: str, command_modules: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    parents = [settings_parent()]
    for name in command_modules:
        importlib.import_module(name).register(sub, parents)  # a missing module is a bug: raise
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None, *, interrupted: str) -> int:
    """Parse, open the studio, run the chosen subcommand; DreamShotError -> one line, status 2."""
    from dreamshot.studio import Studio

    args = parser.parse_args(argv)
    configure_logging([getattr(args, "admin_password", None) or ""])
    harden_pillow()   # also for commands that open no studio (read-png)
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
    except Exception as exc:
        message = input_message(exc)
        if message is None:   # an internal error: the traceback helps
            raise
        print(f"error: {message}", file=sys.stderr)   # e.g. an image bomb, a file that is not an image
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {interrupted}", file=sys.stderr)
        return 130
