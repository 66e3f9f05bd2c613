"""``python -m labeling caption``: machine captions for the labeled frames, headless.

    python -m labeling caption [--data DIR] [--model ID|DIR] [--batch N] [--prefix TEXT]
                               [--max-length N] [--split train|test] [--redo]

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
