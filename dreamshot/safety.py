"""Process-wide hardening shared by the app and every CLI.

- Pillow's decompression-bomb *warning* becomes an error, and the pixel limit is explicit.
- Log records never carry secrets: Hub tokens and the admin password are masked.
"""

from __future__ import annotations

import logging
import re
import warnings

MAX_IMAGE_PIXELS = 64_000_000  # ~ 8K x 8K; anything larger is refused as a possible bomb

_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def harden_pillow() -> None:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    warnings.simplefilter("error", Image.DecompressionBombWarning)


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


def configure_logging(secrets: list[str] | None = None, level: int = logging.INFO) -> None:
    """Root logging with secret redaction on every handler; idempotent."""
    import os

    secrets = list(secrets or []) + [os.environ.get("HF_TOKEN", ""), os.environ.get("HUGGING_FACE_HUB_TOKEN", "")]
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        for f in list(handler.filters):
            if isinstance(f, RedactSecrets):
                handler.removeFilter(f)
        handler.addFilter(RedactSecrets(secrets))
