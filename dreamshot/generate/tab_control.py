"""Generate tab: the ControlNet accordion - layout only (``GenerateHandlers`` does the work). Its nine
inputs are the last fields of ``GenerateForm``: control, control_image, control_sketch, control_scale,
control_start, control_end, canny_low, canny_high, control_map."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from dreamshot.generate.control import CANNY_HIGH, CANNY_LOW, SCALE_RANGE
from dreamshot.generate.request import CONTROL_KINDS

KINDS = ["none", *CONTROL_KINDS]


def control_section() -> SimpleNamespace:
    with gr.Accordion("ControlNet: a reference frame or a sketch sets the layout", open=False, elem_id="gen-control"):
        kind = gr.Radio(KINDS, value="none", label="ControlNet", elem_id="gen-control-kind",
                        info="canny: the reference's edges · depth: its depth map · scribble: a sketch "
                             "(drawn here, or an uploaded white-on-black or black-on-white drawing)")
        with gr.Row():
            image = gr.Image(label="Reference frame (canny, depth) or sketch file (scribble)", type="filepath",
                             format="png", sources=["upload", "clipboard"], height=240, elem_id="gen-control-image")
            sketch = gr.Sketchpad(label="…or draw a scribble (pick the brush)", type="pil",
                                  canvas_size=(512, 512), layers=False, transforms=(), height=240,
                                  brush=gr.Brush(colors=["#000000"], default_color="#000000", color_mode="fixed"),
                                  elem_id="gen-control-sketch")
            preview = gr.Image(label="Control image (what the ControlNet sees)", type="filepath", format="png",
                               interactive=False, height=240, elem_id="gen-control-preview")
        with gr.Row():
            scale = gr.Slider(SCALE_RANGE[0], SCALE_RANGE[1], value=1.0, step=0.05, label="Control scale",
                              elem_id="gen-control-scale")
            start = gr.Slider(0, 1, value=0.0, step=0.05, label="Start (fraction of the steps)")
            end = gr.Slider(0, 1, value=1.0, step=0.05, label="End (fraction of the steps)")
        with gr.Row():
            low = gr.Slider(0, 255, value=CANNY_LOW, step=1, label="Canny low threshold")
            high = gr.Slider(0, 255, value=CANNY_HIGH, step=1, label="Canny high threshold")
            ready = gr.Checkbox(value=False, label="The image is a ready control map (e.g. a saved *-control.png)")
        show = gr.Button("Preview the control image", elem_id="gen-control-show")
    return SimpleNamespace(fields=[kind, image, sketch, scale, start, end, low, high, ready], kind=kind, image=image,
                           sketch=sketch, preview=preview, show=show)
