"""Small helpers every tab uses (a UI file: gradio is imported here and in the tab builders only).

- ``guarded``: user-facing errors (DreamShotError, and a bad input file caught inside a library: an
  image bomb, a file that is not an image) become ``gr.Error`` with their message (secrets masked)
  and one log line; anything else is logged server-side (secrets masked) with a reference id and the
  browser sees only that id. Gradio itself prints no traceback for either. A handler arriving while
  the warm-up thread imports the ML libraries waits for them to be whole.
- ``StudioBlocks``: the app's ``gr.Blocks``. Every input of every event passes its
  ``preprocess_data`` before any handler runs, so a value no component can take ("nan" in a
  slider, a text file as an image, an image bomb, NaN or infinity in a number, a file handed to a
  text field) is refused there with one line for the person and one for the log, for every
  endpoint at once.
- ``admin_name``: the role check each admin handler runs itself.
- ``generator_dropdowns``: the Generator A / B pair of Evaluate and the Survey build form.
- ``gpu``: ZeroGPU's ``@spaces.GPU(duration=...)`` for handlers that run the model (a no-op
  elsewhere).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import re
import uuid

import gradio as gr

from dreamshot.errors import DreamShotError
from dreamshot.models import wait_for_imports
from dreamshot.safety import NOT_AN_IMAGE, input_message, redact

log = logging.getLogger("dreamshot.ui")


def _to_gr_error(exc: BaseException, handler: str) -> gr.Error:
    if isinstance(exc, gr.Error):
        exc.message = redact(str(exc.message))
        exc.print_exception = False
        return exc
    bad_file = None if isinstance(exc, DreamShotError) else input_message(exc)
    if isinstance(exc, DreamShotError) or bad_file:
        message = bad_file or redact(str(exc))
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


# ---- inputs no component can take ------------------------------------------------------------------
_FILE_MODELS: dict[type, bool] = {}
_INDEX = re.compile(r"input component at index (\d+)")


def _label(components, index: int | None) -> str:
    if index is None or not 0 <= index < len(components):
        return "An input"
    label = getattr(components[index], "label", None)
    return str(label) if label else f"Input {index + 1}"


def _takes_files(component) -> bool:
    """Whether ``component``'s value may hold files (its data model mentions FileData)."""
    model = getattr(component, "data_model", None)
    if model is None:
        return False
    if model not in _FILE_MODELS:
        try:
            _FILE_MODELS[model] = "FileData" in json.dumps(model.model_json_schema())
        except Exception:   # pragma: no cover - an unusual model: treat it as taking files
            _FILE_MODELS[model] = True
    return _FILE_MODELS[model]


def _has_file(value, depth: int = 0) -> bool:
    if depth > 20:
        return True
    if isinstance(value, dict):
        meta = value.get("meta")
        if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
            return True
        return any(_has_file(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_file(v, depth + 1) for v in value)
    return False


def _refuse_stray_files(components, values) -> None:
    """A file sent to a component that takes none (a text box, a number, ...) would still be fetched
    into gradio's cache (a URL is downloaded) before the component refused it: refuse it first."""
    for i, (component, value) in enumerate(zip(components, values)):
        if not _takes_files(component) and _has_file(value):
            raise gr.Error(f"{_label(components, i)} takes no file.", print_exception=False)


def _refuse_non_finite(components, values) -> None:
    """NaN or infinity passes gradio's number and slider bounds (JSON carries both): refuse it."""
    for i, (component, value) in enumerate(zip(components, values)):
        if isinstance(component, (gr.Number, gr.Slider)) and isinstance(value, float) and not math.isfinite(value):
            raise gr.Error(f"{_label(components, i)} must be a finite number (got {value}).", print_exception=False)


def _refusal(components, values, exc: BaseException) -> str:
    """The one-line message for an input that failed gradio's preprocessing."""
    match = _INDEX.search(str(exc))
    index = int(match.group(1)) if match else None
    label = _label(components, index)
    cause = exc.__cause__ or exc
    known = input_message(cause)
    if known:
        return f"{label}: {known[0].lower()}{known[1:]}"
    component = components[index] if index is not None and index < len(components) else None
    value = values[index] if index is not None and index < len(values) else None
    shown = redact(repr(value))[:60]
    if isinstance(component, (gr.Number, gr.Slider)):
        return f"{label} must be a number (got {shown})."
    if isinstance(component, (gr.Image, gr.ImageEditor)) and isinstance(cause, (OSError, ValueError)):
        return f"{label}: {NOT_AN_IMAGE[0].lower()}{NOT_AN_IMAGE[1:]}"
    if index is None:   # not one component's value: e.g. the wrong number of inputs
        first = redact(str(exc).strip().splitlines()[0][:200]) if str(exc).strip() else type(exc).__name__
        return f"The request's inputs cannot be used: {first}"
    return f"{label} cannot take {shown} ({type(cause).__name__})."


class StudioBlocks(gr.Blocks):
    """``gr.Blocks`` whose inputs are refused with one clear line when no component can take them
    (see the module docstring)."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "?"
        try:
            _refuse_stray_files(block_fn.inputs, inputs)
            values = await super().preprocess_data(block_fn, inputs, state, explicit_call)
            _refuse_non_finite(block_fn.inputs, values)
            return values
        except gr.Error as exc:
            exc.print_exception = False
            log.info("refused input of %s: %s", name, redact(str(exc.message)))
            raise
        except Exception as exc:
            message = _refusal(block_fn.inputs, inputs, exc)
            log.info("refused input of %s: %s", name, message)
            raise gr.Error(message, print_exception=False) from None

