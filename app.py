"""DreamShot studio: label film frames, caption them, train one LoRA per shot type, generate,
survey and evaluate - one Gradio app.

    pip install -r requirements.txt
    python app.py [--data DIR] [--model ID|DIR|demo] [--dtype auto|float16|bfloat16|float32] [--host H] [--port P] [--share] [--survey-only]

Importing this module builds ``demo`` (settings from the environment) without launching it and
without loading any model. Everything a setup can get wrong (flags, data folder, database, and the
port when run as a script) is checked before gradio and the tabs are imported, so it is refused in
a moment with one line on stderr and exit status 1.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time

from dreamshot import __version__, settings as config
from dreamshot.access import exposure_warning
from dreamshot.errors import DreamShotError
from dreamshot.precision import precision_setting
from dreamshot.safety import configure_logging, redact_stderr
from dreamshot.studio import Studio

HELP = "DreamShot studio: label, caption, train, generate, survey and evaluate cinema shot types."
ENVIRONMENT_HELP = """environment only (see README, Settings):
  DREAMSHOT_TRUSTED_PROXIES (the survey's caps and the login throttle), DREAMSHOT_SURVEY_MAX_NEW_PER_HOUR,
  DREAMSHOT_SURVEY_MAX_ANSWERS_PER_MIN, DREAMSHOT_SURVEY_REPO, DREAMSHOT_SURVEY_HF_TOKEN,
  DREAMSHOT_SURVEY_MIRROR_MINUTES, DREAMSHOT_MOTION_ADAPTER, DREAMSHOT_CONTROLNET_CANNY, _DEPTH, _SCRIBBLE,
  DREAMSHOT_DEPTH_MODEL, DREAMSHOT_TRAIN_PROCESSES, HF_TOKEN, HF_HUB_OFFLINE, HF_ENDPOINT"""


def _open_studio() -> Studio:
    """Settings, the port (when run as a script), the data folder and the database: all checked here,
    before the UI's imports, which take seconds."""
    configure_logging()
    as_script = __name__ == "__main__"
    # Flags only when run as a script; on import (tests, Spaces' loaders) the environment decides.
    settings = config.parse(sys.argv[1:] if as_script else [], server=True, description=HELP,
                            epilog=ENVIRONMENT_HELP)
    warning = exposure_warning(settings)   # an open studio is said first, whatever follows (also in the banner)
    if warning:
        print(f"dreamshot: warning: {warning}", file=sys.stderr, flush=True)
    if as_script:
        settings.check_port()  # a second studio on a busy port stops here, before it starts anything
    studio = Studio.open(settings)
    if not settings.survey_only:
        studio.model_choice()  # decides the demo banner, part of the first paint (Hub probe: 3 s at most)
    return studio


try:
    studio = _open_studio()
except DreamShotError as exc:
    if __name__ != "__main__":
        raise
    sys.exit(f"dreamshot: {exc}")

# Gradio's cache (uploads, pictures shown on pages) of this process alone: it is swept (DELETE_CACHE) and
# emptied when the server stops, which must not take the files of another server on this machine (a
# survey-only server beside the studio) whose pictures have the same content and so the same names.
if "GRADIO_TEMP_DIR" not in os.environ:   # (a folder is made only when none is set)
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="dreamshot-gradio-")

# The UI only now: gradio and the tab modules take seconds to import, and a wrong setup was refused above.
import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder as gradio_upload_folder  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from dreamshot.models import import_libraries  # noqa: E402
from dreamshot.ui import StudioBlocks  # noqa: E402
from dreamshot.webguard import StudioGuard  # noqa: E402
from dreamshot.evaluate import tab as evaluate_tab  # noqa: E402
from dreamshot.generate import tab as generate_tab  # noqa: E402
from dreamshot.survey import tab as survey_tab  # noqa: E402
from dreamshot.video import tab as video_tab  # noqa: E402
from labeling.captions import tab as captions_tab  # noqa: E402
from labeling import tab as label_tab  # noqa: E402
from training import jobs as training_jobs  # noqa: E402
from training import tab as train_tab  # noqa: E402

TITLE = "DreamShot studio"
log = logging.getLogger("dreamshot.app")
CSS = """
#demo-banner { border-left: 4px solid #e8a33d; padding-left: .75em }
/* Tables: headers wrap between words, never inside one ("ru n", "al ph a"); a wide table scrolls
   sideways inside its own box instead of pushing the page wider. */
.gradio-container table th, .gradio-container table th * {
  word-break: normal !important; overflow-wrap: normal !important; hyphens: none; white-space: nowrap;
}
.gradio-container .table-wrap, .gradio-container .table-container { max-width: 100%; overflow-x: auto; }
"""

TAB_MODULES = [label_tab, captions_tab, train_tab, generate_tab, survey_tab, evaluate_tab, video_tab]
STUDIO_TABS = [  # (tab title, builder); a --survey-only server builds the Survey tab alone
    ("Label", label_tab.build),
    ("Captions", captions_tab.build),
    ("Train", train_tab.build),
    ("Generate", generate_tab.build),
    ("Survey", survey_tab.build),
    ("Evaluate", evaluate_tab.build),
    ("Video", video_tab.build),
]


def public_endpoints() -> set[str]:
    """Endpoints a participant (nobody logged in) may call: /status and what each tab module lists
    in PUBLIC_API. Every other endpoint checks for a studio member itself (tests/test_access.py)."""
    return {"status"}.union(*(getattr(m, "PUBLIC_API", ()) for m in TAB_MODULES))


# Gradio's cache (uploads, and the images and files shown on pages; GRADIO_TEMP_DIR above) is swept every
# hour of what is over a day old, and emptied when the server stops (studio data lives in the data folder).
DELETE_CACHE = (3600, 86400)


def banner_markdown(studio: Studio) -> str | None:
    """The banner: an open studio's warning (``access.exposure_warning``), then the model's note."""
    warning = exposure_warning(studio.settings)
    parts = ([f"**Warning:** {warning}"] if warning else []) + [studio.model_choice().banner_markdown() or ""]
    return "\n\n".join(p for p in parts if p) or None


def build_app(studio: Studio) -> gr.Blocks:
    with StudioBlocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        participants = studio.settings.survey_only
        if participants:  # one short line: a phone held sideways has ~390 px for the pictures and questions
            gr.Markdown(f"**{TITLE}** · a short blind survey: compare two pictures, answer three questions.")
        else:
            gr.Markdown(studio_header(studio))   # fixed at build time: it never moves the tabs
        # Known before the page is built (studio.model_choice), so it is part of the first paint and
        # never pushes the tabs down; participants generate nothing and get no banner.
        banner_text = None if participants else banner_markdown(studio)
        banner = gr.Markdown(banner_text or "", visible=bool(banner_text), elem_id="demo-banner")
        if participants:   # one page, no tab bar: on a phone held sideways every line of height counts
            with gr.Column(elem_id="survey-only"):
                survey_tab.build(studio, demo)
        else:
            with gr.Tabs():
                for title, build in STUDIO_TABS:
                    with gr.Tab(title, id=title.lower()):
                        build(studio, demo)

        def show_banner():
            # Only a change since the page was built reaches the page (a model that failed to load
            # fell back to the demo model); an unchanged banner is not sent again.
            text = banner_markdown(studio)
            if text == banner_text:
                return gr.skip()
            return gr.Markdown(value=text or "", visible=bool(text))

        def status(request: gr.Request) -> dict:
            """Which base model the studio uses (demo or real) and the caller's role."""
            model = studio.model_status()
            return {
                "version": __version__,
                "model_requested": model.requested,
                "model_source": model.source if not model.is_demo else "built-in demo model",
                "is_demo_model": model.is_demo,
                "dtype": studio.settings.dtype,                 # the --dtype setting
                "precision": studio.precision_text(),           # e.g. "float16 on cuda (auto)" once loaded
                "demo_reason": model.reason,
                "model_loaded": studio.models.loaded,
                "schema_version": studio.db.schema_version(),
                "role": studio.access.role(getattr(request, "username", None)),
                "survey_only": studio.settings.survey_only,
            }

        if not participants:   # a survey-only page never shows the banner: nothing to refresh
            demo.load(show_banner, outputs=banner, api_visibility="private", show_progress="hidden")
        gr.api(status, api_name="status")
    return demo


def studio_header(studio: Studio) -> str:
    """The page's title and one line under it, with the weights' precision setting (--dtype; /status
    says what is in use once the model is loaded)."""
    return (f"# {TITLE}\nTeach Stable Diffusion 1.5 cinema shot types, one LoRA per shot type. "
            f"<small>Weights: {precision_setting(studio.settings.dtype)}</small>")


def launch_kwargs(studio: Studio) -> dict:
    # Uvicorn (under Gradio) believes X-Forwarded-For from loopback peers by default, which would let
    # a local client pick any address; only DREAMSHOT_TRUSTED_PROXIES decides (dreamshot/client_address.py).
    # Uvicorn reads this when the server starts; an explicit FORWARDED_ALLOW_IPS is kept.
    os.environ.setdefault("FORWARDED_ALLOW_IPS", "")
    s = studio.settings
    data = s.data_dir.resolve()
    return dict(
        server_name=s.host,
        server_port=s.port,
        share=s.share,
        auth=studio.access.check_login if studio.access.login_required else None,
        auth_message="DreamShot studio: log in with your name and the studio password.",
        # Nothing under the data folder (database, frames, models, LoRAs) is ever served directly;
        # tabs hand images to Gradio as pixels, which it serves from its own cache.
        blocked_paths=[str(data), str(s.models_dir.resolve())],
        allowed_paths=[],
        max_file_size="1gb",
        # dreamshot/webguard.py: no uploads on a survey-only server, a bound per upload request, the
        # client address for the login throttle, one log line for a request that fails in gradio.
        app_kwargs={"middleware": [Middleware(StudioGuard, survey_only=s.survey_only,
                                              upload_dir=str(gradio_upload_folder()))]},
        # gr.Error texts (our user-facing messages, see dreamshot.ui.guarded) are always shown;
        # any other exception's text never reaches the browser.
        show_error=False,
        css=CSS,
        # Tab modules may define HEAD (e.g. keyboard shortcuts); Gradio 6 takes it at launch().
        head="\n".join(getattr(m, "HEAD", "") for m in TAB_MODULES),
        footer_links=["api", "gradio"],
    )


try:
    demo = build_app(studio)
except DreamShotError as exc:
    if __name__ != "__main__":
        raise
    sys.exit(f"dreamshot: {exc}")


def warm_up() -> None:
    """Resolve and load the base model in the background, so the page is served at once and the
    first generation does not wait for the weights."""
    try:
        # First the libraries, under the process-wide import lock: a request arriving meanwhile
        # waits for them (dreamshot.ui.guarded) instead of seeing a half-imported module.
        import_libraries()
        import diffusers
        import huggingface_hub
        import transformers

        # Loading bars ("Loading pipeline components", "Writing model shards") say nothing in a server's
        # log; downloads (huggingface_hub's bars) still show.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()   # (transformers' call turned these off too)
        status = studio.model_status()
        log.info("base model: %s%s", status.source, " (untrained demo model)" if status.is_demo else "")
        studio.models.pipeline()
        log.info("base model loaded")
    except Exception:
        log.exception("could not preload the base model; it will be retried on first use")


def serve(app, kwargs: dict, patience_s: float = 60.0) -> None:
    """Launch ``app`` without blocking. Gradio's own start-up check gives the page 3 s to answer a
    HEAD request and raises if it does not; on a busy machine (the warm-up thread loading weights,
    another process training) the server is up but slower than that. Everything launch() skips
    after that check matters only to share links and notebooks (the check is not made when sharing),
    so the page is given ``patience_s`` more and served if it answers; a server that never answers
    is a DreamShotError."""
    import httpx

    try:
        # quiet: gradio's own lines name launch() arguments ("set `share=True` in `launch()`"); ours name flags
        app.queue(default_concurrency_limit=2).launch(**{"quiet": True, **kwargs}, prevent_thread_lock=True)
    except ValueError as exc:
        if "localhost is not accessible" not in str(exc):
            raise
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            try:
                if httpx.head(app.local_url, timeout=10).status_code < 400:
                    log.warning("the page took over 3 s to answer its first request (a busy machine?)")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        app.close()
        raise DreamShotError(
            f"the server started but did not answer on {app.local_url} within {patience_s:.0f} s. The "
            "machine may be overloaded (start it again), or a proxy captures local addresses: set "
            "NO_PROXY=localhost,127.0.0.1.") from None


def main() -> None:
    configure_logging([studio.settings.admin_password or ""])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up requests, one INFO line each
    redact_stderr()  # what gradio or a library prints itself is masked too
    if not studio.settings.survey_only:
        # Queued training runs continue after a restart without anyone opening the Train tab.
        training_jobs.service(studio).start()
    if not studio.settings.survey_only:  # participants never need the model: their pictures are stored
        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    s = studio.settings
    try:
        serve(demo, launch_kwargs(studio))
    except OSError:  # the port was taken since check_port: one line, no traceback
        sys.exit(f"dreamshot: cannot serve on {s.host}:{s.port}: the port is in use. "
                 "Choose another with --port or DREAMSHOT_PORT.")
    except DreamShotError as exc:
        sys.exit(f"dreamshot: {exc}")
    if s.share:
        note = f"; public link {demo.share_url}" if demo.share_url else "; no public link could be made (see above)"
    else:
        note = "  (--share or DREAMSHOT_SHARE=1 for a public gradio.live link)"
    print(f"* DreamShot studio running on {demo.local_url}{note}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
