"""Captions, headless: machine captions, the edit rate, bulk find/replace.

    python -m labeling caption [--data DIR] [--model ID|DIR] [--batch N] [--prefix TEXT]
                               [--max-length N] [--split train|test] [--redo]
    python -m labeling caption-stats [--data DIR] [--split train|test]
    python -m labeling caption-replace FIND REPLACE [--regex] [--case-sensitive] [--shot NAME]
                                       [--split train|test] [--apply --editor NAME]

Resumable: frames that already have a machine caption are skipped unless --redo. A person's edited
caption is never replaced (the new machine caption is stored beside it). Ctrl+C stops after saving
every finished batch.
"""

from __future__ import annotations

import argparse
import sys

from dreamshot import cli

from labeling.captions.captioner import CAPTIONERS, DEFAULT_CAPTIONER, MAX_NEW_TOKENS_LIMIT


def register(subparsers, parents) -> None:
    # Here --model names the captioner, so the studio flags come without their --model.
    p = subparsers.add_parser("caption", help="BLIP-2 captions for labeled frames", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              parents=[cli.settings_parent(model=False)])
    p.add_argument("--model", dest="captioner", metavar="ID|DIR", default=DEFAULT_CAPTIONER,
                   help=f"captioner: a Hub id ({', '.join(c for c, _ in CAPTIONERS if '/' in c)}), a local "
                        f"folder, or 'demo' (tiny untrained BLIP-2, random words) [default {DEFAULT_CAPTIONER}]")
    p.add_argument("--batch", type=int, default=8, metavar="N", help="images per batch [8]")
    p.add_argument("--prefix", default="", metavar="TEXT",
                   help='prompt for the captioner, e.g. "a photo of" (not kept in the caption)')
    p.add_argument("--max-length", type=int, default=30, metavar="N",
                   help=f"length limit in new tokens, 1-{MAX_NEW_TOKENS_LIMIT} [30]")
    p.add_argument("--min-length", type=int, default=0, metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--split", choices=["train", "test"], default="train",
                   help="train: the labeled frames; test: every held-out frame [train]")
    p.add_argument("--redo", action="store_true", help="caption again frames that already have a machine caption")
    p.set_defaults(run=run)

    # these two load no model: they take the studio flags as every command does (--model is ignored)
    s = subparsers.add_parser("caption-stats", help="captioned, reviewed, edit rate (hand vs bulk edits)",
                              parents=parents)
    s.add_argument("--split", choices=["train", "test"], default="train")
    s.set_defaults(run=run_stats)

    r = subparsers.add_parser("caption-replace", help="find/replace in captions: preview, or --apply (bulk edit)",
                              parents=parents)
    r.add_argument("find")
    r.add_argument("replace")
    r.add_argument("--regex", action="store_true", help="FIND is a regular expression (time-limited)")
    r.add_argument("--case-sensitive", action="store_true")
    r.add_argument("--shot", default=None, metavar="NAME", help="only captions of this shot type")
    r.add_argument("--split", choices=["train", "test"], default="train")
    r.add_argument("--apply", action="store_true", help="apply the changes (default: preview only)")
    r.add_argument("--editor", default="cli", metavar="NAME", help="recorded as the editor of the bulk edit [cli]")
    r.set_defaults(run=run_replace)


def run_stats(studio, args) -> int:
    from labeling.captions import service

    s = service.stats(studio, args.split)
    rate = lambda x: "n/a" if x is None else f"{x:.0%}"  # noqa: E731
    print(f"{args.split}: {s.captioned}/{s.frames} captioned, {s.reviewed} reviewed, "
          f"{s.machine} machine captions")
    print(f"edit rate (hand edits): {rate(s.edit_rate)} ({s.hand_changed} of {s.machine})")
    print(f"bulk edits only:        {rate(s.bulk_rate)} ({s.bulk_changed} of {s.machine})")
    if s.too_long:
        print(f"prompts over 77 CLIP tokens: {s.too_long}")
    return 0


def run_replace(studio, args) -> int:
    from labeling.captions import bulk, service

    flt = service.CaptionFilter(split=args.split, shot=args.shot)
    changes = bulk.preview_replace(studio, args.find, args.replace, flt, regex=args.regex,
                                   case_sensitive=args.case_sensitive)
    for ch in changes:
        print(f"{ch.frame_id}\t{ch.before}\t->\t{ch.after}")
    if not args.apply:
        print(f"{len(changes)} captions would change; run again with --apply to apply them.", file=sys.stderr)
        return 0
    result = bulk.apply_changes(studio, changes, args.editor)
    print(f"applied to {result.applied} captions (recorded as bulk edits)"
          + (f"; {len(result.conflicts)} changed meanwhile, left alone" if result.conflicts else ""), file=sys.stderr)
    return 0


def run(studio, args) -> int:
    from tqdm import tqdm

    from labeling.captions.jobs import CaptionRequest, run_captioning

    request = CaptionRequest(model=args.captioner, batch_size=args.batch, prefix=args.prefix,
                             max_new_tokens=args.max_length, min_new_tokens=args.min_length,
                             split=args.split, redo=args.redo)
    bar = None

    def show(p) -> None:
        nonlocal bar
        if p.state == "loading":
            print(f"loading captioner {p.model} ...", file=sys.stderr)
        if p.state == "running" and bar is None:
            bar = tqdm(total=p.total, unit="frame", desc="captioning", file=sys.stderr)
        if bar is not None:
            bar.update(p.done - bar.n)

    result = run_captioning(studio, request, on_progress=show)
    if bar is not None:
        bar.close()
    print(result.summary())
    for line in result.errors:
        print(f"  {line}", file=sys.stderr)
    return 1 if result.failed else 0
