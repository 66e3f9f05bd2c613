"""Per-image checks of an import: decode (corrupt, truncated, bombs), channels, resolution, metadata
rules and near-duplicates by perceptual hash. Each failing check has a short reason code that the
import report counts.
"""

from __future__ import annotations

import io
import operator
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from dreamshot.errors import InvalidInput

REASONS = {
    "corrupt": "corrupt or truncated file",
    "too_large": "absurd size or decompression bomb",
    "unsafe_path": "zip entry with an absolute or '..' path",
    "grayscale": "fewer than 3 color channels (grayscale)",
    "too_small": "below the minimum resolution",
    "metadata_rule": "excluded by a metadata rule",
    "near_duplicate": "near-duplicate of a frame already in the pool",
    "duplicate": "exact duplicate of a frame already in the pool",
}


@dataclass
class Decoded:
    image: Image.Image  # fully decoded (original mode), EXIF orientation applied
    small: Image.Image  # RGB, short side ~256 px: what the checks and the pHash look at
    width: int
    height: int
    mode: str
    format: str | None


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or REASONS.get(reason, reason))
        self.reason = reason


def decode(data: bytes) -> Decoded:
    """Verify and fully decode; raise Rejected("corrupt" | "too_large") otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            image = Image.open(io.BytesIO(data))
            fmt = image.format
            image.load()  # a full decode: truncated files fail here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected("too_large", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise Rejected("corrupt", "not an image file Pillow can read") from None
    except Exception as exc:  # Pillow raises many types for broken files
        raise Rejected("corrupt", f"{exc.__class__.__name__}: {exc}"[:200]) from None
    mode = image.mode
    try:
        ImageOps.exif_transpose(image, in_place=True)
        # Palette and bilevel images (GIF, 1-bit PNG) cannot be reduced as they are.
        base = image.convert("RGBA") if image.mode in ("P", "PA", "1") else image
        factor = max(1, min(base.size) // 256)
        small = (base.reduce(factor) if factor > 1 else base).convert("RGB")
    except Exception as exc:  # an exotic mode Pillow cannot convert (e.g. some 16-bit TIFFs)
        raise Rejected("corrupt", f"unsupported image mode {mode}: {exc.__class__.__name__}") from None
    return Decoded(image=image, small=small, width=image.width, height=image.height, mode=mode, format=fmt)


def is_grayscale(decoded: Decoded) -> bool:
    """Fewer than 3 channels (the paper's rule), or RGB whose channels are all equal (a B&W film
    stored as RGB)."""
    mode = decoded.mode
    if mode in ("1", "L", "LA", "I", "I;16", "F", "La"):
        return True
    if mode not in ("P", "RGB", "RGBA", "CMYK", "YCbCr", "PA"):
        return False
    small = np.asarray(decoded.small.resize((64, 64)), dtype=np.int16)
    spread = np.abs(small[..., 0] - small[..., 1]).max(initial=0), np.abs(small[..., 1] - small[..., 2]).max(initial=0)
    return max(spread) <= 2


# ---- metadata rules: "year >= 2013", "title != ''" -------------------------------------------------
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
        "<": operator.lt, "=": operator.eq}
_RULE = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*(>=|<=|==|!=|=|>|<)\s*([^<>=!].*?|)\s*$")


@dataclass(frozen=True)
class Rule:
    field: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value}"

    def check(self, meta: dict) -> bool:
        actual = meta.get(self.field)
        if actual is None or actual == "":
            return False
        expected = self.value.strip("'\"")
        try:
            return _OPS[self.op](float(actual), float(expected))
        except (TypeError, ValueError):
            return _OPS[self.op](str(actual), expected)


def parse_rule(text: str) -> Rule:
    match = _RULE.match(text or "")
    if not match:
        raise InvalidInput(f"Cannot read the metadata rule {text!r}; write e.g. 'year >= 2013'.")
    return Rule(match.group(1).strip(), match.group(2), match.group(3))


# ---- near-duplicates: 64-bit perceptual hashes compared with numpy (no images kept) -----------------
def phash_hex(image: Image.Image) -> str:
    import imagehash

    return str(imagehash.phash(image))


class PhashIndex:
    """The kept frames' perceptual hashes (8 bytes each; 50,000 frames = 400 kB)."""

    def __init__(self, hashes: list[str] | None = None, threshold: int = 6):
        self.threshold = threshold
        self._values = np.zeros(1024, dtype=np.uint64)
        self._n = 0
        for h in hashes or []:
            self.add(h)

    def add(self, hexhash: str) -> None:
        if self._n == len(self._values):
            self._values = np.concatenate([self._values, np.zeros_like(self._values)])
        self._values[self._n] = np.uint64(int(hexhash, 16))
        self._n += 1

    def nearest(self, hexhash: str) -> int | None:
        """Smallest Hamming distance to a kept hash (None when empty)."""
        if not self._n:
            return None
        x = np.uint64(int(hexhash, 16))
        return int(np.bitwise_count(self._values[: self._n] ^ x).min())

    def closest(self, hexhash: str) -> tuple[int, int] | None:
        """(position in insertion order, Hamming distance) of the nearest kept hash; None when empty."""
        if not self._n:
            return None
        distances = np.bitwise_count(self._values[: self._n] ^ np.uint64(int(hexhash, 16)))
        at = int(distances.argmin())
        return at, int(distances[at])

    def is_near_duplicate(self, hexhash: str) -> bool:
        if self.threshold < 0:
            return False
        d = self.nearest(hexhash)
        return d is not None and d <= self.threshold
