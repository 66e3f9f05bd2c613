"""Values as they arrive from a client (JSON from the API, a form): coerced to what a service needs, or
refused with one line (``InvalidInput``). JSON may carry any type where text or a number is expected,
and NaN or infinity where a number is; these helpers are where that is caught."""

from __future__ import annotations

import math

from dreamshot.errors import InvalidInput

_KINDS = {bool: "true/false", int: "a number", float: "a number", list: "a list", tuple: "a list", dict: "an object"}


def _kind(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def text_value(value, label: str) -> str:
    """``value`` stripped when it is text; '' for nothing; InvalidInput for a number, list, ..."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{label} must be text (got {_kind(value)}).")
    return value.strip()


def whole_number(value, label: str) -> int:
    """``value`` as an int: an int, an integral finite float, or their text; InvalidInput otherwise."""
    if isinstance(value, bool) or value is None:
        raise InvalidInput(f"{label} must be a whole number (got {_kind(value) if value is not None else 'nothing'}).")
    if isinstance(value, int):
        return value
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{label} must be a whole number (got {str(value)[:40]!r}).") from None
    if not math.isfinite(number) or number != int(number):
        raise InvalidInput(f"{label} must be a whole number (got {str(value)[:40]!r}).")
    return int(number)

