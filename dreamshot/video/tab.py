"""Video tab: a shot clip (prompt + shot LoRA + α + camera move + frames/fps + seed -> MP4 and GIF),
a shot-to-shot transition (start/end weights or keyframes, or steered by the shot-type judge), and
restyling an uploaded video with its temporal metrics plotted per frame. Endpoints:

    /video_clip  /video_transition  /video_restyle  /video_stop  /video_loras

Layout and wiring only: the handlers (``handlers.py``) do the work.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import gradio as gr

from dreamshot.video.base import SAMPLERS
from dreamshot.video.clip import MAX_CLIP_FRAMES
from dreamshot.video.handlers import NONE, ClipForm, RestyleForm, Shown, TransitionForm, VideoHandlers
from dreamshot.video.service import MAX_FPS
from dreamshot.ui import QUIET, admin_name, gpu, guarded, job_owner



def form_event(studio, method, forms: tuple):
    """A gradio function whose inputs are the fields of ``forms`` (dataclasses) in order; it checks
    that the caller is a studio member, then calls ``method(*form objects, owner=..., progress=...)``.
    The signature is spelled out because gradio reads it to inject the request and the progress
    tracker."""
    names = [name for form in forms for name in form.fields()]

    def event(*args):
        *values, request, progress = args
        admin_name(studio, request)   # members only: video runs are the studio's most expensive jobs
        objects, i = [], 0
        for form in forms:
            n = len(form.fields())
            objects.append(form(*values[i:i + n]))
            i += n
        result = method(*objects, owner=job_owner(request),
                        progress=lambda fraction, text: progress(fraction, desc=text))
        return (result.video, result.gif, result.info, result.parameters) if isinstance(result, Shown) else result

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(f"{form.__name__}_{name}", kind) for form in forms for name in form.fields()]
    params += [inspect.Parameter("request", kind, annotation=gr.Request),
               inspect.Parameter("progress", kind, default=gr.Progress())]
    event.__signature__ = inspect.Signature(params)
    event.__annotations__ = {"request": gr.Request}
    event.__name__ = method.__name__
    assert len(params) == len(names) + 2
    return guarded(gpu(120)(event))


def _sampling_fields(steps: int, cfg: float, elem_id: str) -> tuple:
    """Negative prompt, sampler, steps and CFG (a clip's and a restyle's advanced settings)."""
    negative = gr.Textbox(label="Negative prompt")
    sampler = gr.Dropdown(list(SAMPLERS), value="DDIM", label="Sampler")
    with gr.Row():
        steps_field = gr.Slider(1, 100, value=steps, step=1, label="Steps", elem_id=elem_id)
        cfg_field = gr.Slider(1, 30, value=cfg, step=0.5, label="CFG scale")
    return negative, sampler, steps_field, cfg_field


def _clip_form(h: VideoHandlers):
    with gr.Column(scale=3):
        prompt = gr.Textbox(label="Prompt (caption)", lines=2, elem_id="vid-prompt",
                            placeholder="a lighthouse keeper climbing the stairs")
        with gr.Row():
            shot = gr.Dropdown(h.lora_choices(), value=NONE, label="Shot LoRA", allow_custom_value=True,
                               elem_id="vid-shot", scale=3)
            alpha = gr.Slider(0, 1.5, value=1.0, step=0.05, label="α (shot LoRA strength)", scale=2)
        with gr.Row():
            camera = gr.Dropdown(h.camera_choices(), value=NONE, label="Camera move", elem_id="vid-camera",
                                 info="an AnimateDiff motion LoRA (guoyww's eight moves)")
            camera_strength = gr.Slider(0, 1.5, value=1.0, step=0.05, label="Camera strength")
        with gr.Row():
            frames = gr.Slider(2, MAX_CLIP_FRAMES, value=16, step=1, label="Frames", elem_id="vid-frames")
            fps = gr.Slider(1, MAX_FPS, value=8, step=1, label="Frames per second", elem_id="vid-fps")
            with gr.Column(min_width=120):
                seed = gr.Textbox(value="-1", label="Seed (-1 = random)", max_lines=1, elem_id="vid-seed")
                reuse = gr.Button("♻ Reuse the last clip's seed", size="sm", elem_id="vid-reuse-seed")
        with gr.Accordion("Advanced settings", open=False):
            negative, sampler, steps, cfg = _sampling_fields(steps=20, cfg=7.5, elem_id="vid-steps")
            with gr.Row():
                width = gr.Slider(64, 1024, value=512, step=8, label="Width", elem_id="vid-width")
                height = gr.Slider(64, 1024, value=512, step=8, label="Height", elem_id="vid-height")
            motion = gr.Textbox(label="Motion adapter (Hub id or folder; empty = default)", elem_id="vid-motion")
        with gr.Row():
            go = gr.Button("Make clip", variant="primary", elem_id="vid-go")
            stop = gr.Button("Stop", variant="stop", elem_id="vid-stop")
    form = [prompt, shot, alpha, camera, camera_strength, frames, fps, seed, negative, sampler, steps, cfg,
            width, height, motion]
    return SimpleNamespace(form=form, shot=shot, go=go, stop=stop, seed=seed, reuse=reuse)


def _results():
    with gr.Column(scale=3):
        video = gr.Video(label="Clip (MP4)", interactive=False, elem_id="vid-video", autoplay=True, loop=True)
        gif = gr.Image(label="GIF", type="filepath", interactive=False, elem_id="vid-gif")
        info = gr.Markdown(elem_id="vid-info")
        params = gr.Textbox(label="Settings (A1111 text, also stored beside the clip)", lines=3,
                            interactive=False, elem_id="vid-params")
    return SimpleNamespace(outputs=[video, gif, info, params], info=info, params=params)


def _transition_section(h: VideoHandlers):
    with gr.Accordion("Transition: from one shot type to another within the clip", open=False):
        gr.Markdown("Uses the clip settings above (prompt, frames, fps, seed, camera move, advanced settings); "
                    "the transition shows in the clip panel above, with the share of each frame.")
        with gr.Row():
            from_shot = gr.Dropdown(h.lora_choices(), value=NONE, label="From (first frame)",
                                    allow_custom_value=True, elem_id="vid-from")
            to_shot = gr.Dropdown(h.lora_choices(), value=NONE, label="To (last frame)",
                                  allow_custom_value=True, elem_id="vid-to")
        with gr.Row():
            start = gr.Slider(0, 1, value=0, step=0.05, label="Share of 'to' at the first frame")
            end = gr.Slider(0, 1, value=1, step=0.05, label="Share of 'to' at the last frame")
        keyframes = gr.Textbox(label="Keyframes (optional: frame:share, frames from 0; override the shares above)",
                               placeholder="0:0, 6:0.2, 15:1", elem_id="vid-keyframes")
        auto = gr.Checkbox(label="Automatic (judge-steered)", elem_id="vid-auto",
                           info="each frame's weights follow Evaluate's shot-type judge: the probe trained "
                                "on your labeled frames, else zero-shot CLIP")
        with gr.Row():
            rounds = gr.Slider(1, 5, value=3, step=1, label="Judge rounds")
            judge_clip = gr.Textbox(label="Judge CLIP (Hub id or folder; empty = Evaluate's default)")
        go = gr.Button("Make transition", elem_id="vid-transition-go")
    return SimpleNamespace(form=[from_shot, to_shot, start, end, keyframes, auto, rounds, judge_clip],
                           shots=[from_shot, to_shot], go=go)


def _restyle_section(h: VideoHandlers):
    with gr.Accordion("Restyle a video frame by frame, with temporal metrics", open=False):
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Input video", sources=["upload"], elem_id="vid-restyle-in")
                prompt = gr.Textbox(value="a cinematic film still",
                                    label="Prompt (caption of the new look; empty = 'a cinematic film still')")
                with gr.Row():
                    shot = gr.Dropdown(h.lora_choices(), value=NONE, label="Shot LoRA", allow_custom_value=True)
                    alpha = gr.Slider(0, 1.5, value=1.0, step=0.05, label="α")
                with gr.Row():
                    control = gr.Radio(["none", "canny", "depth"], value="none", label="Control (none = img2img)")
                    strength = gr.Slider(0.05, 1, value=0.6, step=0.05, label="Denoising strength")
                with gr.Row():
                    policy = gr.Radio(["fixed", "per-frame"], value="fixed", label="Seed policy")
                    seed = gr.Textbox(value="-1", label="Seed (-1 = random)", max_lines=1,
                                      info="a stopped restyle resumes when run again, -1 included")
                with gr.Row():
                    max_frames = gr.Number(value=48, precision=0, minimum=0, label="Max frames (0 = all)")
                    size = gr.Slider(64, 1024, value=512, step=8, label="Long side (px)")
                with gr.Accordion("Advanced settings", open=False):
                    negative, sampler, steps, cfg = _sampling_fields(steps=16, cfg=6, elem_id="vid-restyle-steps")
                with gr.Row():
                    go = gr.Button("Restyle", variant="primary", elem_id="vid-restyle-go")
                    stop = gr.Button("Stop (run again to resume)", variant="stop", elem_id="vid-restyle-stop")
            with gr.Column():
                out = gr.Video(label="Restyled (original fps and audio)", interactive=False, elem_id="vid-restyle-out")
                plot = gr.Image(label="Flicker per frame: T-SSIM and warping error", type="filepath",
                                interactive=False, elem_id="vid-metrics-plot")
                summary = gr.Markdown(elem_id="vid-metrics")
                metrics = gr.File(label="metrics.json", elem_id="vid-metrics-file")
    return SimpleNamespace(form=[video, prompt, shot, alpha, control, strength, policy, seed, max_frames, size,
                                 negative, sampler, steps, cfg],
                           shot=shot, go=go, stop=stop, outputs=[out, plot, metrics, summary])


def build(studio, demo: gr.Blocks) -> None:
    h = VideoHandlers(studio)
    gr.Markdown("Shot types in motion (AnimateDiff): a **shot clip**, a **camera move** beside the shot type, "
                "a **transition** from one shot type to another, and **restyling** a video with flicker "
                "measured (PSNR, T-SSIM, warping error). Clips are saved with their settings.")
    with gr.Row():
        f = _clip_form(h)
        r = _results()
    t = _transition_section(h)
    rs = _restyle_section(h)
    clips = [
        f.go.click(form_event(studio, h.clip, (ClipForm,)), f.form, r.outputs, api_name="video_clip"),
        t.go.click(form_event(studio, h.transition, (ClipForm, TransitionForm)), [*f.form, *t.form], r.outputs,
                   api_name="video_transition"),
    ]
    # A restyle is not cancelled by gradio: Stop tells the job, and the restyle itself answers with how
    # far it got (its frames are kept; running it again resumes).
    rs.go.click(form_event(studio, h.restyle, (RestyleForm,)), rs.form, rs.outputs, api_name="video_restyle")

    @guarded
    def stop(request: gr.Request):
        admin_name(studio, request)
        return h.stop(job_owner(request))

    f.stop.click(stop, None, r.info, api_name="video_stop", concurrency_limit=None, cancels=clips)
    f.reuse.click(guarded(h.seed_of), r.params, f.seed, api_visibility="private", **QUIET)
    rs.stop.click(stop, None, rs.outputs[3], api_visibility="private", concurrency_limit=None)

    @guarded
    def refresh():
        choices = h.lora_choices()
        return [gr.Dropdown(choices=choices) for _ in range(4)]

    dropdowns = [f.shot, *t.shots, rs.shot]
    @guarded
    def video_loras(request: gr.Request) -> list[str]:
        """The names of the LoRAs a clip, transition or restyle can use."""
        admin_name(studio, request)
        return [name for _, name in h.lora_choices()[1:]]

    gr.api(video_loras, api_name="video_loras")
    demo.load(refresh, None, dropdowns, api_visibility="private", **QUIET)
