"""Server paths typed into the page (an export folder, a folder to import): they stay inside the
allowed roots, the data folder plus the folders the operator names (``--allow-dir`` /
``DREAMSHOT_ALLOWED_DIRS``, ``Settings.allowed_roots``). The command line is the operator's own
shell and is not bound by them. Symbolic links are followed before the check.
"""

from __future__ import annotations

from pathlib import Path

from dreamshot.errors import InvalidInput


def _resolved(path) -> Path:
    return Path(str(path)).expanduser().resolve()


def inside(path, roots) -> bool:
    target = _resolved(path)
    for root in roots:
        base = _resolved(root)
        if target == base or base in target.parents:
            return True
    return False


def confine(path, roots, what: str) -> Path:
    """``path`` resolved when it lies inside one of ``roots``; InvalidInput naming them otherwise."""
    text = str(path or "").strip()
    if not text:
        raise InvalidInput(f"Give the {what}.")
    if not inside(text, roots):
        first, *others = [str(r) for r in roots]
        extra = f" and {', '.join(others)}" if others else ""
        raise InvalidInput(f"The {what} {text!r} is outside the folders the page may use: the data folder {first}"
                           f"{extra}. The operator can allow another with --allow-dir DIR (DREAMSHOT_ALLOWED_DIRS).")
    return _resolved(text)
