"""Storyboards and α sweeps: many generations laid out as one image.

- ``alpha_sweep``: shot types (rows) × α values (columns) for one prompt and seed - the paper's
  Figure 3 - as one labelled grid image.
- ``storyboard``: lines ``shot | description`` -> one panel each, numbered, with the shot and the
  text under it, as a contact sheet PNG and a PDF (Pillow writes both). A third column names a
  sketch (``close | her face at the window | face.png``): that panel is drawn with the scribble
  ControlNet from it (storyboard artists' rough frames). The CLI finds sketches in a folder
  (``folder_sketches``), the tab among the uploaded files (``uploaded_sketches``).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.generate import pngmeta
from dreamshot.generate.request import ControlRequest, check_inputs, with_seed
from dreamshot.generate.results import Cancelled, Job

MAX_PANELS = 24
MAX_SWEEP_CELLS = 40
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
BASE_WORDS = {"", "-", "none", "base"}


# ---- α sweep ---------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    grid: object                  # PIL image, labelled
    shots: list                   # row labels (LoRA names)
    alphas: list
    cells: list                   # rows of GeneratedImage
    parameters: str               # A1111 text of the grid (the first cell's, with the sweep noted)


def parse_alphas(text) -> list[float]:
    if isinstance(text, (list, tuple)):
        values = list(text)
    else:
        values = [v for v in str(text or "").replace(";", ",").split(",") if v.strip()]
    try:
        alphas = [float(v) for v in values]
    except ValueError:
        raise InvalidInput("α values are numbers separated by commas, e.g. 0, 0.25, 0.5, 0.75, 1.") from None
    if not alphas:
        raise InvalidInput("Give at least one α value, e.g. 0, 0.5, 1.")
    return alphas


def default_sweep_shots(service) -> list[str]:
    """One row per shot type that has a LoRA (plus LoRAs without a shot type), library order."""
    rows = []
    for info in service.loras():
        key = info.shot or info.name
        if key not in rows:
            rows.append(key)
    return rows


def alpha_sweep(service, req, shots: list[str], alphas, job=None) -> SweepResult:
    """One image per (shot, α), all from ``req``'s prompt and seed (a random seed is drawn once).
    No shots given: every shot type with a LoRA."""
    alphas = parse_alphas(alphas)
    shots = [s for s in (shots or []) if s and s.lower() not in BASE_WORDS] or default_sweep_shots(service)
    if not shots:
        raise InvalidInput("No shot LoRA yet: train or upload one to make an α sweep.")
    if len(shots) * len(alphas) > MAX_SWEEP_CELLS:
        raise InvalidInput(f"A sweep has at most {MAX_SWEEP_CELLS} images ({len(shots)} × {len(alphas)} asked).")
    req = with_seed(check_inputs(req.replace(num_images=1, blend=None, shot=shots[0])))
    for shot in shots:
        service.resolve_lora(shot)
    for a in alphas:
        check_inputs(req.replace(alpha=a))
    results = service.generate_many([req.replace(shot=shot, alpha=a) for shot in shots for a in alphas],
                                    job or Job(), save=False)
    if any(not r.images for r in results):
        raise Cancelled("Stopped before the sweep was finished.")
    cells = [[results[r * len(alphas) + c].images[0] for c in range(len(alphas))] for r in range(len(shots))]
    grid = labelled_grid([[cell.image for cell in row] for row in cells],
                         row_labels=shots, col_labels=[f"α = {pngmeta.format_number(a)}" for a in alphas])
    sweep = f"shots {' '.join(shots)}; alphas {' '.join(map(pngmeta.format_number, alphas))}"
    text = cells[0][0].parameters + f", Sweep: {pngmeta.quote(sweep)}"
    return SweepResult(grid, shots, alphas, cells, text)


# ---- storyboard ------------------------------------------------------------------------------------

@dataclass
class Panel:
    number: int
    shot: str | None          # shot type or LoRA name; None = base model
    description: str
    sketch: str | None = None    # the name of the panel's sketch (scribble ControlNet)
    image: object = None
    seed: int | None = None
    parameters: str = ""


@dataclass
class StoryboardResult:
    panels: list
    sheet: object                  # PIL image
    png_path: Path | None = None
    pdf_path: Path | None = None
    notes: list = field(default_factory=list)


def parse_storyboard(text: str) -> list[Panel]:
    """``shot | description [| sketch]`` per line (``#`` comments and blank lines ignored; a line
    without ``|`` is a base-model panel)."""
    panels = []
    for lineno, raw in enumerate((text or "").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split("|", 2)] if "|" in line else ["", line]
        shot, description, sketch = (parts + [""])[:3]
        if not description:
            raise InvalidInput(f"Storyboard line {lineno}: the description after '|' is empty.")
        panels.append(Panel(len(panels) + 1, None if shot.lower() in BASE_WORDS else shot, description,
                            sketch or None))
    if not panels:
        raise InvalidInput("The storyboard is empty: write one panel per line as 'shot | description', "
                           "e.g. 'long | a lighthouse on a cliff at dusk'.")
    if len(panels) > MAX_PANELS:
        raise InvalidInput(f"A storyboard has at most {MAX_PANELS} panels ({len(panels)} given).")
    return panels


def storyboard(service, text: str, req, job=None, *, columns: int = 3, title: str = "", sketches=None,
               sketch_control: ControlRequest | None = None) -> StoryboardResult:
    """Generate every panel (same seed for all, so the look stays consistent) and lay them out.
    ``sketches(name)`` gives a panel's sketch (``folder_sketches``, ``uploaded_sketches``);
    ``sketch_control`` its ControlNet settings (scale, start, end, model; kind and image ignored).
    The request's own control is not used: only panels with a sketch get a ControlNet."""
    panels = parse_storyboard(text)
    req = with_seed(check_inputs(req.replace(prompt=panels[0].description, num_images=1, blend=None, control=None)))
    requests = [req.replace(prompt=panel.description, shot=panel.shot,
                            control=_sketch_control(panel, sketches, sketch_control)) for panel in panels]
    for panel, one in zip(panels, requests):  # check everything before the first image is made
        if panel.shot:
            service.resolve_lora(panel.shot)
        check_inputs(one)
    results = service.generate_many(requests, job or Job(), save=False)   # panels of one shot batched
    if any(not r.images for r in results):
        raise Cancelled("Stopped before the storyboard was finished.")
    for panel, result in zip(panels, results):
        image = result.images[0]
        panel.image, panel.seed, panel.parameters = image.image, image.seed, image.parameters
    labels = {p.shot: _shot_label(service, p.shot) for p in panels}
    sheet = contact_sheet(panels, labels, columns=columns, title=title)
    return StoryboardResult(panels, sheet)


def _sketch_control(panel: Panel, sketches, template: ControlRequest | None) -> ControlRequest | None:
    if not panel.sketch:
        return None
    if sketches is None:
        raise InvalidInput(f"Storyboard panel {panel.number} names the sketch {panel.sketch!r}, but no sketches "
                           "were given (upload them, or --sketch-dir in the CLI).")
    image = sketches(panel.sketch)
    t = template or ControlRequest("scribble", None)
    return ControlRequest("scribble", image, t.scale, t.start, t.end, t.model)


def folder_sketches(folder: Path):
    """name -> the file ``name`` inside ``folder`` (never outside it)."""
    root = Path(folder).resolve()

    def find(name: str) -> str:
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise InvalidInput(f"Sketch {name!r} not found in {root}.")
        return str(path)
    return find


def uploaded_sketches(paths: list):
    """name -> the uploaded file of that name (uploads keep their file names)."""
    by_name = {Path(p).name: str(p) for p in paths or []}

    def find(name: str) -> str:
        if Path(name).name not in by_name:
            listed = ", ".join(sorted(by_name)) or "none"
            raise InvalidInput(f"Sketch {name!r} is not among the uploaded sketches ({listed}).")
        return by_name[Path(name).name]
    return find


def _shot_label(service, shot: str | None) -> str:
    if not shot:
        return "base model"
    info = service.resolve_lora(shot)
    return service.shot_phrase(info) or info.name


def save_storyboard(result: StoryboardResult, folder: Path, stem: str = "storyboard") -> StoryboardResult:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = "\n".join(f"{p.number}. [{p.shot or 'base'}] {p.description} (seed {p.seed})"
                        + (f" sketch {p.sketch}" if p.sketch else "") for p in result.panels)
    result.png_path = pngmeta.save_png(result.sheet, folder / f"{stem}.png", summary)
    result.pdf_path = folder / f"{stem}.pdf"
    result.sheet.convert("RGB").save(result.pdf_path, format="PDF", resolution=150.0, title=stem)
    return result


# ---- layout ----------------------------------------------------------------------------------------

def _font(size: int):
    """DejaVu Sans when the system has it (it has Greek, for α), else Pillow's built-in font."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _safe(text: str, font) -> str:
    """Spell out α for fonts without Greek glyphs."""
    return text if "DejaVu" in str(getattr(font, "path", "")) else text.replace("α", "alpha")


def _text_height(draw, font) -> int:
    box = draw.textbbox((0, 0), "Ag", font=font)
    return box[3] - box[1] + 4


def labelled_grid(rows: list[list], *, row_labels: list[str], col_labels: list[str], pad: int = 6):
    """A grid of equal-size images with column headers on top and row labels on the left."""
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    font = _font(max(12, min(28, w // 12)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(probe.textlength(label, font=font) for label in row_labels) + 2 * pad
    head_h = _text_height(probe, font) + 2 * pad
    cols = len(col_labels)
    sheet = Image.new("RGB", (int(label_w) + cols * (w + pad) + pad, head_h + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(col_labels):
        x = int(label_w) + pad + c * (w + pad)
        draw.text((x + w / 2, head_h / 2), _safe(label, font), fill="black", font=font, anchor="mm")
    for r, row in enumerate(rows):
        y = head_h + r * (h + pad)
        draw.text((pad, y + h / 2), _safe(row_labels[r], font), fill="black", font=font, anchor="lm")
        for c, image in enumerate(row):
            sheet.paste(image.convert("RGB"), (int(label_w) + pad + c * (w + pad), y))
    return sheet


def contact_sheet(panels: list[Panel], labels: dict, *, columns: int = 3, title: str = "", pad: int = 12):
    """Numbered panels in a grid, each with "N · shot" and its wrapped description underneath."""
    from PIL import Image, ImageDraw

    columns = max(1, min(int(columns or 3), len(panels)))
    w, h = panels[0].image.size
    cell_w = max(w, 160)
    font = _font(14 if cell_w < 320 else 18)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_height(probe, font)
    chars = max(12, int(cell_w / max(probe.textlength("n", font=font), 1)))
    wrapped = [textwrap.wrap(p.description, chars)[:4] for p in panels]
    text_h = line_h * (1 + max(len(lines) for lines in wrapped)) + pad
    title_h = (line_h + pad) if title else 0
    n_rows = (len(panels) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (cell_w + pad) + pad, title_h + n_rows * (h + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    for i, (panel, lines) in enumerate(zip(panels, wrapped)):
        x = pad + (i % columns) * (cell_w + pad)
        y = title_h + pad + (i // columns) * (h + text_h + pad)
        sheet.paste(panel.image.convert("RGB"), (x + (cell_w - w) // 2, y))
        draw.rectangle((x + (cell_w - w) // 2, y, x + (cell_w - w) // 2 + w - 1, y + h - 1), outline="#444")
        ty = y + h + 4
        draw.text((x, ty), f"{panel.number} · {labels.get(panel.shot, panel.shot or 'base model')}",
                  fill="black", font=font)
        for j, line in enumerate(lines):
            draw.text((x, ty + line_h * (j + 1)), _safe(line, font), fill="#333", font=font)
    return sheet
