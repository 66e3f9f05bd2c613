"""AUTOMATIC1111's ``parameters`` text: write it into PNGs and read it back (ours and A1111's).

The format, as A1111 writes it::

    a high-quality close shot picture of a woman <lora:close:0.8>
    Negative prompt: blurry
    Steps: 16, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 6, Seed: 42, Size: 512x512,
    Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "close: 0123456789ab", Version: v1.10.1

(the last line is one line). A textual-inversion embedding is its token in the prompt plus
``TI hashes: "name: 0123456789ab"`` (sha256 of the file, 12 hex digits, as A1111 writes it).
Values holding ``,`` ``:`` or ``"`` are JSON-quoted. A1111 1.9+ writes the schedule apart
(``Sampler: DPM++ 2M, Schedule type: Karras``), and so does the studio; the older combined spelling
(``DPM++ 2M Karras``) is still read (``samplers.from_a1111``).
Nothing here knows about pipelines: it is text in, text out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

PARAMETERS_KEY = "parameters"
# A1111's own pattern for "Key: value" pairs (modules/infotext_utils.py).
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_LORA_TAG = re.compile(r"<lora:([^:>]+):([^:>]+)(?::[^>]*)?>")
_EXIF_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769


@dataclass
class Parameters:
    """One image's settings as A1111 text holds them."""
    prompt: str = ""                 # without <lora:...> tags
    negative_prompt: str = ""
    loras: list = field(default_factory=list)   # [(name, weight)] from <lora:name:weight> tags
    settings: dict = field(default_factory=dict)  # "Steps" -> "16", ... (text, as written)

    def get_int(self, key: str):
        try:
            return int(float(self.settings[key]))
        except (KeyError, ValueError):
            return None

    def get_float(self, key: str):
        try:
            return float(self.settings[key])
        except (KeyError, ValueError):
            return None

    @property
    def size(self):
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", self.settings.get("Size", ""))
        return (int(match.group(1)), int(match.group(2))) if match else None

    @property
    def sampler(self) -> str | None:
        """The studio's name of the text's sampler (``Sampler`` + ``Schedule type``, read as A1111
        1.9+ reads them; see ``samplers.from_a1111``), e.g. ``DPM++ 2M Karras``; the text as written
        when no studio sampler matches."""
        from dreamshot.generate.samplers import from_a1111

        name = self.settings.get("Sampler")
        return from_a1111(name, self.settings.get("Schedule type"))[0] or name

    @property
    def lora_hashes(self) -> dict:
        return name_values(self.settings.get("Lora hashes", ""))

    @property
    def ti_hashes(self) -> dict:
        """Textual-inversion embeddings: name -> short hash (A1111's ``TI hashes``)."""
        return name_values(self.settings.get("TI hashes", ""))

    @property
    def methods(self) -> dict:
        """LoRA / embedding name -> training method (ours: ``Methods: "close: lora, close_ti: ti"``)."""
        return name_values(self.settings.get("Methods", ""))


def name_values(text: str) -> dict:
    """``"a: 1, b: 2"`` -> {"a": "1", "b": "2"} (A1111's hash lists)."""
    out = {}
    for part in (text or "").split(","):
        if ":" in part:
            name, value = part.rsplit(":", 1)
            out[name.strip()] = value.strip()
    return out


def quote(value) -> str:
    """A1111's quoting: JSON-quote a value that holds a comma, colon, quote or newline."""
    text = str(value)
    if not any(ch in text for ch in ',:"\n'):
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text[1:-1]
    return text


def lora_tag(name: str, weight: float) -> str:
    return f"<lora:{name}:{format_number(weight)}>"


def format_number(value: float) -> str:
    """16.0 -> '16', 0.75 -> '0.75' (as A1111 shows numbers)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.4g}"


def format_parameters(prompt: str, negative_prompt: str, settings: dict, loras=()) -> str:
    """The A1111 text. ``loras`` = [(name, weight)] is appended to the prompt as ``<lora:..>``
    tags; ``settings`` is an ordered dict of "Key" -> value (None values are left out)."""
    tags = " ".join(lora_tag(name, weight) for name, weight in loras)
    first = f"{prompt} {tags}".strip() if tags else prompt
    lines = [first]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = []
    for key, value in settings.items():
        if value is None or value == "":
            continue
        pairs.append(f"{key}: {quote(format_number(value) if isinstance(value, float) else value)}")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def parse_parameters(text: str) -> Parameters:
    """Parse A1111 text (ours or A1111's own). Never raises: unknown keys are kept as text."""
    text = (text or "").strip().replace("\r\n", "\n")
    lines = text.split("\n")
    settings: dict = {}
    if lines and len(_PARAM.findall(lines[-1])) >= 3:
        for key, value in _PARAM.findall(lines.pop()):
            settings[key.strip()] = _unquote(value)
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    prompt = "\n".join(prompt_lines).strip()
    loras = []
    for name, weight in _LORA_TAG.findall(prompt):
        try:
            loras.append((name.strip(), float(weight)))
        except ValueError:
            continue
    prompt = re.sub(r"\s{2,}", " ", _LORA_TAG.sub("", prompt)).strip()
    return Parameters(prompt, "\n".join(negative_lines).strip(), loras, settings)


# ---- images ---------------------------------------------------------------------------------------

def png_info(parameters: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    return info


def save_png(image, path: Path, parameters: str) -> Path:
    """Write ``image`` as PNG with the A1111 text in its ``parameters`` chunk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=png_info(parameters))
    return path


def read_parameters(source) -> str | None:
    """The A1111 text of a PNG (``parameters`` text chunk) or a JPEG/WebP (EXIF UserComment, as
    A1111 saves those); ``source`` is a path or a PIL image. None when there is none."""
    from PIL import Image

    image = Image.open(source) if isinstance(source, (str, Path)) else source
    try:
        text = image.info.get(PARAMETERS_KEY)
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if text:
            return text
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
        return _decode_user_comment(comment)
    finally:
        if isinstance(source, (str, Path)):
            image.close()


def _decode_user_comment(value) -> str | None:
    if not value:
        return None
    if isinstance(value, str):
        return value or None
    head, body = value[:8], value[8:]
    if head.startswith(b"UNICODE"):
        # piexif (used by A1111) writes UTF-16 big-endian; some tools little-endian.
        for codec in ("utf-16-be", "utf-16-le"):
            try:
                text = body.decode(codec)
                if text.isprintable() or "\n" in text:
                    return text.strip("\x00") or None
            except UnicodeDecodeError:
                continue
    return value.decode("utf-8", "replace").strip("\x00") or None
