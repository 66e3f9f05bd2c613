"""Process-wide hardening shared by the app and every CLI.

- Pillow's decompression-bomb *warning* becomes an error, and the pixel limit is explicit.
- Log records never carry secrets: Hub tokens and the admin password are masked, in log records,
  in messages shown to users (``redact``) and in anything a library prints to stderr itself
  (``redact_stderr``: gradio prints tracebacks of failed requests with ``traceback.print_exc``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings

MAX_IMAGE_PIXELS = 64_000_000  # ~ 8K x 8K; anything larger is refused as a possible bomb

_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def harden_pillow() -> None:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    warnings.simplefilter("error", Image.DecompressionBombWarning)


TOO_LARGE = (f"The image is too large to open safely (over {MAX_IMAGE_PIXELS // 1_000_000} megapixels, "
             "refused as a possible decompression bomb).")
NOT_AN_IMAGE = "The file is not an image that can be read (PNG, JPEG or WebP)."


def input_message(exc: BaseException) -> str | None:
    """The one-line message for an exception that a bad input file causes inside a library (an
    image bomb, a file that is not an image), or None when ``exc`` is not one of those."""
    pil = sys.modules.get("PIL.Image")
    if pil is None:
        return None
    if isinstance(exc, (pil.DecompressionBombError, pil.DecompressionBombWarning)):
        return TOO_LARGE
    if isinstance(exc, pil.UnidentifiedImageError):
        return NOT_AN_IMAGE
    return None


class RedactSecrets(logging.Filter):
    """Masks Hub tokens and configured secrets in every log record."""

    def __init__(self, secrets: list[str] | None = None):
        super().__init__()
        self.secrets = [s for s in (secrets or []) if s and len(s) >= 4]

    def redact(self, text: str) -> str:
        text = _TOKEN.sub("hf_***", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if record.exc_info:
            # Render the traceback now so it can be redacted too.
            clean = clean + "\n" + self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        return True


# The process's secrets (logging is process-wide): set by configure_logging, used by redact().
_REDACTOR = RedactSecrets()


def redact(text: str) -> str:
    """``text`` with Hub tokens and the configured secrets masked."""
    return _REDACTOR.redact(text)


class _RedactingStream(io.TextIOBase):
    """A text stream that masks secrets line by line before writing to the real one."""

    def __init__(self, stream):
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, self._pending = self._pending.rsplit("\n", 1)
            self._stream.write(redact(done) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(redact(self._pending))
            self._pending = ""
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()


def redact_stderr() -> None:
    """Mask secrets in whatever is printed to stderr from now on (idempotent)."""
    if not isinstance(sys.stderr, _RedactingStream):
        sys.stderr = _RedactingStream(sys.stderr)


class KnownNoise(logging.Filter):
    """Drops library warnings that are expected on this stack and that nobody can act on: transformers'
    "`CLIPImageProcessor` requires torchvision (not installed); falling back to …Pil" (the studio does
    without torchvision on purpose: README, *Why no torchvision*)."""

    LOGGER = "transformers.utils.import_utils"

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


@contextlib.contextmanager
def quiet_libraries(*warning_patterns: str, transformers: bool = False):
    """diffusers' (and with ``transformers``, transformers') notices silenced for a block, and Python
    warnings matching ``warning_patterns`` ignored: for notices that are expected where they are used
    (a dtype cast, UNet-only LoRAs as named adapters, new embedding rows) and noise in a log."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    levels = dlogging.get_verbosity(), tlogging.get_verbosity()
    dlogging.set_verbosity_error()
    if transformers:
        tlogging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            for pattern in warning_patterns:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        dlogging.set_verbosity(levels[0])
        tlogging.set_verbosity(levels[1])


def configure_logging(secrets: list[str] | None = None, level: int = logging.INFO) -> None:
    """Root logging with secret redaction on every handler, known library noise dropped; idempotent."""
    noisy = logging.getLogger(KnownNoise.LOGGER)   # the logger transformers will use (same object)
    if not any(isinstance(f, KnownNoise) for f in noisy.filters):
        noisy.addFilter(KnownNoise())
    import os

    secrets = list(secrets or []) + [os.environ.get("HF_TOKEN", ""), os.environ.get("HUGGING_FACE_HUB_TOKEN", "")]
    _REDACTOR.secrets = sorted({s for s in _REDACTOR.secrets + secrets if s and len(s) >= 4}, key=len, reverse=True)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        for f in list(handler.filters):
            if isinstance(f, RedactSecrets):
                handler.removeFilter(f)
        handler.addFilter(RedactSecrets(secrets))
