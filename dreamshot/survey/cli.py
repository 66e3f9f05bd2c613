"""``python -m dreamshot survey ...``: build, open, close, list, results, participants, exclude.

    python -m dreamshot survey build --name pilot --shots close,medium,long --pairs 72 \\
        [--prompts prompts.txt] [--frames 12,15] [--per-participant 36] [--alpha 1] [--a base --b lora]
    python -m dreamshot survey build --name methods --shots close,medium --a lora@0.8 --b ti   # two methods
    python -m dreamshot survey open pilot          # participants can join (python app.py --survey-only)
    python -m dreamshot survey close pilot         # no more answers; every vote is kept
    python -m dreamshot survey list
    python -m dreamshot survey results pilot [--csv answers.csv] [--json]
    python -m dreamshot survey participants pilot  # answers, median time, consistency, flags [--previews]
    python -m dreamshot survey exclude pilot TOKEN --reason "too fast"   (include: take back)
    python -m dreamshot survey exclude pilot --reason "bot" -- -Ab3x9   # a token starting with '-': after
                                                  # '--' nothing is read as a flag (options go before it)
New tokens never start with '-'; tokens of older surveys may.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.survey import results as survey_results
from dreamshot.survey.build import SurveySpec, parse_prompt_lines
from dreamshot.survey.service import service


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InvalidInput(f"--frames takes comma-separated frame ids, got {text!r}.") from None


def register(sub, parents) -> None:
    survey = sub.add_parser("survey", help="blind A/B survey of base vs fine-tuned (paper Table 5)",
                            description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    cmds = survey.add_subparsers(dest="survey_command", required=True)

    p = cmds.add_parser("build", parents=parents, help="plan and generate a survey's pairs (resumes a build)")
    p.add_argument("--name", required=True)
    p.add_argument("--shots", required=True, help="comma-separated shot types, e.g. close,medium,long")
    p.add_argument("--pairs", type=int, default=72, help="pairs in the pool [72]")
    p.add_argument("--per-participant", type=int, default=36, help="pairs each participant answers [36]")
    p.add_argument("--prompts", type=Path, default=None,
                   help="file with one caption per line ('shot | caption' keeps the shot); default: captions of held-out frames")
    p.add_argument("--frames", default="", help="held-out frame ids to take captions from (comma-separated)")
    p.add_argument("--alpha", type=float, default=1.0, help="LoRA strength of LoRA parts written without @α [1]")
    p.add_argument("--a", default="base", metavar="SPEC",
                   help="generator A: base, lora@α, full@α, ti, ti+lora@α, name:<library name>@α, +canny|+depth [base]")
    p.add_argument("--b", default="lora", metavar="SPEC", help="generator B [lora: the shot's LoRA at --alpha]")
    p.add_argument("--intro", default=None, help="intro / consent text shown to participants (or @FILE)")
    p.add_argument("--seed", type=int, default=None, help="make the pool's seeds and order reproducible")
    p.add_argument("--steps", type=int, default=16, help="[16, the paper's]")
    p.add_argument("--cfg", type=float, default=6.0, help="[6]")
    p.add_argument("--size", type=int, default=512, help="width = height [512]")
    p.set_defaults(run=run_build)

    for name, state, text in (("open", "open", "let participants join"), ("close", "closed", "stop taking answers")):
        p = cmds.add_parser(name, parents=parents, help=text)
        p.add_argument("name")
        p.set_defaults(run=run_state, state=state)

    p = cmds.add_parser("list", parents=parents, help="surveys with their state and counts")
    p.set_defaults(run=run_list)

    p = cmds.add_parser("results", parents=parents, help="Table 5 with Wilson intervals and the sign test")
    p.add_argument("name")
    p.add_argument("--csv", type=Path, default=None, help="also write the raw answers (one row each) here")
    p.add_argument("--json", action="store_true", help="print results and raw answers as JSON")
    p.set_defaults(run=run_results)

    p = cmds.add_parser("participants", parents=parents, help="per-participant quality and exclusions")
    p.add_argument("name")
    p.add_argument("--previews", action="store_true",
                   help="list the studio members' previews instead (never counted in the results)")
    p.set_defaults(run=run_participants)

    for name, exclude in (("exclude", True), ("include", False)):
        p = cmds.add_parser(name, parents=parents, help=("leave a participant out of the results (votes kept)"
                                                         if exclude else "take an excluded participant back"))
        p.add_argument("name")
        p.add_argument("token", help="the participant's token (at least its first 6 characters); one that "
                                     "starts with '-' goes after '--', at the end: ... -- -Ab3x9")
        p.add_argument("--reason", default="", help="why (recorded)")
        p.set_defaults(run=run_exclude, exclude=exclude)
        _hint_dash_tokens(p, name)


def _hint_dash_tokens(parser, command: str) -> None:
    """argparse reads a token that starts with '-' as an unknown flag and says the token is missing:
    its error names the way out."""
    plain = parser.error

    def error(message: str):
        plain(f"{message}\n  (a token that starts with '-' goes last, after '--': "
              f"survey {command} NAME [--reason R] -- -Ab3x9)")
    parser.error = error


def _progress(fraction: float, text: str) -> None:
    print(f"\r{fraction * 100:5.1f}%  {text:<40}", end="", file=sys.stderr, flush=True)


def run_build(studio, args) -> int:
    intro = args.intro
    if intro and intro.startswith("@"):
        intro = Path(intro[1:]).read_text(encoding="utf-8")
    prompts = None
    if args.prompts:
        try:
            prompts = parse_prompt_lines(args.prompts.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInput(f"Cannot read {args.prompts}: {exc.strerror or exc}") from None
    spec = SurveySpec(name=args.name, shots=[s for s in args.shots.split(",") if s.strip()], pairs=args.pairs,
                      per_participant=args.per_participant, prompts=prompts, frames=_ints(args.frames) or None,
                      alpha=args.alpha, intro=intro or SurveySpec.intro, seed=args.seed, steps=args.steps,
                      cfg=args.cfg, width=args.size, height=args.size, a=args.a, b=args.b)
    info = service(studio).build(spec, by="cli", progress=_progress)
    print(file=sys.stderr)
    print(info.line())
    if info.kept:
        print("finished with the settings it was created with, not the ones given: " + "; ".join(info.kept))
    print(f"open it with: python -m dreamshot survey open {info.name!r}")
    return 0


def run_state(studio, args) -> int:
    print(service(studio).set_state(args.name, args.state).line())
    return 0


def run_list(studio, args) -> int:
    surveys = service(studio).list()
    for info in surveys:
        print(info.line())
    if not surveys:
        print("no survey yet: python -m dreamshot survey build --name NAME --shots close,medium,long")
    return 0


def run_results(studio, args) -> int:
    res = survey_results.results(studio, args.name)
    rows = survey_results.export_rows(studio, args.name) if (args.csv or args.json) else []
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(survey_results.export_csv(rows), encoding="utf-8")
    if args.json:
        print(json.dumps({"results": res.to_dict(), "answers": rows}, indent=1))
    else:
        print(res.markdown())
        if args.csv:
            print(f"\n{len(rows)} answers written to {args.csv}")
    return 0


def run_participants(studio, args) -> int:
    for q in survey_results.participant_quality(studio, args.name, previews=args.previews):
        median = f"{q['median_seconds']:.1f}s" if q["median_seconds"] is not None else "-"
        cons = f"{q['consistency']:.0%}" if q["consistency"] is not None else "-"
        state = f"EXCLUDED ({q['exclusion_reason']})" if q["excluded"] else ", ".join(q["flags"]) or "ok"
        print(f"{q['token']}  {q['answers']}/{q['of']} answers  median {median}  consistency {cons}  {state}")
    return 0


def run_exclude(studio, args) -> int:
    service(studio).set_excluded(args.name, args.token, args.exclude, args.reason, by="cli")
    print(("excluded " if args.exclude else "included ") + args.token)
    return 0
