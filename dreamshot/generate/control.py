"""ControlNet for Generate and for the video restyle: control images, the shared models, and what the
PNG parameters say about them. No gradio here.

- Control images (``control_map``): **canny** edges of a reference frame (OpenCV, thresholds
  ``low``/``high``), a **depth** map of it (a ``transformers`` depth-estimation model, Depth Anything
  V2 small by default), or a **scribble** used as is: white strokes on black; a black-on-white
  drawing (or strokes on a transparent canvas) is inverted. ``preprocessed`` requests use their image
  as the control map itself (a map saved beside an earlier output, or one made elsewhere).
- Models (``control_models.ControlModels``, one per studio: ``controls(studio)``): each ControlNet and the depth
  model load once and are shared; the ControlNet pipeline is built from the shared base pipeline's
  components, so LoRAs, embeddings, α, samplers and seeds work exactly as without control.
  Which ControlNet: the request's ``model``, else ``DREAMSHOT_CONTROLNET_<KIND>``, else the studio
  setting ``controlnet.<kind>``, else ``DEFAULT_CONTROLNETS`` (on the demo model: ``demo``, a
  random-weight ControlNet shaped for the demo UNet). The depth model: ``DREAMSHOT_DEPTH_MODEL``,
  else the setting ``controlnet.depth_model``, else ``DEFAULT_DEPTH_MODEL``.
- Parameters: ``ControlNet 0: "Module: canny, Model: ..., Weight: 1, ..."`` as the sd-webui-controlnet
  extension writes it, plus ``Control image: <file>`` (the map saved beside the output PNG);
  ``restore`` reads both back.
"""

from __future__ import annotations

import re
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.generate.request import CONTROL_KINDS, ControlRequest
from dreamshot.models import HUB_ID

DEFAULT_CONTROLNETS = {
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "scribble": "lllyasviel/control_v11p_sd15_scribble",
}
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
DEMO = "demo"
LEGACY_ENV = "DREAMSHOT_CONTROLNET"        # the video restyle's canny ControlNet before #14
DEPTH_ENV = "DREAMSHOT_DEPTH_MODEL"
SCALE_RANGE = (0.0, 2.0)
CANNY_LOW, CANNY_HIGH = 100, 200
MAX_IMAGE_PIXELS = 4096 * 4096
MODULES = {"canny": "canny", "depth": "depth_anything_v2", "scribble": "none"}
IMAGE_KEY = "Control image"
UNIT_KEY = "ControlNet 0"


def env_name(kind: str) -> str:
    return f"DREAMSHOT_CONTROLNET_{kind.upper()}"


def setting_key(kind: str) -> str:
    return f"controlnet.{kind}"


# ---- checks ----------------------------------------------------------------------------------------

def _number(value, label: str, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"ControlNet {label} must be a number (got {value!r}).") from None
    if not lo <= number <= hi:  # NaN fails too
        raise InvalidInput(f"ControlNet {label} must be between {lo:g} and {hi:g} (got {value!r}).")
    return number


def load_image(image, what: str = "control image"):
    """A PIL image of a PIL image, numpy array or file path; InvalidInput when there is none."""
    from PIL import Image, UnidentifiedImageError

    if image is None or (isinstance(image, str) and not image.strip()):
        raise InvalidInput(f"ControlNet needs a {what}: upload a reference frame or draw a sketch (on the "
                           "command line: --control-image FILE), or set the ControlNet to none.")
    if isinstance(image, Image.Image):
        return image
    if hasattr(image, "shape"):
        import numpy as np

        return Image.fromarray(np.asarray(image).astype("uint8"))
    path = Path(str(image)).expanduser()
    if not path.is_file():
        raise InvalidInput(f"The {what} {str(image)!r} does not exist.")
    try:
        with Image.open(path) as opened:
            size = opened.size
            if size[0] * size[1] <= MAX_IMAGE_PIXELS:
                opened.load()
                return opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):   # (a warning is an error here)
        raise InvalidInput(f"The {what} {path.name!r} is too large to open safely (a possible decompression "
                           "bomb; at most 16 MP).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidInput(f"The {what} {path.name!r} is not an image that can be read.") from None
    raise InvalidInput(f"The {what} is {size[0]}×{size[1]}: too large (at most 16 MP).")


def check_control(control: ControlRequest | None) -> ControlRequest | None:
    """The checked control of a request (kind, image loaded, ranges); None stays None."""
    if control is None:
        return None
    kind = str(control.kind or "").strip().lower()
    if kind in ("", "none"):
        return None
    if kind not in CONTROL_KINDS:
        raise InvalidInput(f"Unknown ControlNet kind {control.kind!r}; choose one of: {', '.join(CONTROL_KINDS)}.")
    scale = _number(control.scale, "scale", *SCALE_RANGE)
    start = _number(control.start, "start", 0.0, 1.0)
    end = _number(control.end, "end", 0.0, 1.0)
    if start >= end:
        raise InvalidInput(f"ControlNet start ({start:g}) must be below its end ({end:g}): they are the "
                           "fractions of the steps it acts on, e.g. 0 and 1.")
    low, high = int(_number(control.low, "canny low threshold", 0, 255)), int(_number(control.high, "canny high threshold", 0, 255))
    if low >= high:
        raise InvalidInput(f"The canny low threshold ({low}) must be below the high one ({high}).")
    image = load_image(control.image, "sketch" if kind == "scribble" else "reference image")
    model = (str(control.model).strip() or None) if control.model is not None else None
    return ControlRequest(kind, image, scale, start, end, model, low=low, high=high,
                          preprocessed=bool(control.preprocessed))


# ---- form values ---------------------------------------------------------------------------------------

def drawn(value):
    """The image of a sketchpad value (an image editor's {"composite", "layers", "background"}, a
    path or an image), or None when nothing is drawn on it (a blank canvas)."""
    import numpy as np

    if isinstance(value, dict):
        value = value.get("composite")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    image = load_image(value, "sketch")
    grey = np.asarray(_on_white(image).convert("L"))
    return image if grey.size and int(grey.max()) != int(grey.min()) else None


def form_control(kind, image, sketch, scale, start, end, low, high, ready) -> ControlRequest | None:
    """The ControlRequest of the Generate form's ControlNet fields (checked later with the request):
    a scribble takes the sketch drawn in the page, else the uploaded image."""
    kind = str(kind or "none").strip().lower()
    if kind == "none":
        return None
    if kind == "scribble":
        image = drawn(sketch) or image
    given = lambda v, d: d if v is None or v == "" else v  # noqa: E731
    return ControlRequest(kind, image, given(scale, 1.0), given(start, 0.0), given(end, 1.0), None,
                          low=given(low, CANNY_LOW), high=given(high, CANNY_HIGH), preprocessed=bool(ready))


# ---- control images ----------------------------------------------------------------------------------

def fit(image, width: int, height: int):
    """``image`` cropped to the aspect of width×height around its centre and resized to it."""
    from PIL import ImageOps

    return ImageOps.fit(_on_white(image), (int(width), int(height)))


def _on_white(image):
    """RGB; a transparent canvas (a sketchpad's) counts as white paper."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P") and (image.mode != "P" or "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image.convert("RGB")


def canny(image, low: int = CANNY_LOW, high: int = CANNY_HIGH):
    """White edges on black (3 channels), OpenCV's Canny on the grey image."""
    import cv2
    import numpy as np
    from PIL import Image

    edges = cv2.Canny(np.asarray(_on_white(image).convert("L")), int(low), int(high))
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def scribble(image):
    """White strokes on black: a drawing on a light background is inverted, one on black kept."""
    import numpy as np
    from PIL import Image, ImageOps

    grey = _on_white(image).convert("L")
    if float(np.asarray(grey).mean()) > 127.5:
        grey = ImageOps.invert(grey)
    return Image.merge("RGB", [grey] * 3)


def control_map(kind: str, image, *, low: int = CANNY_LOW, high: int = CANNY_HIGH, depth=None,
                preprocessed: bool = False):
    """The control image of one (already sized) image; ``depth`` is the depth estimator."""
    if preprocessed:
        return _on_white(image)
    if kind == "canny":
        return canny(image, low, high)
    if kind == "scribble":
        return scribble(image)
    return depth_maps(depth, [image])[0]


def depth_maps(estimator, images: list) -> list:
    """Depth maps (near = white, 3 channels, each the size of its image) from a transformers
    depth-estimation pipeline, one batch."""
    from PIL import Image

    rgb = [_on_white(im) for im in images]
    out = estimator(rgb)
    out = out if isinstance(out, list) else [out]
    return [Image.merge("RGB", [o["depth"].convert("L").resize(im.size)] * 3) for o, im in zip(out, rgb)]


# ---- parameters text ---------------------------------------------------------------------------------

def model_label(source: str) -> str:
    """How the parameters name a ControlNet: a Hub id as is, a folder by its name."""
    return source if HUB_ID.match(source) and not Path(source).exists() else Path(source.rstrip("/")).name


def unit_text(control: ControlRequest, source: str) -> str:
    """The sd-webui-controlnet unit text of a checked control."""
    from dreamshot.generate.pngmeta import format_number

    module = "none" if control.preprocessed else MODULES[control.kind]
    if control.kind == "scribble" and not control.preprocessed:
        module = "invert (from white bg & black line)"
    parts = [("Module", module), ("Model", model_label(source)), ("Weight", format_number(control.scale))]
    if control.kind == "canny" and not control.preprocessed:
        parts += [("Threshold A", control.low), ("Threshold B", control.high)]
    parts += [("Guidance Start", format_number(control.start)), ("Guidance End", format_number(control.end))]
    return ", ".join(f"{k}: {v}" for k, v in parts)


def with_control(text: str, control: ControlRequest, source: str, image_file: str | None = None) -> str:
    """A1111 ``parameters`` text with the ControlNet unit (and the control image's file) appended."""
    from dreamshot.generate.pngmeta import quote

    extra = f", {UNIT_KEY}: {quote(unit_text(control, source))}"
    if image_file:
        extra += f", {IMAGE_KEY}: {quote(image_file)}"
    return text + extra


def _unit_fields(text: str) -> dict:
    fields = {}
    for part in re.split(r",\s*(?=[A-Za-z][\w ]*:)", text or ""):
        if ":" in part:
            key, value = part.split(":", 1)
            fields[key.strip()] = value.strip()
    return fields


def restore(settings: dict, folders: list) -> tuple[ControlRequest | None, list[str]]:
    """The control of parsed A1111 settings (``Parameters.settings``) and notes on what is missing.
    The image is the saved control map (``preprocessed``) found in one of ``folders``."""
    unit = settings.get(UNIT_KEY)
    if not unit:
        return None, []
    fields, notes = _unit_fields(unit), []
    module, model = fields.get("Module", "").lower(), fields.get("Model", "")
    name = re.sub(r"\s*\[[0-9a-f]+\]$", "", model)  # the extension appends "[hash]"
    kind = next((k for k in CONTROL_KINDS if k in name.lower()), None) or \
        next((k for k in CONTROL_KINDS if k in module or (k == "scribble" and "invert" in module)), None)
    if kind is None:
        return None, [f"ControlNet {model or module!r} is not one of {', '.join(CONTROL_KINDS)}; it was left out."]
    defaults = {DEMO, *DEFAULT_CONTROLNETS.values(), *(v.split('/')[-1] for v in DEFAULT_CONTROLNETS.values())}
    chosen = None if name in defaults else (name if HUB_ID.match(name) else None)
    if name not in defaults and chosen is None:
        notes.append(f"ControlNet model {name!r} is a local folder: choose it again (--controlnet DIR).")
    number = lambda key, default: _float(fields.get(key), default)  # noqa: E731
    image = _find_image(settings.get(IMAGE_KEY), folders)
    if image is None:
        notes.append("The control image is not stored here: add the reference image or sketch again.")
    control = ControlRequest(kind, image, number("Weight", 1.0), number("Guidance Start", 0.0),
                             number("Guidance End", 1.0), chosen, low=int(number("Threshold A", CANNY_LOW)),
                             high=int(number("Threshold B", CANNY_HIGH)), preprocessed=image is not None)
    return control, notes


def _float(text, default: float) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def _find_image(name: str | None, folders: list) -> str | None:
    """``name`` (a path relative to the outputs folder) in one of ``folders``, never outside them."""
    if not name:
        return None
    for folder in folders:
        if folder is None:
            continue
        root = Path(folder).resolve()
        for candidate in (root / name, root / Path(name).name):
            try:
                resolved = candidate.resolve()
            except OSError:
                continue
            if resolved.is_relative_to(root) and resolved.is_file():
                return str(resolved)
    return None
