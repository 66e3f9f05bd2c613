"""The Generate tab's handlers without a gradio server: the form in API order, live α only after an
image exists, read-back of settings, clear messages for files that are not images."""

from __future__ import annotations

import pytest

from dreamshot.errors import InvalidInput
from dreamshot.generate.handlers import GenerateForm, GenerateHandlers
from tests.generate_fixtures import gen_studio, lora_files, one_torch_thread  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FORM = dict(prompt="a man on a bridge", shot="close", steps=3, width=64, height=64, seed="11")


def test_form_fields_are_the_documented_api_order():
    assert GenerateForm.fields() == ["prompt", "shot", "alpha", "use_template", "negative_prompt", "sampler", "steps",
                                     "cfg", "width", "height", "seed", "num_images", "blend", "embedding",
                                     "control", "control_image", "control_sketch", "control_scale", "control_start",
                                     "control_end", "canny_low", "canny_high", "control_map"]


def test_moving_alpha_on_a_fresh_form_generates_nothing(gen_studio):
    h = GenerateHandlers(gen_studio)
    form = GenerateForm(**FORM, alpha=0.5)
    assert h.live_alpha(form, live=True, last_seed=None) is None          # nothing generated yet
    assert h.live_alpha(form, live=False, last_seed=11) is None           # live regeneration off
    first = h.generate(form)
    again = h.live_alpha(GenerateForm(**{**FORM, "seed": "-1"}, alpha=0.8), live=True, last_seed=first.seed)
    assert again.seed == first.seed == 11 and "<lora:close:0.8>" in again.parameters


def test_settings_read_back_and_files_that_are_not_images(gen_studio, tmp_path):
    h = GenerateHandlers(gen_studio)
    shown = h.generate(GenerateForm(**FORM, alpha=0.7))
    form, note = h.read_png(shown.gallery[0][0])
    assert (form.prompt, form.shot, form.alpha, form.seed) == ("a man on a bridge", "close", 0.7, "11")
    assert note == "Settings restored."
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInput, match="not an image that can be read"):
        h.read_png(str(tmp_path / "notes.txt"))


def test_progress_shows_the_steps_asked_for(gen_studio):
    h = GenerateHandlers(gen_studio)
    texts = []
    h.generate(GenerateForm(**{**FORM, "steps": 16}), progress=lambda f, text: texts.append(text))
    assert texts[-1] == "step 16/16" and not any("/31" in t for t in texts)


def test_a_prompt_longer_than_the_text_encoder_reads_says_what_was_cut_off(gen_studio):
    h = GenerateHandlers(gen_studio)
    fits = h.generate(GenerateForm(**FORM))
    assert "Too long" not in fits.info
    words = " ".join(f"room{i}" for i in range(60))   # with the template: well over 75 tokens
    long = h.generate(GenerateForm(**{**FORM, "prompt": f"a man on a bridge {words} final words here"}))
    assert "**Too long:** the text encoder reads 75 tokens" in long.info
    cut = long.info.split("never saw `")[1].split("`")[0]
    assert cut.startswith("room") and cut.endswith(" room59 final words here")   # as typed, whole words
    assert f"{words} final words here".endswith(" " + cut)
