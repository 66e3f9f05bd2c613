"""The studio's HTTP guard: one ASGI middleware on the FastAPI app that gradio builds (``app.py`` hands
it over through ``launch(app_kwargs={"middleware": ...})``). No gradio here.

- **Who is asking**: each request's client address (``dreamshot.client_address``: the right-most
  untrusted ``X-Forwarded-For`` hop behind ``DREAMSHOT_TRUSTED_PROXIES``) is put where the login
  check reads it (``access.LOGIN_ADDRESS``): Gradio's ``auth=`` callback gets only name and password.
- **Uploads** (gradio's routes that store a request's files: ``/gradio_api/upload``,
  ``/gradio_api/process_recording``): refused outright on a ``--survey-only`` server (the participant
  page uploads nothing, and it has no login); elsewhere gradio's own login check guards them, each
  request is bounded (``max_request_bytes`` in all, on top of gradio's per-file ``max_file_size``),
  and refused while the upload folder's disk has less than ``min_free_bytes`` left. Gradio removes
  what was uploaded (``Blocks(delete_cache=...)``, set in ``app.py``).
- **Failures**: an exception that escapes a route (e.g. gradio's ``/call/v2/<name>`` with an empty
  body) becomes one log line and a 500 with a reference id, not a ~60-line traceback per request
  that a stranger could repeat to flood the log.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid

from starlette.formparsers import MultiPartException
from starlette.routing import get_route_path

from dreamshot.access import LOGIN_ADDRESS
from dreamshot.client_address import scope_ip
from dreamshot.safety import redact

log = logging.getLogger("dreamshot.web")

API_PREFIX = "/gradio_api"
FILE_ROUTES = (f"{API_PREFIX}/upload", f"{API_PREFIX}/process_recording")
LOGIN_ROUTE = "/login"
MAX_REQUEST_BYTES = 2 * 1024 ** 3      # everything one upload request carries (files: 1 GB each)
MIN_FREE_BYTES = 1024 ** 3             # disk left beside the upload folder after an upload


def _json(status: int, detail: str) -> tuple[dict, dict]:
    body = json.dumps({"detail": detail, "error": detail}).encode()
    return ({"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
            {"type": "http.response.body", "body": body})


class StudioGuard:
    """Pure ASGI middleware (see the module docstring). ``upload_dir``: where gradio stores uploads."""

    def __init__(self, app, *, survey_only: bool = False, upload_dir: str | None = None,
                 max_request_bytes: int = MAX_REQUEST_BYTES, min_free_bytes: int = MIN_FREE_BYTES):
        self.app = app
        self.survey_only = survey_only
        self.upload_dir = upload_dir
        self.max_request_bytes = max_request_bytes
        self.min_free_bytes = min_free_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = get_route_path(scope).rstrip("/")
        # gradio calls the auth= check only from its /login route: the address is worked out for that one
        token = LOGIN_ADDRESS.set(scope_ip(scope)) if path == LOGIN_ROUTE else None
        try:
            if path in FILE_ROUTES:
                refusal = self._upload_refusal(scope)
                if refusal is not None:
                    await self._send(send, *refusal)
                    return
                receive = self._bounded(receive)
            await self._guarded(scope, receive, send)
        finally:
            if token is not None:
                LOGIN_ADDRESS.reset(token)

    # ---- uploads -------------------------------------------------------------------------------------
    def _upload_refusal(self, scope) -> tuple[int, str] | None:
        """(status, message) when this upload request is refused before it is read, else None."""
        if self.survey_only:
            log.info("refused an upload from %s: this is a survey-only server", scope_ip(scope))
            return 403, "This server takes no uploads: it serves the survey only."
        length = _content_length(scope)
        if length is not None and length > self.max_request_bytes:
            log.info("refused an upload of %d bytes from %s (at most %d per request)", length, scope_ip(scope),
                     self.max_request_bytes)
            return 413, f"Upload too large: at most {self.max_request_bytes // 2**20} MB per request."
        if self.upload_dir and self.min_free_bytes:
            try:
                free = shutil.disk_usage(self.upload_dir).free
            except OSError:
                free = None   # the folder does not exist yet: gradio creates it
            if free is not None and free - (length or 0) < self.min_free_bytes:
                log.warning("refused an upload: %d MB left on the upload folder's disk", free // 2**20)
                return 507, "The server's disk is nearly full: the upload was refused."
        return None

    def _bounded(self, receive):
        """``receive`` that stops a body longer than ``max_request_bytes`` with gradio's own upload
        error (its parser then deletes the partial files and answers 413)."""
        seen = 0
        limit = self.max_request_bytes

        async def bounded():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise MultiPartException(f"Upload exceeded the maximum allowed size of {limit} bytes per request.")
            return message
        return bounded

    # ---- failures ------------------------------------------------------------------------------------
    async def _guarded(self, scope, receive, send) -> None:
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # one line per failed request; the traceback only at DEBUG level
            ref = uuid.uuid4().hex[:8]
            first = redact(str(exc).strip().splitlines()[0][:200]) if str(exc).strip() else ""
            log.error("request failed ref=%s: %s %s: %s%s", ref, scope.get("method"), get_route_path(scope),
                      type(exc).__name__, f": {first}" if first else "")
            log.debug("request failed ref=%s", ref, exc_info=exc)
            if not started:
                await self._send(send, 500, f"Internal error (ref {ref}). The server log has the details.")

    @staticmethod
    async def _send(send, status: int, detail: str) -> None:
        start, body = _json(status, detail)
        await send(start)
        await send(body)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers") or []:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
