"""An evaluation's results on disk and as text: ``results.json``, ``results.csv``, ``results.png``
(drawn with PIL: matplotlib is not part of the stack) and the Markdown the tab and CLI show."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dreamshot.evaluate.metrics import fmt, row_text

TITLES = {"table3": "Table 3 - shot type in the prompt", "table4": "Table 4 - ablation: shot type removed"}
METRICS = {"clip_t": "CLIP-T", "dino": "DINO"}


def write(out: Path, results: dict) -> None:
    out = Path(out)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2), encoding="utf-8")
    os.replace(tmp, out / "results.json")
    write_csv(out / "results.csv", results)
    plot(results).save(out / "results.png")


def side_labels(results: dict) -> tuple[str, str]:
    """The names of side A and side B: the generators' labels ("base" and "fine-tuned" for runs
    made before generators existed)."""
    gens = results.get("generators") or {}
    return ((gens.get("a") or {}).get("label") or "base", (gens.get("b") or {}).get("label") or "fine-tuned")


def generators_line(results: dict) -> str:
    a, b = side_labels(results)
    gens = results.get("generators") or {}
    specs = [(gens.get(s) or {}).get("spec") for s in ("a", "b")]
    text = f"**A**: {a} · **B**: {b}"
    if all(specs):
        text += f" (`--a {specs[0]} --b {specs[1]}`)"
    return text + " · same captions and seeds on both sides; diff = B - A"


def read(out: Path) -> dict | None:
    path = Path(out) / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def csv_rows(results: dict) -> list[list]:
    rows = [["table", "metric", "shot", "n", "base", "fine_tuned", "diff", "ci_low", "ci_high"]]
    for name in ("table3", "table4"):
        t = results.get("tables", {}).get(name) or {}
        for metric in METRICS:
            if metric not in t:
                continue
            for shot, row in [("all", t[metric]["overall"]), *t[metric]["per_shot"].items()]:
                rows.append([name, metric, shot, row["n"], row["base"], row["tuned"], row["diff"],
                             row["ci_low"], row["ci_high"]])
        for metric in ("judged_as_requested", "r1"):
            for shot, row in [("all", (t.get(metric) or {}).get("overall")), *((t.get(metric) or {}).get("per_shot") or {}).items()]:
                if row:
                    rows.append([name, metric, shot, row["n"], row["base"], row["tuned"],
                                 None if row["base"] is None else row["tuned"] - row["base"], None, None])
    for a in results.get("alpha_curve", []):
        for metric in ("clip_t", "dino", "judged_ok", "r1"):
            rows.append(["alpha_curve", metric, f"alpha={a['alpha']:g}", a["n"], None, a[metric], None, None, None])
    return rows


def write_csv(path: Path, results: dict) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(csv_rows(results))


def status_line(results: dict) -> str:
    done, planned = results.get("pairs_done", 0), results.get("pairs_planned", 0)
    short = results.get("short") or {}
    twice = bool((results.get("settings") or {}).get("ablation"))    # each caption with and without the shot
    captions = done // 2 if twice else done
    counted = f" ({captions} captions, each with and without the shot type)" if twice else ""
    if results.get("complete"):
        line = f"**Complete**: {done} pairs{counted}."
    elif short and done >= planned and results.get("stopped") in (None, "short of the plan"):
        missing = ", ".join(f"{shot} {n}" for shot, n in short.items())
        line = (f"**INCOMPLETE - not a final table**: all {done} pairs{counted} the held-out frames allow are "
                f"generated, fewer than asked for (captions missing: {missing}). Running again adds none: add "
                f"held-out frames, or ask for at most {captions} captions in a new run.")
    else:
        line = (f"**INCOMPLETE - not a final table**: {done} of {planned} pairs generated "
                f"({results.get('stopped') or 'interrupted'}). Run again with the same settings to resume.")
    if results.get("contaminated_frames"):
        line += (f"\n\n**Contaminated**: {len(results['contaminated_frames'])} frame(s) were used for training "
                 "(override given); these numbers do not measure held-out generalisation.")
    return line


def demo_note(results: dict) -> str:
    """Results scored with the ``demo`` CLIP/DINO (tiny, random weights) say so wherever they are shown."""
    demo = results.get("demo_models") or []
    return f"demo {'/'.join(demo)}: random weights, not a measurement" if demo else ""


def markdown(results: dict, *, status: bool = True) -> str:
    lines = [status_line(results), ""] if status else []
    note = demo_note(results)
    if note:
        lines += [f"**Scored with the {note}** - the tiny models built offline show the workflow; "
                  "give real CLIP/DINO models (Hub ids or folders) for numbers that mean something.", ""]
    models = results.get("models", {})
    a, b = side_labels(results)
    lines.append(generators_line(results))
    lines.append("")
    alpha = "" if results.get("generators") else f" · α = {results.get('alpha')}"     # else in the labels
    lines.append(f"CLIP: `{models.get('clip', '-')}` · DINO: `{models.get('dino', '-')}`{alpha}")
    for name, title in TITLES.items():
        t = results.get("tables", {}).get(name)
        if not t or not t.get("n_pairs"):
            continue
        demo = f" - {note}" if note else ""
        lines += ["", f"### {title} ({t['n_pairs']} pairs){demo}", "",
                  f"| metric | shot | n | A: {a} | B: {b} | diff | 95% CI |", "|---|---|---|---|---|---|---|"]
        for metric, label in METRICS.items():
            for shot, row in [("all", t[metric]["overall"]), *t[metric]["per_shot"].items()]:
                lines.append(f"| {label} | {shot} | {row['n']} | " + " | ".join(row_text(row)) + " |")
        lines += ["", "| shot | n | judged as requested: A | B | R@1: A | B |",
                  "|---|---|---|---|---|---|"]
        judged, r1 = t["judged_as_requested"], t["r1"]
        for shot, row in [("all", judged["overall"]), *judged["per_shot"].items()]:
            other = r1["overall"] if shot == "all" else r1["per_shot"].get(shot, {})
            lines.append(f"| {shot} | {row['n']} | {_share(row, 'base')} | {_share(row, 'tuned')} | "
                         f"{_share(other, 'base')} | {_share(other, 'tuned')} |")
    curve = results.get("alpha_curve") or []
    if curve:
        lines += ["", f"### α curve (subset: side B's LoRA at each α; B = {b})", "",
                  "| α | n | CLIP-T | DINO | judged as requested | R@1 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {a['alpha']:g} | {a['n']} | {fmt(a['clip_t'])} | {fmt(a['dino'])} | {fmt(a['judged_ok'], 3)} | "
                  f"{fmt(a['r1'], 3)} |" for a in curve]
    lines += ["", judge_text(results.get("judge") or {})]
    return "\n".join(lines)


def _share(row: dict, side: str) -> str:
    value = (row or {}).get(side)
    if value is None:
        return "-"
    low, high = row.get(f"{side}_ci") or (None, None)
    return f"{value:.3f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else "")


def judge_text(report: dict) -> str:
    if not report:
        return ""
    kind = "linear probe on CLIP image features" if report.get("kind") == "probe" else "zero-shot CLIP prompts"
    text = f"**Shot-type judge**: {kind}"
    if report.get("reason"):
        text += f" ({report['reason']})"
    if report.get("accuracy") is not None:
        low, high = report["accuracy_ci"]
        text += (f"; accuracy {report['accuracy']:.3f} (95% Wilson [{low:.3f}, {high:.3f}]) on "
                 + _counted(report["n"], report["measured_on"]))
        classes = report.get("classes", [])
        text += "\n\n| true \\ judged | " + " | ".join(classes) + " |\n|" + "---|" * (len(classes) + 1)
        for cls, row in zip(classes, report.get("confusion", [])):
            text += f"\n| {cls} | " + " | ".join(str(v) for v in row) + " |"
    return text


def _counted(n: int, frames: str) -> str:
    """'12 held-out labeled frames'; 'all 12 labeled frames' (not '12 all labeled frames')."""
    return f"all {n} {frames[4:]}" if frames.startswith("all ") else f"{n} {frames}"


def _ascii(text: str) -> str:
    """Labels for the bundled font (no α or arrows there)."""
    return text.replace("α", "a").replace("→", "->").encode("ascii", "replace").decode()


GREY, BLUE, GREEN, RED = (150, 150, 150), (40, 110, 200), (30, 150, 60), (200, 50, 50)


def _font(size: int):
    return ImageFont.load_default(size=size)   # Pillow's scalable font (FreeType), no file needed


def plot(results: dict, width: int = 1000, height: int = 470) -> Image.Image:
    """Left: A vs B per metric (its own axis, from min(0, lowest) so a negative CLIP-T shows as a bar
    below zero), Tables 3 and 4 side by side; right: the α curve, one panel per metric."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    note = demo_note(results)
    title = ("DreamShot evaluation" + ("" if results.get("complete") else " (INCOMPLETE)")
             + (f" - {note.upper()}" if note else ""))
    d.text((16, 10), title, fill="black", font=_font(20))
    a, b = (_ascii(x) for x in side_labels(results))
    small = _font(14)
    d.rectangle((16, 44, 30, 58), fill=GREY)
    d.text((36, 43), f"A: {a}", fill="black", font=small)
    x = 36 + d.textlength(f"A: {a}", font=small) + 24
    d.rectangle((x, 44, x + 14, 58), fill=BLUE)
    d.text((x + 20, 43), f"B: {b}", fill="black", font=small)
    top, bottom = 104, height - 46
    curve = results.get("alpha_curve") or []
    half = width // 2 if len(curve) >= 2 else width   # the bars take the whole width without an α curve
    for i, (metric, label) in enumerate(METRICS.items()):
        groups = []
        for name in ("table3", "table4"):
            row = ((results.get("tables", {}).get(name) or {}).get(metric) or {}).get("overall") or {}
            if row.get("n"):
                groups.append(("Table 3" if name == "table3" else "Table 4 (abl.)", row["base"], row["tuned"]))
        left = 16 + i * (half - 16) // 2
        _bar_panel(d, (left + 44, top, left + (half - 16) // 2 - 12, bottom), label, groups)
    if len(curve) >= 2:
        mid = (top + bottom) // 2
        alphas = [c["alpha"] for c in curve]
        for (key, label, colour), (y0, y1) in zip((("clip_t", "CLIP-T", GREEN), ("dino", "DINO", RED)),
                                                   ((top, mid - 24), (mid + 30, bottom))):
            _curve_panel(d, (half + 60, y0, width - 20, y1), f"{label} vs alpha (side B)", alphas,
                         [c[key] for c in curve], colour)
    return img


def _bar_panel(d, box, title: str, groups: list[tuple[str, float, float]]) -> None:
    """Bars of A and B per group on one axis from min(0, values) to max(0, values), zero marked."""
    x0, y0, x1, y1 = box
    font, small = _font(15), _font(13)
    d.text((x0, y0 - 26), title, fill="black", font=font)
    if not groups:
        d.text((x0, y0 + 10), "no results yet", fill=GREY, font=small)
        return
    values = [v for _, a, b in groups for v in (a, b)]
    lo, hi = min(0.0, *values), max(0.0, *values)
    pad = 0.15 * ((hi - lo) or 1.0)           # room for the value printed beyond each bar's end
    lo, hi = lo - (pad if lo < 0 else 0.0), hi + (pad if hi > 0 or lo == 0 else 0.0)
    y_of = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)  # noqa: E731
    zero = y_of(0.0)
    d.line((x0, y0, x0, y1), fill="black")
    d.text((x0 - 6, zero), "0", fill="black", font=small, anchor="rm")
    d.line((x0, zero, x1, zero), fill="black")
    slot = (x1 - x0) / len(groups)
    bar = min(44.0, slot / 3)
    for i, (label, a, b) in enumerate(groups):
        cx = x0 + slot * (i + 0.5)
        for j, (value, colour) in enumerate(((a, GREY), (b, BLUE))):
            left = cx - bar - 2 + j * (bar + 4)
            y = y_of(value)
            d.rectangle((left, min(y, zero), left + bar, max(y, zero)), fill=colour)
            # A's value ends at its bar's right edge, B's starts at its left edge: side by side, never on top
            text_x, side = (left + bar, "r") if j == 0 else (left, "l")
            text_y, end = (y - 3, "b") if value >= 0 else (y + 3, "t")
            d.text((text_x, text_y), f"{value:.3f}", fill=colour, font=small, anchor=side + end)
        d.text((cx, y1 + 8), label, fill="black", font=small, anchor="mt")


def _curve_panel(d, box, title: str, xs: list[float], ys: list[float], colour) -> None:
    """One metric against α on its own axis (lowest to highest value), with its values at the ends."""
    x0, y0, x1, y1 = box
    small = _font(13)
    d.text((x0, y0 - 4), title, fill="black", font=_font(15), anchor="lb")
    lo, hi = min(ys), max(ys)
    span_y, span_x = (hi - lo) or 1.0, (max(xs) - min(xs)) or 1.0
    pts = [(x0 + (x - min(xs)) / span_x * (x1 - x0), y1 - (y - lo) / span_y * (y1 - y0)) for x, y in zip(xs, ys)]
    d.line((x0, y0, x0, y1), fill="black")
    d.line((x0, y1, x1, y1), fill="black")
    digits = _digits(lo, hi)
    for v in (lo, hi):
        d.text((x0 - 6, y1 - (v - lo) / span_y * (y1 - y0)), f"{v:.{digits}f}", fill="black", font=small, anchor="rm")
    d.line(pts, fill=colour, width=3)
    for (px, py), x in zip(pts, xs):
        d.ellipse((px - 4, py - 4, px + 4, py + 4), fill=colour)
        d.text((px, y1 + 6), f"{x:g}", fill="black", font=small, anchor="mt")


def _digits(lo: float, hi: float) -> int:
    """Decimals that tell ``lo`` and ``hi`` apart (3 at least, 6 at most): an α curve that moves by
    0.0002 must not read -0.421 at both ends."""
    import math

    span = abs(hi - lo)
    return 3 if span == 0 else max(3, min(6, 1 - math.floor(math.log10(span))))
