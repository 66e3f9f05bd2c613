"""Generate tab: layout and wiring only. What each button does is a ``GenerateHandlers`` method
(``handlers.py``, no gradio); every action is an API endpoint:

    /generate  /compare  /stop  /alpha_sweep  /storyboard  /read_png  /read_parameters
    /list_loras  /upload_lora  /control_preview

/generate, /compare, /alpha_sweep and /storyboard take the form's first 13 values first, in
``GenerateForm`` order: prompt, shot, alpha, use_template, negative_prompt, sampler, steps, cfg,
width, height, seed, num_images, blend; then the endpoint's own inputs (/alpha_sweep: shots, alphas;
/storyboard: text, columns, title, sketches); then the form's later fields (embedding, control,
control_image, control_sketch, control_scale, control_start, control_end, canny_low, canny_high,
control_map), so that callers written for the 13-value form keep working (later inputs have
defaults). /control_preview takes the whole form and returns the control image.
"""

from __future__ import annotations

import inspect
import logging
from types import SimpleNamespace

import gradio as gr

from dreamshot.generate import pngmeta
from dreamshot.generate.handlers import NONE, GenerateForm, GenerateHandlers, Shown  # noqa: F401 (re-exported)
from dreamshot.generate.request import ALPHA_RANGE, MAX_IMAGES, MAX_SIDE, MAX_STEPS, MIN_SIDE
from dreamshot.generate.samplers import DEFAULT_SAMPLER, SAMPLERS
from dreamshot.generate.storyboard import DEFAULT_ALPHAS
from dreamshot.generate.tab_control import control_section
from dreamshot.ui import QUIET, admin_name, gpu, guarded, job_owner


log = logging.getLogger(__name__)
EXAMPLE_BOARD = ("long | a lighthouse on a cliff at dusk\n"
                 "medium | a fisherman mending a net on the pier\n"
                 "close | the fisherman's weathered face, looking at the sea")


def reporter(progress):
    return (lambda fraction, text: progress(fraction, desc=text)) if progress is not None else None


FORM_HEAD = 13   # the form's fields that come before an endpoint's own inputs (the API before #14)

# "Regenerate when α is moved" on every way of moving it, once per move. Gradio 6's slider sends
# `release` on a mouse-up and when its number box loses focus, but nothing for the arrow keys (only
# `input`, once per step while a key is held) or for Enter in the box. So: Enter in the box leaves
# it (one `release`), and letting go of a key on the slider presses the hidden #gen-alpha-apply.
HEAD = """<script>
(() => {
  if (window.__dreamshotAlphaKeys) return;
  window.__dreamshotAlphaKeys = true;
  const MOVES = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "PageUp", "PageDown", "Home", "End"];
  document.addEventListener("keydown", (e) => {
    const box = e.target.closest && e.target.closest("#gen-alpha input[type=number]");
    if (box && e.key === "Enter") { e.preventDefault(); box.blur(); }
  }, true);
  document.addEventListener("keyup", (e) => {
    const range = e.target.closest && e.target.closest("#gen-alpha input[type=range]");
    if (range && MOVES.includes(e.key)) document.getElementById("gen-alpha-apply")?.click();
  }, true);
})();
</script>"""


def form_inputs(form: list, *extra) -> list:
    """Input components of a form event: the form's first FORM_HEAD fields, ``extra``, the rest."""
    return [*form[:FORM_HEAD], *extra, *form[FORM_HEAD:]]


def form_event(method, extra: tuple = (), *, check=None):
    """A gradio function taking the form's first 13 values, then ``extra`` inputs, then the form's
    later fields (``form_inputs`` order), then the request and progress; it calls
    ``check(request)`` (the caller's role), then ``method(GenerateForm, *extra values, owner=...,
    progress=...)``. The signature is spelled out (gradio reads it to inject the request and the
    progress tracker)."""
    fields = GenerateForm.fields()
    head, tail, n = fields[:FORM_HEAD], fields[FORM_HEAD:], len(extra)

    def event(*args):
        *values, request, progress = args
        if check is not None:
            check(request)
        form = GenerateForm(*values[:FORM_HEAD], *values[FORM_HEAD + n:])
        return method(form, *values[FORM_HEAD:FORM_HEAD + n], owner=job_owner(request), progress=reporter(progress))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    # An endpoint's own inputs and the later fields default to None, so API callers may leave them out
    # (an input without a value, e.g. an image, is otherwise required by gradio_client).
    params = [inspect.Parameter(name, kind) for name in head]
    params += [inspect.Parameter(name, kind, default=None) for name in (*extra, *tail)]
    params += [inspect.Parameter("request", kind, default=None, annotation=gr.Request),
               inspect.Parameter("progress", kind, default=gr.Progress())]
    event.__signature__ = inspect.Signature(params)
    event.__annotations__ = {"request": gr.Request}
    event.__name__ = method.__name__
    return event


def shown(result: Shown | None):
    if result is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return result.gallery, result.info, str(result.seed), result.parameters


def _form_section(h: GenerateHandlers):
    with gr.Column(scale=3):
        prompt = gr.Textbox(label="Prompt (caption)", lines=2, elem_id="gen-prompt",
                            placeholder="a woman reading a letter by the window")
        with gr.Row():
            # Choices change as LoRAs are trained: refreshed on page load, by ↻ and after an upload;
            # allow_custom_value lets API callers name a LoRA added since (it is checked).
            shot = gr.Dropdown(choices=h.lora_choices(), value=NONE, label="Shot LoRA", elem_id="gen-shot",
                               scale=3, allow_custom_value=True, min_width=200)
            embedding = gr.Dropdown(choices=h.embedding_choices(), value=NONE, label="Embedding (TI)",
                                    elem_id="gen-embedding", scale=3, allow_custom_value=True, min_width=200)
            refresh = gr.Button("↻", scale=0, min_width=40, elem_id="gen-refresh")
        alpha = gr.Slider(ALPHA_RANGE[0], ALPHA_RANGE[1], value=1.0, step=0.05, label="α (LoRA strength)",
                          elem_id="gen-alpha")
        with gr.Row():
            use_template = gr.Checkbox(value=True, label="Prompt template: a high-quality {shot} picture of {caption}")
            live = gr.Checkbox(value=True, label="Regenerate when α is moved (same seed)", elem_id="gen-live")
            apply = gr.Button("Apply α", visible="hidden", elem_id="gen-alpha-apply")  # pressed by HEAD's keys
        with gr.Accordion("Advanced settings", open=False):
            negative = gr.Textbox(label="Negative prompt", lines=1)
            sampler = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler")
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=16, step=1, label="Steps", elem_id="gen-steps")
                cfg = gr.Slider(1, 30, value=6, step=0.5, label="CFG scale")
            with gr.Row():
                width = gr.Slider(MIN_SIDE, MAX_SIDE, value=512, step=8, label="Width", elem_id="gen-width")
                height = gr.Slider(MIN_SIDE, MAX_SIDE, value=512, step=8, label="Height", elem_id="gen-height")
            with gr.Row():
                seed = gr.Textbox(value="-1", label="Seed (-1 = random)", elem_id="gen-seed", max_lines=1)
                num_images = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Number of images")
            blend = gr.Textbox(label="Blend several LoRAs (overrides shot + α)", placeholder="close=0.6, medium=0.4")
        with gr.Row():
            go = gr.Button("Generate", variant="primary", elem_id="gen-go")
            compare = gr.Button("Compare with base", elem_id="gen-compare")
            stop = gr.Button("Stop", variant="stop", elem_id="gen-stop")
    form = [prompt, shot, alpha, use_template, negative, sampler, steps, cfg, width, height, seed, num_images, blend,
            embedding]
    return SimpleNamespace(form=form, prompt=prompt, shot=shot, alpha=alpha, live=live, apply=apply, seed=seed,
                           refresh=refresh, go=go, compare=compare, stop=stop, embedding=embedding)


def _results_section():
    with gr.Column(scale=4):
        gallery = gr.Gallery(label="Images (download keeps the settings)", columns=2, height="auto",
                             format="png", elem_id="gen-gallery", preview=False)
        info = gr.Markdown(elem_id="gen-info")
        with gr.Row():
            used_seed = gr.Textbox(value="", label="Seed used", interactive=False, max_lines=1,
                                   elem_id="gen-used-seed", scale=3)   # empty until an image exists
            reuse = gr.Button("♻ Reuse this seed", scale=1, elem_id="gen-reuse")
        params = gr.Textbox(label="Settings of the first image (A1111 text)", lines=3, interactive=False,
                            elem_id="gen-params")
    return SimpleNamespace(gallery=gallery, info=info, used_seed=used_seed, reuse=reuse, params=params,
                           outputs=[gallery, info, used_seed, params])


def _sweep_section(h: GenerateHandlers):
    with gr.Accordion("α sweep: shot types × α (paper Figure 3)", open=False):
        with gr.Row():
            shots = gr.Dropdown(choices=h.lora_choices()[1:], multiselect=True, allow_custom_value=True,
                                label="Shot LoRAs (rows; empty = every shot type)", elem_id="sweep-shots")
            alphas = gr.Textbox(value=", ".join(pngmeta.format_number(a) for a in DEFAULT_ALPHAS),
                                label="α values (columns)", elem_id="sweep-alphas")
        go = gr.Button("Make α sweep", elem_id="sweep-go")
        image = gr.Image(label="α sweep", format="png", type="filepath", interactive=False, elem_id="sweep-image")
        file = gr.File(label="Download the grid", elem_id="sweep-file")
    return SimpleNamespace(shots=shots, alphas=alphas, go=go, image=image, file=file)


def _board_section():
    with gr.Accordion("Storyboard", open=False):
        text = gr.Textbox(label="One panel per line: shot | description [| sketch file]", lines=5,
                          value=EXAMPLE_BOARD, elem_id="board-text")
        with gr.Row():
            columns = gr.Slider(1, 6, value=3, step=1, label="Columns")
            title = gr.Textbox(label="Title", value="")
            sketches = gr.File(label="Panel sketches (scribble ControlNet; name one in a panel's third column)",
                               file_count="multiple", file_types=["image"], elem_id="board-sketches")
        go = gr.Button("Make storyboard", elem_id="board-go")
        image = gr.Image(label="Contact sheet", format="png", type="filepath", interactive=False, elem_id="board-image")
        files = gr.File(label="Download (PNG and PDF)", file_count="multiple", elem_id="board-files")
    return SimpleNamespace(text=text, columns=columns, title=title, sketches=sketches, go=go, image=image, files=files)


def _read_section():
    with gr.Accordion("Read settings from PNG", open=False):
        with gr.Row():
            png = gr.File(label="Drop a generated PNG (or an AUTOMATIC1111 PNG/JPEG)",
                          file_types=[".png", ".jpg", ".jpeg", ".webp"], elem_id="read-png")
            pasted = gr.Textbox(label="…or paste A1111 settings text", lines=4, elem_id="read-text")
        restore = gr.Button("Restore settings from text", elem_id="read-go")
        note = gr.Markdown(elem_id="read-note")
    return SimpleNamespace(png=png, pasted=pasted, restore=restore, note=note)


def _upload_section(h: GenerateHandlers):
    with gr.Accordion("Library: LoRAs and embeddings (adding: admins)", open=False):
        gr.Markdown("A `.safetensors` LoRA (diffusers or kohya/A1111 format) or textual-inversion embedding "
                    "(A1111 `emb_params` or diffusers `learned_embeds`) for this base model; the kind is read "
                    "from the file. Pickled `.ckpt/.pt/.bin` files are refused (they can run code).")
        with gr.Row():
            file = gr.File(label="LoRA or embedding file (.safetensors)", elem_id="lora-file")
            with gr.Column():
                name = gr.Textbox(label="Name", elem_id="lora-name")
                shot = gr.Dropdown(choices=h.shot_types(), value=NONE, label="Shot type it teaches")
                token = gr.Textbox(label="Embedding token (empty: the file's, else <name>)", elem_id="lora-token",
                                   max_lines=1)
        go = gr.Button("Add to the library", elem_id="lora-go")
        note = gr.Markdown(elem_id="lora-note")
        table = gr.Dataframe(headers=list(h.LIBRARY_COLUMNS), value=h.library_rows(), interactive=False,
                             label="Library", elem_id="lora-library", wrap=True)
    return SimpleNamespace(file=file, name=name, shot=shot, token=token, go=go, note=note, table=table)


def build(studio, demo: gr.Blocks) -> None:
    h = GenerateHandlers(studio)
    gr.Markdown("Generate with a shot LoRA at strength **α** (0 = base model) and/or a textual-inversion "
                "embedding (its token stands where the shot words stand). Settings are stored in "
                "every PNG (AUTOMATIC1111 format): drop one into *Read settings from PNG* to restore them.")
    with gr.Row():
        f = _form_section(h)
        r = _results_section()
    f.control = control_section()            # full width under the form; its fields end the form
    f.form += f.control.fields
    sweep, board, read, upload = _sweep_section(h), _board_section(), _read_section(), _upload_section(h)
    _wire_generation(h, f, r, sweep, board)
    _wire_settings(studio, h, f, r, sweep, read, upload, demo)


def _wire_generation(h, f, r, sweep, board) -> None:
    member = lambda request: admin_name(h.studio, request)  # noqa: E731  generation is for studio members
    run = lambda method, extra=(), seconds=120: guarded(gpu(seconds)(form_event(method, extra, check=member)))  # noqa: E731
    show = lambda method: lambda *a, **k: shown(method(*a, **k))  # noqa: E731
    grid = lambda *a, **k: (lambda path, info: (path, path, info))(*h.sweep(*a, **k))  # noqa: E731
    generate = run(show(h.generate))
    last_seed = gr.State(None)   # the seed of the last image shown; None until something was generated
    # Progress, and the mark of a refusal (its message is a toast), on the gallery only: not on each field.
    on = dict(show_progress_on=r.gallery)
    images = [f.go.click(generate, f.form, r.outputs, api_name="generate", **on),
              f.prompt.submit(generate, f.form, r.outputs, api_visibility="private", **on),
              f.compare.click(run(show(h.compare)), f.form, r.outputs, api_name="compare", **on),
              # α dragged (mouse-up), typed (Enter or leaving the box) or keyed (HEAD presses f.apply):
              # regenerate only when an image was generated before.
              *[trigger(run(show(h.live_alpha), ("live", "last_seed")), form_inputs(f.form, f.live, last_seed),
                        r.outputs, api_visibility="private", trigger_mode="always_last", **on)
                for trigger in (f.alpha.release, f.apply.click)]]
    for event in images:
        event.success(lambda seed: seed, r.used_seed, last_seed, api_visibility="private", queue=False)
    others = [sweep.go.click(run(grid, ("shots", "alphas"), 300), form_inputs(f.form, sweep.shots, sweep.alphas),
                             [sweep.image, sweep.file, r.info], api_name="alpha_sweep"),
              board.go.click(run(h.storyboard, ("text", "columns", "title", "sketches"), 300),
                             form_inputs(f.form, board.text, board.columns, board.title, board.sketches),
                             [board.image, board.files, r.info],
                             api_name="storyboard")]
    f.stop.click(_stop_fn(h), None, r.info, api_name="stop", concurrency_limit=None, cancels=images + others)
    f.control.show.click(run(h.control_preview), f.form, f.control.preview, api_name="control_preview")
    # A reference just uploaded: checked before gradio opens it (preprocess=False), so a file that is
    # not a readable image is dropped with a warning (one log line, no field marked as failed).
    f.control.image.upload(_reference_check(h), f.control.image, f.control.image, preprocess=False,
                           api_visibility="private").success(
        run(_preview_if_any(h)), f.form, f.control.preview, api_visibility="private")


def _reference_check(h: GenerateHandlers):
    @guarded
    def check(upload, request: gr.Request):
        admin_name(h.studio, request)
        problem = h.reference_problem(upload.get("path") if isinstance(upload, dict) else upload)
        if not problem:
            return gr.skip()
        log.info("refused a ControlNet reference: %s", problem)
        gr.Warning(problem)
        return None
    return check


def _preview_if_any(h: GenerateHandlers):
    def preview_if_any(form: GenerateForm, owner: str = "api", progress=None):
        """The control image of a reference that was kept (nothing when it was dropped)."""
        return gr.skip() if form.control_image in (None, "") else h.control_preview(form, owner, progress)
    return preview_if_any


def _stop_fn(h: GenerateHandlers):
    @guarded
    def stop(request: gr.Request):
        admin_name(h.studio, request)
        return h.stop(job_owner(request))
    return stop


def _wire_settings(studio, h, f, r, sweep, read, upload, demo) -> None:
    @guarded
    def refresh_loras(request: gr.Request):
        admin_name(studio, request)
        choices = h.lora_choices()
        return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices[1:])

    def restored(form: GenerateForm, note: str):
        return form_inputs(form.values(), note)

    def read_png(file, request: gr.Request):
        admin_name(studio, request)
        return restored(*h.read_png(getattr(file, "name", file)))

    def read_text(text, request: gr.Request):
        admin_name(studio, request)
        return restored(*h.read_text(text))

    @guarded
    def refresh_embeddings(request: gr.Request):
        admin_name(studio, request)
        return gr.Dropdown(choices=h.embedding_choices()), h.library_rows()

    def do_upload(file, name, shot_type, token=None, request: gr.Request = None):   # token: optional (API)
        admin_name(studio, request)
        note = h.upload(getattr(file, "name", file), name, shot_type, token)
        return (note, *refresh_loras(request))

    r.reuse.click(lambda s: s or "-1", r.used_seed, f.seed, api_visibility="private", queue=False, **QUIET)
    # These fill form fields: a refusal (a PNG without settings, a bad upload) is one toast (QUIET).
    f.refresh.click(refresh_loras, None, [f.shot, sweep.shots], api_name="list_loras", concurrency_limit=None,
                    **QUIET)
    restored_outputs = form_inputs(f.form, read.note)
    read.png.upload(guarded(read_png), read.png, restored_outputs, api_name="read_png", **QUIET)
    read.restore.click(guarded(read_text), read.pasted, restored_outputs, api_name="read_parameters", **QUIET)
    upload.go.click(guarded(do_upload), [upload.file, upload.name, upload.shot, upload.token],
                    [upload.note, f.shot, sweep.shots], api_name="upload_lora", **QUIET).success(
        refresh_embeddings, None, [f.embedding, upload.table], api_visibility="private", **QUIET)
    f.refresh.click(refresh_embeddings, None, [f.embedding, upload.table], api_name="list_embeddings",
                    concurrency_limit=None, **QUIET)
    demo.load(refresh_loras, None, [f.shot, sweep.shots], api_visibility="private", **QUIET)  # trained meanwhile
    demo.load(refresh_embeddings, None, [f.embedding, upload.table], api_visibility="private", **QUIET)
