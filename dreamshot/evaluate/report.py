"""An evaluation's results on disk and as text: ``results.json``, ``results.csv``, ``results.png``
(drawn with PIL: matplotlib is not part of the stack) and the Markdown the tab and CLI show."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from PIL import Image, ImageDraw

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
    if note := demo_note(results):
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
        demo = f" - {demo_note(results)}" if demo_note(results) else ""
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
                 f"{report['n']} {report['measured_on']}")
        classes = report.get("classes", [])
        text += "\n\n| true \\ judged | " + " | ".join(classes) + " |\n|" + "---|" * (len(classes) + 1)
        for cls, row in zip(classes, report.get("confusion", [])):
            text += f"\n| {cls} | " + " | ".join(str(v) for v in row) + " |"
    return text


def _ascii(text: str) -> str:
    """Labels for the PIL default font (no α or arrows there)."""
    return text.replace("α", "a").replace("→", "->").encode("ascii", "replace").decode()


def plot(results: dict, width: int = 900, height: int = 420) -> Image.Image:
    """Bars: base vs fine-tuned, CLIP-T and DINO for Tables 3-4; right panel: the α curve."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), "DreamShot evaluation" + ("" if results.get("complete") else " (INCOMPLETE)")
           + (f" - {demo_note(results).upper()}" if demo_note(results) else ""), fill="black")
    bars = []
    for name in ("table3", "table4"):
        t = results.get("tables", {}).get(name) or {}
        for metric, label in METRICS.items():
            row = (t.get(metric) or {}).get("overall") or {}
            if row.get("n"):
                bars.append((f"{label} {'abl.' if name == 'table4' else ''}".strip(), row["base"], row["tuned"]))
    top, bottom, left = 70, height - 40, 40
    panel = width // 2 - 20
    d.line((left, bottom, left + panel, bottom), fill="black")
    hi = max([max(b, t, 1e-6) for _, b, t in bars] or [1.0])
    for i, (label, base, tuned) in enumerate(bars):
        x = left + 10 + i * (panel // max(len(bars), 1))
        for j, (value, colour) in enumerate(((base, (150, 150, 150)), (tuned, (40, 110, 200)))):
            h = int((bottom - top) * max(value, 0) / hi)
            d.rectangle((x + j * 22, bottom - h, x + j * 22 + 18, bottom), fill=colour)
            d.text((x + j * 22, bottom - h - 12 - 12 * j), f"{value:.3f}", fill=colour)
        d.text((x, bottom + 6), label, fill="black")
    a, b = (_ascii(x) for x in side_labels(results))
    d.text((left, 30), f"grey = A: {a}, blue = B: {b}", fill="black")
    curve = results.get("alpha_curve") or []
    ox = width // 2 + 20
    d.line((ox, bottom, width - 20, bottom), fill="black")
    if len(curve) >= 2:
        ranges = {k: (min(c[k] for c in curve), max(c[k] for c in curve)) for k in ("clip_t", "dino")}
        d.text((ox, top - 28), "alpha curve, each line scaled to its own range:", fill="black")
        d.text((ox, top - 16), "CLIP-T {:.4f}..{:.4f} (green), DINO {:.4f}..{:.4f} (red)".format(
            *ranges["clip_t"], *ranges["dino"]), fill="black")
        alphas = [c["alpha"] for c in curve]
        span = (max(alphas) - min(alphas)) or 1.0
        for key, colour in (("clip_t", (30, 150, 60)), ("dino", (200, 50, 50))):
            vals = [c[key] for c in curve]
            lo_v, hi_v = min(vals), max(vals)
            rng = (hi_v - lo_v) or 1.0
            pts = [(ox + (a - min(alphas)) / span * (width - 40 - ox), bottom - 10 - (v - lo_v) / rng * (bottom - top - 20))
                   for a, v in zip(alphas, vals)]
            d.line(pts, fill=colour, width=2)
        for a in alphas:
            d.text((ox + (a - min(alphas)) / span * (width - 40 - ox) - 6, bottom + 6), f"{a:g}", fill="black")
    return img
