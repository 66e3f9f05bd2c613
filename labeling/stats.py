"""Labeling stats shared by the Label tab and ``python -m labeling stats``: agreement (Cohen's and
Fleiss' kappa, confusion matrix), the shot-type model's measurements (``labeling.suggest.stats``)
and the stats text (no gradio)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from dreamshot.stats import fleiss_kappa
from labeling import labels, pool
from labeling.labels import REJECT
from labeling.suggest import stats as suggest_stats


@dataclass
class Agreement:
    method: str                       # "cohen", "fleiss" or "none"
    kappa: float | None
    items: int
    categories: list[str]
    matrix: list[list[int]]           # rows: first rating, columns: second rating
    annotators: list[str]
    observed: float | None = None

    def text(self) -> str:
        if self.kappa is None:
            return f"Agreement: not enough overlapping frames yet ({self.items})."
        name = "Cohen's" if self.method == "cohen" else "Fleiss'"
        return (f"Agreement on {self.items} frames labeled twice: {name} kappa = {self.kappa:.3f} "
                f"(observed agreement {self.observed:.1%}; annotators: {', '.join(self.annotators)})")


def cohen_kappa(pairs: list[tuple[str, str]], categories: list[str]) -> tuple[float | None, float | None]:
    n = len(pairs)
    if not n:
        return None, None
    observed = sum(a == b for a, b in pairs) / n
    ca, cb = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(ca[c] * cb[c] for c in categories) / (n * n)
    if expected >= 1:
        return (1.0 if observed == 1 else 0.0), observed
    return (observed - expected) / (1 - expected), observed


def agreement(studio) -> Agreement:
    """Cohen's kappa when exactly two annotators overlap, Fleiss' kappa (two ratings per frame, the
    first two given) when more do. Rejects count as a category."""
    taxonomy = labels.current_taxonomy(studio)
    categories = taxonomy.names + [REJECT]
    index = {c: i for i, c in enumerate(categories)}
    rated = [d for d in labels.decisions(studio).values() if len(d.votes) >= 2]
    pairs, people = [], set()
    for d in rated:
        first_two = list(d.votes.items())[:2]
        people.update(d.votes)
        pairs.append(first_two)
    matrix = [[0] * len(categories) for _ in categories]
    if not pairs:
        return Agreement("none", None, 0, categories, matrix, [])
    annotators = sorted(people)
    if len(annotators) == 2:  # the same two people rated every overlapping frame
        a, b = annotators
        ordered = [(dict(p)[a], dict(p)[b]) for p in pairs]
        for x, y in ordered:
            matrix[index[x]][index[y]] += 1
        kappa, observed = cohen_kappa(ordered, categories)
        return Agreement("cohen", kappa, len(pairs), categories, matrix, annotators, observed)
    table = []
    for p in pairs:
        (_, x), (_, y) = p
        matrix[index[x]][index[y]] += 1
        row = [0] * len(categories)
        row[index[x]] += 1
        row[index[y]] += 1
        table.append(row)
    observed = sum(x == y for (_, x), (_, y) in pairs) / len(pairs)
    return Agreement("fleiss", fleiss_kappa(table), len(pairs), categories, matrix, annotators, observed)


QUOTA_RULE = ("Quota rule: a training frame counts once its label is settled (one annotator, agreement or a\n"
              "resolution); disputed frames wait for a resolution; the oldest extra fills a place a frame leaves;\n"
              "held-out (test) frames never count toward the training quotas.")


def stats_text(studio) -> str:
    p = labels.progress(studio)
    lines = [f"Taxonomy: {p.taxonomy.title}"]
    for c in p.taxonomy.classes:
        n, q = p.counts.get(c.name, 0), p.quotas[c.name]
        extra = p.extras.get(c.name, 0)
        lines.append(f"  {c.name:<18} {n:>5} / {q:<5}" + (f" (+{extra} extra)" if extra else "")
                     + ("  quota met" if n >= q else ""))
    if p.held_out:
        lines.append("  held-out (test split, no quota): "
                     + ", ".join(f"{c.name} {p.held_out.get(c.name, 0)}" for c in p.taxonomy.classes))
    lines.append(f"  rejected: {p.rejects}   skipped (for now): {p.skips}   open disagreements: {p.disagreements}")
    if p.all_met:
        lines.append("Every quota is met.")
    lines.append(QUOTA_RULE)
    if p.annotators:
        lines.append("Annotators: " + ", ".join(f"{a} ({n})" for a, n in sorted(p.annotators.items())))
    lines += agreement_lines(agreement(studio))
    lines += suggest_stats.lines(suggest_stats.model_stats(studio))
    summary = pool.pool_summary(studio)
    for split, by_status in sorted(summary.items()):
        lines.append(f"Pool ({split}): " + ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())))
    return "\n".join(lines)


def agreement_lines(agr: Agreement) -> list[str]:
    lines = [agr.text()]
    if agr.kappa is None:
        return lines
    cats = agr.categories
    width = max(len(c) for c in cats) + 2
    rows_who = agr.annotators[0] if agr.method == "cohen" else "first rating"
    cols_who = agr.annotators[1] if agr.method == "cohen" else "second rating"
    lines.append(f"Confusion matrix (rows: {rows_who}, columns: {cols_who})")
    lines.append(" " * width + "".join(f"{c:>{width}}" for c in cats))
    for c, row in zip(cats, agr.matrix):
        lines.append(f"{c:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return lines
