"""Generate tab: prompt + shot LoRA + α, advanced settings folded away, compare with base, α sweep,
storyboard, read settings back from a PNG, LoRA upload (admins). Every action is an API endpoint:

    /generate  /compare  /stop  /alpha_sweep  /storyboard  /read_png  /read_parameters
    /list_loras  /upload_lora

The logic lives in ``dreamshot.generation`` / ``dreamshot.storyboard``; this file only maps form
values to a ``GenerationRequest`` and results to components. Images reach the browser as PNG files
written to a temp folder outside the data folder, so their A1111 settings survive the download.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import gradio as gr

from dreamshot.generate import pngmeta
from dreamshot.errors import InvalidInput
from dreamshot.generate.service import (
    ALPHA_RANGE, DEFAULT_SAMPLER, MAX_IMAGES, MAX_SIDE, MAX_STEPS, MIN_SIDE, SAMPLERS, GenerationRequest, parse_blend, service,
)
from dreamshot.generate.storyboard import DEFAULT_ALPHAS, alpha_sweep, save_storyboard, storyboard
from dreamshot.ui import admin_name, guarded

log = logging.getLogger(__name__)

try:  # ZeroGPU: a GPU is attached only while a decorated function runs; a no-op elsewhere.
    import spaces

    def gpu(duration: int = 60):
        return spaces.GPU(duration=duration)
except Exception:  # pragma: no cover - spaces missing or broken
    def gpu(duration: int = 60):
        return lambda fn: fn

NONE = "none"
FORM = ["prompt", "shot", "alpha", "use_template", "negative_prompt", "sampler", "steps", "cfg",
        "width", "height", "seed", "num_images", "blend"]
EXAMPLE_BOARD = ("long | a lighthouse on a cliff at dusk\n"
                 "medium | a fisherman mending a net on the pier\n"
                 "close | the fisherman's weathered face, looking at the sea")
KEEP_TEMP_S = 3600


def form_request(values) -> GenerationRequest:
    """Form values (in FORM order) -> GenerationRequest. The blend box is 'name=weight, ...'."""
    data = dict(zip(FORM, values))
    shot = data["shot"] if data["shot"] not in (None, "", NONE) else None
    return GenerationRequest(
        prompt=data["prompt"] or "", shot=shot, alpha=_num(data["alpha"], 1.0, "α"),
        use_template=bool(data["use_template"]), negative_prompt=data["negative_prompt"] or "",
        sampler=data["sampler"] or DEFAULT_SAMPLER, steps=_num(data["steps"], 16, "Steps"),
        cfg=_num(data["cfg"], 6.0, "CFG"), width=_num(data["width"], 512, "Width"),
        height=_num(data["height"], 512, "Height"), seed=_num(data["seed"], -1, "Seed"),
        num_images=_num(data["num_images"], 1, "Number of images"), blend=parse_blend(data["blend"] or ""),
    )


def _form_values(scope: dict) -> list:
    """The FORM fields of a handler's parameters (handlers name their parameters after FORM)."""
    return [scope[name] for name in FORM]


def _num(value, default, label):
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{label} must be a number.") from None
    return int(number) if float(number).is_integer() and isinstance(default, int) else number


def request_form_values(req: GenerationRequest) -> list:
    """GenerationRequest -> form values (FORM order), for 'read settings from PNG'."""
    blend = ", ".join(f"{k}={pngmeta.format_number(v)}" for k, v in (req.blend or {}).items())
    return [req.prompt, req.shot or NONE, req.alpha, req.use_template, req.negative_prompt, req.sampler,
            req.steps, req.cfg, req.width, req.height, req.seed, req.num_images, blend]


class TempImages:
    """PNG files with metadata in a temp folder outside the data folder (the data folder is never
    served); files older than an hour are removed."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="dreamshot-generate-"))

    def write(self, image, parameters: str, stem: str) -> str:
        self._prune()
        folder = Path(tempfile.mkdtemp(dir=self.root))
        return str(pngmeta.save_png(image, folder / f"{stem}.png", parameters))

    def folder(self) -> Path:
        self._prune()
        return Path(tempfile.mkdtemp(dir=self.root))

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_TEMP_S
        for path in self.root.glob("*/*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass


def _shot_choices(svc) -> list:
    choices = [("none (base model)", NONE)]
    for info in svc.loras():
        phrase = svc.shot_phrase(info) if info.shot else None
        label = f"{info.name} · {phrase}" if phrase and phrase != info.name else info.name
        choices.append((f"{label} ({info.origin})", info.name))
    return choices


def build(studio, demo: gr.Blocks) -> None:
    svc = service(studio)
    temp = TempImages()
    taxonomy_names = lambda: svc.taxonomy().names  # noqa: E731

    gr.Markdown("Generate with a shot LoRA at strength **α** (0 = base model). Settings are stored in "
                "every PNG (AUTOMATIC1111 format): drop one into *Read settings from PNG* to restore them.")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt (caption)", lines=2, elem_id="gen-prompt",
                                placeholder="a woman reading a letter by the window")
            with gr.Row():
                # Choices change as LoRAs are trained: refreshed on page load, by ↻ and after an
                # upload; allow_custom_value lets API callers name a LoRA added since (it is checked).
                shot = gr.Dropdown(choices=_shot_choices(svc), value=NONE, label="Shot LoRA", elem_id="gen-shot",
                                   scale=3, allow_custom_value=True)
                refresh = gr.Button("↻", scale=0, min_width=40, elem_id="gen-refresh")
            alpha = gr.Slider(ALPHA_RANGE[0], ALPHA_RANGE[1], value=1.0, step=0.05, label="α (LoRA strength)",
                              elem_id="gen-alpha")
            with gr.Row():
                use_template = gr.Checkbox(value=True, label="Prompt template: a high-quality {shot} picture of {caption}")
                live = gr.Checkbox(value=True, label="Regenerate when α is moved (same seed)", elem_id="gen-live")
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
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="gen-seed")
                    num_images = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Number of images")
                blend = gr.Textbox(label="Blend several LoRAs (overrides shot + α)", placeholder="close=0.6, medium=0.4")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="gen-go")
                compare = gr.Button("Compare with base", elem_id="gen-compare")
                stop = gr.Button("Stop", variant="stop", elem_id="gen-stop")
        with gr.Column(scale=4):
            gallery = gr.Gallery(label="Images (download keeps the settings)", columns=2, height="auto",
                                 format="png", elem_id="gen-gallery", preview=False)
            info = gr.Markdown(elem_id="gen-info")
            with gr.Row():
                used_seed = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="gen-used-seed",
                                      scale=3)
                reuse = gr.Button("♻ Reuse this seed", scale=1, elem_id="gen-reuse")
            params = gr.Textbox(label="Settings of the first image (A1111 text)", lines=3, interactive=False,
                                elem_id="gen-params")
    form = [prompt, shot, alpha, use_template, negative, sampler, steps, cfg, width, height, seed, num_images, blend]

    with gr.Accordion("α sweep: shot types × α (paper Figure 3)", open=False):
        with gr.Row():
            sweep_shots = gr.Dropdown(choices=_shot_choices(svc)[1:], multiselect=True, allow_custom_value=True,
                                      label="Shot LoRAs (rows; empty = every shot type)", elem_id="sweep-shots")
            sweep_alphas = gr.Textbox(value=", ".join(pngmeta.format_number(a) for a in DEFAULT_ALPHAS),
                                      label="α values (columns)", elem_id="sweep-alphas")
        sweep_go = gr.Button("Make α sweep", elem_id="sweep-go")
        sweep_image = gr.Image(label="α sweep", format="png", type="filepath", interactive=False, elem_id="sweep-image")
        sweep_file = gr.File(label="Download the grid", elem_id="sweep-file")

    with gr.Accordion("Storyboard", open=False):
        board_text = gr.Textbox(label="One panel per line: shot | description", lines=5, value=EXAMPLE_BOARD,
                                elem_id="board-text")
        with gr.Row():
            board_columns = gr.Slider(1, 6, value=3, step=1, label="Columns")
            board_title = gr.Textbox(label="Title", value="")
        board_go = gr.Button("Make storyboard", elem_id="board-go")
        board_image = gr.Image(label="Contact sheet", format="png", type="filepath", interactive=False,
                               elem_id="board-image")
        board_files = gr.File(label="Download (PNG and PDF)", file_count="multiple", elem_id="board-files")

    with gr.Accordion("Read settings from PNG", open=False):
        with gr.Row():
            png_in = gr.File(label="Drop a generated PNG (or an AUTOMATIC1111 PNG/JPEG)",
                             file_types=[".png", ".jpg", ".jpeg", ".webp"], elem_id="read-png")
            pasted = gr.Textbox(label="…or paste A1111 settings text", lines=4, elem_id="read-text")
        restore = gr.Button("Restore settings from text", elem_id="read-go")
        read_note = gr.Markdown(elem_id="read-note")

    with gr.Accordion("Add a LoRA (admins)", open=False):
        gr.Markdown("A `.safetensors` LoRA for this base model, diffusers or kohya/A1111 format. "
                    "Pickled `.ckpt/.pt/.bin` files are refused (they can run code).")
        with gr.Row():
            lora_file = gr.File(label="LoRA file (.safetensors)", elem_id="lora-file")
            with gr.Column():
                lora_name = gr.Textbox(label="Name", elem_id="lora-name")
                lora_shot = gr.Dropdown(choices=[NONE, *taxonomy_names()], value=NONE, label="Shot type it teaches")
        lora_go = gr.Button("Add LoRA", elem_id="lora-go")
        lora_note = gr.Markdown(elem_id="lora-note")

    # ---- handlers ------------------------------------------------------------------------------
    def owner(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or "api"

    def reporter(progress):
        return (lambda fraction, text: progress(fraction, desc=text)) if progress is not None else None

    def refresh_loras():
        choices = _shot_choices(svc)
        return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices[1:])

    def show(result, label: str = ""):
        files = [(temp.write(img.image, img.parameters, f"{img.seed}"), f"{label}seed {img.seed}")
                 for img in result.images]
        return files

    def summary(result, extra: str = "") -> str:
        loras = ", ".join(f"{info.name} α={pngmeta.format_number(w)}" for info, w in result.loras) or "base model"
        stopped = " **Stopped early.**" if result.cancelled else ""
        return (f"Seeds {', '.join(map(str, result.seeds))} · {loras} · {result.seconds:.1f} s{stopped}{extra}\n\n"
                f"Prompt: `{result.prompt}`")

    @guarded
    @gpu(120)
    def do_generate(prompt, shot, alpha, use_template, negative_prompt, sampler, steps, cfg, width, height,
                    seed, num_images, blend,
                    request: gr.Request, progress=gr.Progress()):
        req = form_request(_form_values(locals()))
        with svc.job(owner(request), progress=reporter(progress)) as job:
            result = svc.generate(req, job)
        return show(result), summary(result), result.request.seed, result.images[0].parameters

    @guarded
    @gpu(120)
    def do_compare(prompt, shot, alpha, use_template, negative_prompt, sampler, steps, cfg, width, height,
                   seed, num_images, blend,
                   request: gr.Request, progress=gr.Progress()):
        req = form_request(_form_values(locals()))
        with svc.job(owner(request), progress=reporter(progress)) as job:
            base, lora = svc.compare_with_base(req, job)
        label = ", ".join(f"{i.name} α={pngmeta.format_number(w)}" for i, w in lora.loras)
        items = []
        for b, l in zip(base.images, lora.images):
            items.append((temp.write(b.image, b.parameters, f"base-{b.seed}"), f"base model · seed {b.seed}"))
            items.append((temp.write(l.image, l.parameters, f"lora-{l.seed}"), f"{label} · seed {l.seed}"))
        return items, summary(lora, " · left: base model, right: LoRA"), lora.request.seed, lora.images[0].parameters

    @guarded
    @gpu(120)
    def do_live_alpha(prompt, shot, alpha, use_template, negative_prompt, sampler, steps, cfg, width, height, seed,
                      num_images, blend, live_on, last_seed, request: gr.Request, progress=gr.Progress()):
        """Moving α re-runs the last generation with its seed, so only α changes the picture."""
        if not live_on or last_seed is None or shot in (None, "", NONE) or not (prompt or "").strip():
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        req = form_request(_form_values(locals())).replace(seed=int(last_seed))
        with svc.job(owner(request), progress=reporter(progress)) as job:
            result = svc.generate(req, job)
        return show(result), summary(result), result.request.seed, result.images[0].parameters

    @guarded
    def do_stop(request: gr.Request):
        n = svc.cancel(owner(request))
        return "Stopping…" if n else "Nothing is running."

    @guarded
    @gpu(300)
    def do_sweep(prompt, shot, alpha, use_template, negative_prompt, sampler, steps, cfg, width, height,
                 seed, num_images, blend,
                 shots, alphas, request: gr.Request, progress=gr.Progress()):
        req = form_request(_form_values(locals()))
        with svc.job(owner(request), progress=reporter(progress)) as job:
            result = alpha_sweep(svc, req, list(shots or []), alphas, job)
        path = temp.write(result.grid, result.parameters, "alpha-sweep")
        return path, path, f"α sweep: seed {result.cells[0][0].seed}, {len(result.shots)} × {len(result.alphas)} images."

    @guarded
    @gpu(300)
    def do_storyboard(prompt, shot, alpha, use_template, negative_prompt, sampler, steps, cfg, width, height,
                      seed, num_images, blend,
                      text, columns, title, request: gr.Request, progress=gr.Progress()):
        req = form_request(_form_values(locals())).replace(prompt="-")
        with svc.job(owner(request), progress=reporter(progress)) as job:
            result = storyboard(svc, text, req, job, columns=int(columns or 3), title=title or "")
        save_storyboard(result, temp.folder())
        return (str(result.png_path), [str(result.png_path), str(result.pdf_path)],
                f"Storyboard: {len(result.panels)} panels, seed {result.panels[0].seed}.")

    def restored(text: str):
        req, notes = svc.request_from_parameters(text)
        message = "Settings restored." + "".join(f"\n- {n}" for n in notes)
        return [*request_form_values(req), message]

    @guarded
    def do_read_png(file):
        if not file:
            raise InvalidInput("Drop a PNG first.")
        text = pngmeta.read_parameters(Path(getattr(file, "name", file)))
        if not text:
            raise InvalidInput("This image carries no generation settings (no A1111 'parameters' text).")
        return restored(text)

    @guarded
    def do_read_text(text):
        if not (text or "").strip():
            raise InvalidInput("Paste the settings text first.")
        return restored(text)

    @guarded
    def do_upload(file, name, shot_type, request: gr.Request):
        admin_name(studio, request)
        if not file:
            raise InvalidInput("Choose a .safetensors file first.")
        path = Path(getattr(file, "name", file))
        info = svc.upload_lora(path, name=name, shot=None if shot_type in (None, "", NONE) else shot_type)
        choices = _shot_choices(svc)
        return (f"Added **{info.name}** ({info.format} format, shot {info.shot or '-'}, hash {info.short_hash}).",
                gr.Dropdown(choices=choices), gr.Dropdown(choices=choices[1:]))

    # ---- events --------------------------------------------------------------------------------
    outputs = [gallery, info, used_seed, params]
    gen_event = go.click(do_generate, form, outputs, api_name="generate")
    prompt.submit(do_generate, form, outputs, api_visibility="private")
    cmp_event = compare.click(do_compare, form, outputs, api_name="compare")
    live_event = alpha.release(do_live_alpha, [*form, live, used_seed], outputs, api_visibility="private",
                               trigger_mode="always_last")
    sweep_event = sweep_go.click(do_sweep, [*form, sweep_shots, sweep_alphas], [sweep_image, sweep_file, info],
                                 api_name="alpha_sweep")
    board_event = board_go.click(do_storyboard, [*form, board_text, board_columns, board_title],
                                 [board_image, board_files, info], api_name="storyboard")
    stop.click(do_stop, None, info, api_name="stop", concurrency_limit=None,
               cancels=[gen_event, cmp_event, live_event, sweep_event, board_event])
    reuse.click(lambda s: -1 if s is None else s, used_seed, seed, api_visibility="private", queue=False)
    refresh.click(refresh_loras, None, [shot, sweep_shots], api_name="list_loras", concurrency_limit=None)
    png_in.upload(do_read_png, png_in, [*form, read_note], api_name="read_png")
    restore.click(do_read_text, pasted, [*form, read_note], api_name="read_parameters")
    lora_go.click(do_upload, [lora_file, lora_name, lora_shot], [lora_note, shot, sweep_shots], api_name="upload_lora")
    root = demo
    if root is not None:  # a LoRA trained meanwhile appears on the next page load
        root.load(refresh_loras, None, [shot, sweep_shots], api_visibility="private")
