"""Where a survey's images live: ``<data>/surveys/<survey id>/<position>-base.png`` and
``-lora.png`` (PNG with the full A1111 parameters). Paths in the database are relative to the data
folder; the folder is never served, the tab hands pixels to Gradio."""

from __future__ import annotations

from pathlib import Path

from dreamshot.errors import NotFound


def survey_dir(studio, survey_id: int) -> Path:
    return Path(studio.settings.data_dir) / "surveys" / str(int(survey_id))


def save_pair_images(studio, survey_id: int, position: int, base, lora) -> tuple[str, str]:
    """Write both GeneratedImages; returns their paths relative to the data folder."""
    folder = survey_dir(studio, survey_id)
    out = []
    for kind, image in (("base", base), ("lora", lora)):
        path = folder / f"{position:04d}-{kind}.png"
        image.save(path)  # written to a temporary name, then renamed: never half-written
        out.append(path.relative_to(studio.settings.data_dir).as_posix())
    return out[0], out[1]


def resolve(studio, relative: str) -> Path:
    """The absolute path of a stored image; NotFound if it is missing or outside the data folder."""
    root = Path(studio.settings.data_dir).resolve()
    path = (root / relative).resolve()
    if root not in path.parents or not path.is_file():
        raise NotFound("A survey image is missing from the data folder; rebuild the survey's pairs.")
    return path


def load(studio, relative: str):
    from PIL import Image

    with Image.open(resolve(studio, relative)) as img:
        return img.convert("RGB")
