"""``python -m labeling suggest``: pre-label a pool with the studio's shot-type model.

    python -m labeling suggest                   # features for every frame, fit, pre-labels written
    python -m labeling suggest --clip-model demo # the tiny offline CLIP (to try the workflow)

It computes the CLIP features still missing (kept in the database: the tab's suggestions reuse
them), fits the probe on every settled label and writes the model's class and confidence for every
unlabeled frame - never as a label. In the Label tab, the order *Review: the model calls it ...*
shows those frames one class at a time, most confident first; Enter confirms.
"""

from __future__ import annotations

import sys
import time

from dreamshot.evaluate import embedders


def register(subparsers, parents) -> None:
    p = subparsers.add_parser("suggest", parents=parents, help="pre-label unlabeled frames with the shot-type model",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--clip-model", default="", metavar="ID|DIR|demo",
                   help=f"CLIP for the features [${embedders.CLIP_ENV}, else demo with the demo model, else "
                        f"{embedders.DEFAULT_CLIP}: Evaluate's setting]")
    p.set_defaults(run=run)


def run(studio, args) -> int:
    from labeling.suggest.service import service

    svc = service(studio)
    svc.spec = args.clip_model or None
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - t0, 1e-6)
        sys.stderr.write(f"\rfeatures: {done}/{total} frames ({rate:.1f}/s)   ")
        sys.stderr.flush()

    report = svc.prelabel(extract_all=True, progress=progress)
    sys.stderr.write("\n")
    written = report["written"]
    print(f"Model fit on {report['model_labels']} labels ("
          + ", ".join(f"{c} {n}" for c, n in report["per_class"].items()) + f") in {report['fit_seconds']:.2f} s")
    print(f"Pre-labels written for {sum(written.values())} unlabeled frames: "
          + (", ".join(f"{c} {n}" for c, n in written.items()) or "none"))
    print("Review them in the Label tab: Order -> 'Review: the model calls it ...' (Enter confirms).")
    return 0
