"""Survey results in the paper's Table 5 layout, participant quality, and the raw export.

- Table 5: per question, % and count of baseline / fine-tuned / neither with a 95% Wilson interval
  each, and a two-sided exact sign test of fine-tuned vs baseline (ties left out); the same per
  shot type. Only first showings count (the repeated pair's second showing measures consistency).
  A survey of two other generators (``--a`` / ``--b``) names them instead: "% <A's label> (A)",
  "% <B's label> (B)", and the sign test is B vs A ("lora" answers are B, "base" answers A).
- Excluded participants are left out of Table 5 and agreement; their votes stay in the export.
- Previews (a studio member trying the survey on the full studio) are left out of everything but
  a count of their own and the export (``preview`` column); ``participant_quality(previews=True)``
  lists them.
- Agreement: Fleiss' kappa per question over the pairs answered by at least two participants
  (each such pair contributes its first m ratings, m the smallest count among them).
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa

from dreamshot import schema
from dreamshot import stats
from dreamshot.survey.build import side_labels
from dreamshot.survey.service import QUESTIONS, service

S, P, PT, A = schema.surveys, schema.survey_pairs, schema.survey_participants, schema.survey_answers
CHOICES = ("base", "lora", "neither")
LABELS = {"base": "baseline", "lora": "fine-tuned", "neither": "neither"}
TOO_FAST_S = 1.5          # median seconds per answer below this: flagged "too fast"
MIN_CONSISTENCY = 2 / 3   # repeated pair: fewer matching answers than this: flagged "inconsistent"
EXPORT_FIELDS = ["survey", "token", "pair_id", "shot", "prompt", "round", "slot", "question", "answer",
                 "lora_side", "choice", "preferred", "seconds", "answered_at", "joined_at", "excluded", "preview"]


@dataclass
class Share:
    count: int
    share: float | None
    low: float | None
    high: float | None


@dataclass
class QuestionResult:
    question: str
    n: int
    shares: dict            # choice -> Share
    sign_p: float

    def cells(self) -> list[str]:
        out = []
        for c in CHOICES:
            s = self.shares[c]
            out.append("-" if s.share is None else f"{s.share:.1%} ({s.count}) [{s.low:.1%}-{s.high:.1%}]")
        return out


@dataclass
class Results:
    survey: str
    state: str
    participants: int
    excluded: int
    answers: int
    overall: list = field(default_factory=list)       # [QuestionResult]
    per_shot: dict = field(default_factory=dict)      # shot -> [QuestionResult]
    kappa: dict = field(default_factory=dict)         # question -> {"kappa", "items", "raters"}
    consistency: float | None = None
    sides: dict = field(default_factory=lambda: dict(LABELS))   # choice -> its name in the table
    generators: bool = False                          # a survey of two generators (not base vs LoRA)
    previews: int = 0                                 # studio members' tries: not counted anywhere above
    preview_answers: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        head = (f"**{self.survey}** ({self.state}): {self.participants} participants "
                f"({self.excluded} excluded), {self.answers} answers counted")
        a, b = self.sides["base"], self.sides["lora"]
        if self.generators:
            head += f"\n\nA = **{a}**, B = **{b}** (each shown on a random side; \"B preferred\" = picked {b})"
            a, b = f"{a} (A)", f"{b} (B)"
        lines = [head, "", f"| question | % {a} | % {b} | % neither | n | sign test p |",
                 "|---|---|---|---|---|---|"]
        for scope, rows in [("all", self.overall)] + sorted(self.per_shot.items()):
            for r in rows:
                name = r.question if scope == "all" else f"{scope}: {r.question}"
                lines.append(f"| {name} | " + " | ".join(r.cells()) + f" | {r.n} | {r.sign_p:.3g} |")
        kap = ", ".join(f"{q} {v['kappa']:.3f} ({v['items']} pairs × {v['raters']})" if v["kappa"] is not None
                        else f"{q} -" for q, v in self.kappa.items())
        lines += ["", f"Agreement (Fleiss' κ): {kap or 'no pair answered by two participants yet'}"]
        if self.consistency is not None:
            lines += ["", f"Consistency on the repeated pair: {self.consistency:.1%} of answers matched"]
        lines += ["", f"Shares with 95% Wilson intervals; sign test: {b} vs {a}, ties left out."]
        if self.previews:
            lines += ["", f"Not counted: {self.previews} preview(s) by studio members trying the survey "
                          f"({self.preview_answers} answers; kept, marked in the export)."]
        return "\n".join(lines)


def _rows(studio, name: str):
    info = service(studio).info(name)
    query = (sa.select(A, PT.c.token, PT.c.created_at.label("joined_at"), PT.c.excluded_at, PT.c.preview,
                       P.c.shot, P.c.caption)
             .join(PT, PT.c.id == A.c.participant_id).join(P, P.c.id == A.c.pair_id)
             .where(PT.c.survey_id == info.id).order_by(A.c.id))
    with studio.db.read() as conn:
        rows = conn.execute(query).all()
        people = conn.execute(sa.select(PT).where(PT.c.survey_id == info.id).order_by(PT.c.id)).all()
    return info, rows, people


def question_result(question: str, choices: list[str]) -> QuestionResult:
    n = len(choices)
    shares = {}
    for c in CHOICES:
        k = sum(1 for x in choices if x == c)
        ci = stats.wilson(k, n)
        shares[c] = Share(k, k / n if n else None, ci[0] if ci else None, ci[1] if ci else None)
    return QuestionResult(question, n, shares, stats.sign_test(shares["lora"].count, shares["base"].count))


def _kappa(rows) -> dict:
    out = {}
    for q in QUESTIONS:
        by_pair: dict[int, list[str]] = {}
        for r in rows:
            if r.question == q:
                by_pair.setdefault(r.pair_id, []).append(r.choice)
        shared = [v for v in by_pair.values() if len(v) >= 2]
        if not shared:
            out[q] = {"kappa": None, "items": 0, "raters": 0}
            continue
        m = min(len(v) for v in shared)
        table = [[v[:m].count(c) for c in CHOICES] for v in shared]
        out[q] = {"kappa": stats.fleiss_kappa(table), "items": len(table), "raters": m}
    return out


def results(studio, name: str) -> Results:
    info, all_rows, all_people = _rows(studio, name)
    rows, people = [r for r in all_rows if not r.preview], [p for p in all_people if not p.preview]
    counted = [r for r in rows if r.excluded_at is None and r.round == 0]
    out = Results(info.name, info.state, participants=sum(1 for p in people if p.excluded_at is None),
                  excluded=sum(1 for p in people if p.excluded_at is not None), answers=len(counted),
                  sides={**side_labels(info.settings), "neither": LABELS["neither"]},
                  previews=len(all_people) - len(people), preview_answers=len(all_rows) - len(rows))
    out.generators = out.sides["base"] != LABELS["base"] or out.sides["lora"] != LABELS["lora"]
    out.overall = [question_result(q, [r.choice for r in counted if r.question == q]) for q in QUESTIONS]
    for shot in sorted({r.shot for r in counted}):
        out.per_shot[shot] = [question_result(q, [r.choice for r in counted if r.question == q and r.shot == shot])
                              for q in QUESTIONS]
    out.kappa = _kappa(counted)
    quality = [q for q in participant_quality(studio, name, rows=rows, people=people)
               if not q["excluded"] and q["consistency"] is not None]
    if quality:
        out.consistency = sum(q["consistency"] for q in quality) / len(quality)
    return out


def participant_quality(studio, name: str, *, rows=None, people=None, previews: bool = False) -> list[dict]:
    """One dict per participant: answers, median seconds, consistency on the repeat, flags. The
    participants only, or (``previews=True``) the studio members' previews only."""
    if rows is None:
        _, rows, people = _rows(studio, name)
    people = [p for p in people if bool(p.preview) == previews]
    by_person: dict[int, list] = {}
    for r in rows:
        by_person.setdefault(r.participant_id, []).append(r)
    out = []
    for p in people:
        mine = by_person.get(p.id, [])
        seconds = [r.seconds for r in mine if r.seconds is not None]
        repeat = next((item for item in p.plan if item["round"] == 1), None)
        consistency = None
        if repeat:
            first = {r.question: r.choice for r in mine if r.pair_id == repeat["pair"] and r.round == 0}
            second = {r.question: r.choice for r in mine if r.pair_id == repeat["pair"] and r.round == 1}
            both = [q for q in QUESTIONS if q in first and q in second]
            consistency = sum(first[q] == second[q] for q in both) / len(both) if both else None
        median = statistics.median(seconds) if seconds else None
        flags = ([f"too fast (median {median:.1f}s)"] if median is not None and median < TOO_FAST_S else []) + \
                (["inconsistent"] if consistency is not None and consistency < MIN_CONSISTENCY else [])
        out.append({"token": p.token, "answers": len(mine), "of": len(p.plan) * len(QUESTIONS),
                    "finished": p.finished_at is not None, "median_seconds": median,
                    "consistency": consistency, "flags": flags, "excluded": p.excluded_at is not None,
                    "exclusion_reason": p.exclusion_reason, "excluded_by": p.excluded_by})
    return out


def export_rows(studio, name: str) -> list[dict]:
    """One row per answer, excluded participants (excluded=True) and previews (preview=True) included."""
    info, rows, _ = _rows(studio, name)
    names = {**side_labels(info.settings), "neither": LABELS["neither"]}
    return [{"survey": info.name, "token": r.token, "pair_id": r.pair_id, "shot": r.shot, "prompt": r.caption,
             "round": r.round, "slot": r.slot, "question": r.question, "answer": r.answer,
             "lora_side": r.lora_side, "choice": r.choice, "preferred": names[r.choice], "seconds": r.seconds,
             "answered_at": r.created_at,
             "joined_at": r.joined_at, "excluded": r.excluded_at is not None, "preview": bool(r.preview)}
            for r in rows]


def export_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
