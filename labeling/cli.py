"""``python -m labeling import | export | stats``: the Label tab's steps, headless.

    python -m labeling import ./frames --metadata films.csv --rule "year >= 2013" [--labels old.csv]
    python -m labeling import clip.mp4 --split test
    python -m labeling import hf:./my-dataset          # a datasets id or save_to_disk folder
    python -m labeling import imagefolder:./folder     # datasets' imagefolder loader
    python -m labeling export ./shots-set [--include-extra] [--push-to-hub user/name]
    python -m labeling export-clips ./shot-clips [--shot close]   # the video shots' clips (motion LoRAs)
    python -m labeling stats
"""

from __future__ import annotations

import sys

from labeling import export, pool, stats


def register(subparsers, parents) -> None:
    p = subparsers.add_parser("import", parents=parents, help="import a pool of frames (folder, .zip, video, datasets)")
    p.add_argument("source", help="folder, .zip, video file, 'imagefolder:DIR' or 'hf:DATASET_ID_OR_PATH'")
    p.add_argument("--metadata", metavar="FILE", help="CSV/JSONL with a 'file' column and fields for --rule")
    p.add_argument("--labels", metavar="FILE", help="CSV/JSONL of existing labels: file, shot[, annotator]")
    p.add_argument("--rule", action="append", default=[], metavar="RULE",
                   help="metadata rule a frame must pass, e.g. 'year >= 2013' (repeatable)")
    p.add_argument("--min-side", type=int, default=256, help="minimum short side in pixels [256]")
    p.add_argument("--near-duplicates", type=int, default=6, metavar="BITS",
                   help="pHash Hamming distance counted as a near-duplicate; -1 keeps them [6]")
    p.add_argument("--split", choices=pool.SPLITS, default="train",
                   help="'test' for held-out frames (not labeled here; captioned for the evaluation)")
    p.set_defaults(run=lambda studio, args: run_import(studio, args))

    e = subparsers.add_parser("export", parents=parents, help="export the labeled set as a Hugging Face imagefolder")
    e.add_argument("out", help="output folder (new, empty, or an earlier export)")
    e.add_argument("--shot", action="append", default=None, help="only these classes (repeatable)")
    e.add_argument("--include-extra", action="store_true", help="also labels beyond the quotas")
    e.add_argument("--push-to-hub", metavar="REPO", help="upload to this dataset repo (token from HF_TOKEN)")
    e.set_defaults(run=lambda studio, args: run_export(studio, args))

    c = subparsers.add_parser("export-clips", parents=parents,
                              help="export the labeled video shots' clips (clips/*.mp4 + metadata.jsonl)")
    c.add_argument("out", help="output folder (new, empty, or an earlier export)")
    c.add_argument("--shot", action="append", default=None, help="only these classes (repeatable)")
    c.add_argument("--include-extra", action="store_true", help="also labels beyond the quotas")
    c.set_defaults(run=lambda studio, args: run_export_clips(studio, args))

    s = subparsers.add_parser("stats", parents=parents, help="per-class counts, quotas, rejects and agreement")
    s.set_defaults(run=lambda studio, args: run_stats(studio))


def _bar(total: int | None):
    state = {"last": -1}

    def progress(done: int, total_now: int | None, note: str) -> None:
        total_ = total_now or total
        if done == state["last"] and note != "done":
            return
        state["last"] = done
        if total_:
            width = 30
            filled = int(width * min(done, total_) / total_)
            line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total_} {note}"
        else:
            line = f"\r{done} items, {note}"
        sys.stderr.write(line)
        if note == "done":
            sys.stderr.write("\n")
        sys.stderr.flush()
    return progress


def run_import(studio, args) -> int:
    opts = pool.ImportOptions(source=args.source, split=args.split, min_side=args.min_side, rules=args.rule,
                              metadata_file=args.metadata, labels_file=args.labels,
                              near_duplicate_distance=args.near_duplicates)
    report = pool.run_import(studio, opts, progress=_bar(None))
    print(report.text())
    return 0


def run_export(studio, args) -> int:
    report = export.export_imagefolder(studio, args.out, shots=args.shot, include_extra=args.include_extra,
                                       push_to_hub=args.push_to_hub)
    print(report.text())
    return 0


def run_export_clips(studio, args) -> int:
    from labeling.clips import export_clips

    print(export_clips(studio, args.out, shots=args.shot, include_extra=args.include_extra).text())
    return 0


def run_stats(studio) -> int:
    print(stats.stats_text(studio))
    return 0
