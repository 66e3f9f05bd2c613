"""``python -m dreamshot evaluate``: the paper's CLIP-T / DINO protocol (Tables 3-4), headless.

    python -m dreamshot evaluate --out eval/ --frames test --shots close,medium,long --pairs 1500
    python -m dreamshot evaluate --out eval/ --frames held_out_folder/ --clip-model ./clip --dino-model ./dino
    accelerate launch -m dreamshot evaluate --out eval/ ...     # pairs split over processes, merged on rank 0
    python -m dreamshot evaluate --out eval/ --merge            # fold shards and score again
    python -m dreamshot evaluate --out eval-ti/ --a lora@0.8 --b ti     # compare two methods
    python -m dreamshot evaluate --out eval-cn/ --a full@1 --b full@1+canny

Generators (--a, --b): base, lora@α, full@α, motion@α, ti, ti+lora@α, name:<library name>@α, each
optionally +canny or +depth (a ControlNet from the held-out frame); a LoRA part without @α takes
--alpha. Default: --a base --b lora (the paper's base vs fine-tuned).

Run again with the same settings to resume: pairs already in OUT/pairs.jsonl are not generated again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dreamshot.evaluate import embedders, report
from dreamshot.evaluate.judge import JUDGES
from dreamshot.evaluate.pairs import EvalOptions


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: not a list of numbers: {text!r}") from None


def register(sub, parents) -> None:
    p = sub.add_parser("evaluate", parents=parents, help="CLIP-T / DINO evaluation (paper Tables 3-4)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder (pairs.jsonl, results.json, ...)")
    p.add_argument("--frames", default="test", metavar="test|DIR", help="'test' (the studio's test split) or an imagefolder [test]")
    p.add_argument("--shots", default="", metavar="A,B", help="shot types, e.g. close,medium,long [every shot with a LoRA]")
    p.add_argument("--pairs", type=int, default=1500, metavar="N", help="captions (pairs), even over shot types [1500]")
    p.add_argument("--a", default="base", metavar="SPEC", help="generator of side A [base]")
    p.add_argument("--b", default="lora", metavar="SPEC", help="generator of side B [lora: the shot's LoRA at --alpha]")
    p.add_argument("--alpha", type=float, default=1.0, metavar="A", help="α of LoRA parts written without @α [1]")
    p.add_argument("--seed", type=int, default=0, help="pair i uses seed + i [0]")
    demo = "; 'demo' = tiny, random weights, built offline (measures nothing)"
    p.add_argument("--clip-model", default="", metavar="ID|DIR|demo",
                   help=f"Hub id, folder or demo [${embedders.CLIP_ENV}, else demo with the demo model, else "
                        f"{embedders.DEFAULT_CLIP}{demo}]")
    p.add_argument("--dino-model", default="", metavar="ID|DIR|demo",
                   help=f"Hub id, folder or demo [${embedders.DINO_ENV}, else demo with the demo model, else "
                        f"{embedders.DEFAULT_DINO}]")
    p.add_argument("--judge", default="auto", choices=JUDGES, help="shot-type judge [auto: probe if enough labels]")
    p.add_argument("--min-labels", type=int, default=8, help="labeled frames per shot the probe needs [8]")
    p.add_argument("--batch", type=int, default=4, metavar="N", help="images per generation batch [4]")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--cfg", type=float, default=6.0)
    p.add_argument("--no-ablation", action="store_true", help="skip Table 4 (prompts without the shot type)")
    p.add_argument("--alpha-values", default="0,0.25,0.5,0.75,1", metavar="A,B,..", help="α curve values [0,0.25,0.5,0.75,1]")
    p.add_argument("--alpha-subset", type=int, default=12, help="pairs re-generated for the α curve [12]")
    p.add_argument("--allow-contaminated", action="store_true",
                   help="evaluate on frames used for training (marked in the results)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples [2000]")
    p.add_argument("--merge", action="store_true", help="only merge shard files and score")
    p.set_defaults(run=run)


def options_from(args) -> EvalOptions:
    return EvalOptions(
        out=str(args.out), frames=args.frames, shots=[s.strip() for s in args.shots.split(",") if s.strip()] or None,
        pairs=args.pairs, alpha=args.alpha, seed=args.seed, clip_model=args.clip_model, dino_model=args.dino_model,
        judge=args.judge, batch=args.batch, width=args.width, height=args.height, steps=args.steps, cfg=args.cfg,
        ablation=not args.no_ablation, alpha_values=_floats(args.alpha_values), alpha_subset=args.alpha_subset,
        allow_contaminated=args.allow_contaminated, min_labels=args.min_labels, bootstrap=args.bootstrap,
        a=args.a, b=args.b)


def _progress(fraction: float, text: str) -> None:
    print(f"\r{fraction * 100:5.1f}%  {text:<70}", end="", file=sys.stderr, flush=True)


def _pick_gpu() -> None:
    """Under ``accelerate launch`` on several GPUs: this process uses GPU LOCAL_RANK."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count())


def run(studio, args) -> int:
    from dreamshot.evaluate.service import service

    svc = service(studio)
    options = options_from(args)
    _pick_gpu()
    results = svc.merge_and_score(options) if args.merge else svc.run(options, progress=_progress)
    print(file=sys.stderr)
    if "shard" in results:
        print(f"shard {results['shard']}: {results['generated']} generated; rank 0 merges and scores.")
        return 0
    print(report.markdown(results))
    out = Path(args.out)
    print(f"\nwrote {out / 'pairs.jsonl'}, {out / 'results.json'}, {out / 'results.csv'}, {out / 'results.png'}")
    return 0 if results["complete"] else 3
