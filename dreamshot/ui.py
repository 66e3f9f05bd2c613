"""Small helpers every tab uses (a UI file: gradio is imported here and in the tab builders only).

- ``guarded``: user-facing errors (DreamShotError) become ``gr.Error`` with their message (secrets
  masked) and one log line; anything else is logged server-side (secrets masked) with a reference
  id and the browser sees only that id. Gradio itself prints no traceback for either. A handler
  arriving while the warm-up thread imports the ML libraries waits for them to be whole.
- ``admin_name``: the role check each admin handler runs itself.
- ``generator_dropdowns``: the Generator A / B pair of Evaluate and the Survey build form.
- ``gpu``: ZeroGPU's ``@spaces.GPU(duration=...)`` for handlers that run the model (a no-op
  elsewhere).
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid

import gradio as gr

from dreamshot.errors import DreamShotError
from dreamshot.models import wait_for_imports
from dreamshot.safety import redact

log = logging.getLogger("dreamshot.ui")


def _to_gr_error(exc: BaseException, handler: str) -> gr.Error:
    if isinstance(exc, gr.Error):
        exc.message = redact(str(exc.message))
        exc.print_exception = False
        return exc
    if isinstance(exc, DreamShotError):
        message = redact(str(exc))
        log.info("refused in %s: %s: %s", handler, type(exc).__name__, message)  # one line, no traceback
        return gr.Error(message, print_exception=False)
    ref = uuid.uuid4().hex[:8]
    log.error("internal error ref=%s in %s", ref, handler, exc_info=exc)
    return gr.Error(f"Internal error (ref {ref}). The server log has the details.", print_exception=False)


def guarded(fn):
    """Wrap a Gradio handler (plain, generator or async) so only safe messages reach the browser."""
    name = getattr(fn, "__qualname__", repr(fn))
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            wait_for_imports()
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise _to_gr_error(exc, name) from None
        return gen_wrapper

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                raise _to_gr_error(exc, name) from None
        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        wait_for_imports()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _to_gr_error(exc, name) from None
    return wrapper


# Wiring for an event that can be refused and whose outputs are fields people edit (a form's own
# fields, a picker): a refusal is one toast and every field stays as it was and usable. Gradio
# otherwise puts an "Error" overlay, which swallows clicks, on every output of a failed event.
QUIET = dict(show_progress="hidden")


def admin_name(studio, request: gr.Request | None) -> str:
    """The caller's name if they may use admin features; raises AccessDenied otherwise."""
    username = getattr(request, "username", None) if request is not None else None
    return studio.access.require_admin(username)


GENERATOR_FORMS = "base, lora@0.8, full@1, ti, ti+lora@0.6, name:<library name>@α, +canny/+depth"


def job_owner(request: gr.Request | None) -> str:
    """Whose generation a Stop may reach: the logged-in name (a reloaded page, or a second window,
    is still that person), else the page session (every visitor of a password-less studio is an
    admin with no name), else "api"."""
    name = getattr(request, "username", None)
    if name:
        return f"user:{name}"
    return getattr(request, "session_hash", None) or "api"


def generator_dropdowns(elem_prefix: str, defaults: tuple[str, str], info_b: str) -> tuple:
    """Generator A and B side by side (ids ``<prefix>-gen-a`` / ``-gen-b``): the defaults until page load
    fills in what the library offers; free text is accepted too."""
    with gr.Row():
        pair = tuple(gr.Dropdown([value], value=value, allow_custom_value=True, label=f"Generator {side}",
                                 elem_id=f"{elem_prefix}-gen-{side.lower()}", info=info)
                     for side, value, info in (("A", defaults[0], GENERATOR_FORMS), ("B", defaults[1], info_b)))
    return pair


def gpu(duration: int = 60):
    """ZeroGPU: a GPU is attached only while a decorated function runs; a no-op elsewhere."""
    try:
        import spaces
    except Exception:  # pragma: no cover - spaces missing or broken
        return lambda fn: fn
    return spaces.GPU(duration=duration)
