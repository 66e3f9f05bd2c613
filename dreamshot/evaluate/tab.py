"""Evaluate tab (UI builder). The feature is not built yet."""

import gradio as gr

from dreamshot.ui import not_built


def build(studio, demo: gr.Blocks) -> None:
    not_built("CLIP-T / DINO evaluation (paper Tables 3-4)")
