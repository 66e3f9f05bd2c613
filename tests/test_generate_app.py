"""The Generate tab served for real: gradio_client calls of every endpoint, and the main flow in
Chromium (generate with a shot LoRA, move α, generate again)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamshot.generate import pngmeta
from tests.generate_fixtures import gen_studio, lora_files, one_torch_thread  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# prompt, shot, alpha, use_template, negative, sampler, steps, cfg, width, height, seed, n, blend
def form(prompt="a man on a bridge", shot="close", alpha=1.0, steps=4, seed=11, n=1, blend="", sampler="DPM++ SDE Karras"):
    return [prompt, shot, alpha, True, "", sampler, steps, 6, 64, 64, seed, n, blend]


def gallery_paths(gallery) -> list[Path]:
    return [Path(item["image"] if isinstance(item["image"], str) else item["image"]["path"]) for item in gallery]


@pytest.fixture
def client(gen_studio, serve):
    from gradio_client import Client

    url = serve(gen_studio)
    return Client(url, verbose=False)


def test_generate_alpha_compare_and_read_back(client, gen_studio):
    gallery, info, seed, params = client.predict(*form(), api_name="/generate")
    [path] = gallery_paths(gallery)
    assert seed == "11" and "<lora:close:1>" in params and "close" in info
    text = pngmeta.read_parameters(path)          # the downloaded PNG still carries its settings
    assert text == params and "Seed: 11" in text
    first = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)

    gallery2, _, _, params2 = client.predict(*form(alpha=0.5), api_name="/generate")
    second = np.asarray(Image.open(gallery_paths(gallery2)[0]).convert("RGB"), dtype=np.int16)
    assert "<lora:close:0.5>" in params2 and np.abs(first - second).max() > 0

    gallery3, info3, _, _ = client.predict(*form(), api_name="/compare")
    base_path, lora_path = gallery_paths(gallery3)
    again = np.asarray(Image.open(lora_path).convert("RGB"), dtype=np.int16)
    assert np.array_equal(again, first)                     # same seed, same image, bit for bit
    assert "<lora" not in pngmeta.read_parameters(base_path)

    from gradio_client import handle_file

    values = list(client.predict(handle_file(str(path)), api_name="/read_png"))   # the form's first 13, note, the rest
    note = values[13]
    assert values[:3] == ["a man on a bridge", "close", 1.0] and values[10] == "11" and "restored" in note
    assert values[14:16] == ["none", "none"]                               # embedding, ControlNet


def test_bad_input_is_a_clear_error_and_the_service_keeps_working(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="multiple of 8"):
        client.predict(*form()[:8], 100, 64, 1, 1, "", api_name="/generate")
    with pytest.raises(AppError, match="Unknown shot type or LoRA 'nope'"):
        client.predict(*form(shot="nope"), api_name="/generate")
    gallery, *_ = client.predict(*form(shot="none"), api_name="/generate")
    assert len(gallery) == 1


@pytest.mark.parametrize("seed, message", [("abc", "Seed must be a number"), ("NaN", "Seed must be a finite"),
                                           ("inf", "Seed must be a finite"), (1.5, "Seed must be a whole")])
def test_bad_seeds_and_broken_text_get_a_message(client, seed, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(*form(seed=seed), api_name="/generate")


def test_a_lone_surrogate_prompt_gets_a_message(gen_studio, serve):
    """Raw HTTP (gradio_client cannot even encode it): JSON "\\ud800" decodes to a lone surrogate."""
    import json

    import httpx

    url = serve(gen_studio)
    from dreamshot.generate.handlers import GenerateForm

    later = GenerateForm().values()[13:]                   # plain HTTP sends every input: the defaults
    body = json.dumps({"data": form(prompt="a man \ud800 on a bridge") + later})   # ASCII, with the escape
    event = httpx.post(f"{url}gradio_api/call/generate", content=body,
                       headers={"content-type": "application/json"}, timeout=30).json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call/generate/{event}", timeout=60).text
    assert "event: error" in stream and "not valid text" in stream and "Internal error" not in stream


def test_sweep_storyboard_and_lora_list(client):
    image, file, info = client.predict(*form(), ["close", "medium"], "0, 1", api_name="/alpha_sweep")
    grid = Image.open(image)
    assert grid.width > 2 * 64 and grid.height > 2 * 64 and "2 × 2" in info
    sheet, files, info = client.predict(*form(), "close | a lighthouse\nmedium | a keeper", 2, "Act 1",
                                        api_name="/storyboard")
    names = sorted(Path(f).suffix for f in files)
    assert names == [".pdf", ".png"] and Path(files[0]).stat().st_size > 0
    shot_update, _ = client.predict(api_name="/list_loras")
    assert {c[1] for c in shot_update["choices"]} >= {"none", "close", "medium"}


def test_upload_refuses_pickles_and_accepts_kohya(client, lora_files, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(AppError, match="pickle"):
        client.predict(handle_file(str(bad)), "evil", "none", api_name="/upload_lora")
    ints = tmp_path / "ints.safetensors"     # right keys and shapes, integer weights
    from safetensors.torch import load_file, save_file

    save_file({k: v.to(torch.int64) for k, v in load_file(str(lora_files["close"])).items()}, str(ints))
    with pytest.raises(AppError, match="I64 tensors; LoRA weights are floating point") as refused:
        client.predict(handle_file(str(ints)), "ints", "none", api_name="/upload_lora")
    assert len(str(refused.value)) < 300
    note, shot_update, _ = client.predict(handle_file(str(lora_files["close_kohya"])), "closek", "close",
                                          api_name="/upload_lora")
    assert "kohya" in note and "closek" in {c[1] for c in shot_update["choices"]}
    gallery, *_ = client.predict(*form(shot="closek"), api_name="/generate")
    assert len(gallery) == 1


def test_stop_interrupts_a_running_generation(client):
    job = client.submit(*form(steps=150, n=4), api_name="/generate")
    deadline = time.time() + 60
    while time.time() < deadline and not (job.status().progress_data or []):
        time.sleep(0.1)
    assert job.status().progress_data, "no progress reported"
    t0 = time.perf_counter()
    client.predict(api_name="/stop")
    while not job.done():
        time.sleep(0.05)
    assert time.perf_counter() - t0 < 10
    # the pipeline thread really stopped: a new generation gets the lock at once
    t1 = time.perf_counter()
    client.predict(*form(steps=2), api_name="/generate")
    assert time.perf_counter() - t1 < 20


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input:not([type=range]), #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def _gallery_bytes(page) -> bytes:
    img = page.locator("#gen-gallery img").first
    img.wait_for(state="visible")
    src = img.get_attribute("src")
    return page.request.get(src if src.startswith("http") else page.url.rstrip("/") + "/" + src.lstrip("/")).body()


@pytest.mark.browser
def test_browser_generate_with_lora_then_move_alpha(gen_studio, serve, page, artifacts_dir, tmp_path):
    url = serve(gen_studio)
    page.goto(url)
    page.get_by_role("tab", name="Generate").click()
    page.locator("#gen-prompt textarea").fill("a man on a bridge")
    page.locator("#gen-shot input").click()
    page.get_by_role("option", name="close · close shot (trained)").click()
    # a fresh form: typing α + blur, the slider's keys and a click on it must not generate anything
    assert page.locator("#gen-used-seed textarea, #gen-used-seed input").first.input_value() == ""
    _set_number(page, "gen-alpha", 0.7)
    page.locator("#gen-alpha input[type=range]").focus()
    page.keyboard.press("ArrowRight")
    box = page.locator("#gen-alpha input[type=range]").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    page.wait_for_timeout(3000)
    assert page.locator("#gen-gallery img").count() == 0 and page.locator("#gen-info").inner_text().strip() == ""
    assert page.locator("#gen-used-seed textarea, #gen-used-seed input").first.input_value() == ""
    _set_number(page, "gen-alpha", 1)
    page.get_by_text("Advanced settings").click()
    for elem_id, value in (("gen-width", 64), ("gen-height", 64), ("gen-steps", 4)):
        _set_number(page, elem_id, value)
    page.locator("#gen-seed textarea, #gen-seed input").first.fill("7")
    page.locator("#gen-go").click()
    info = page.locator("#gen-info")
    info.get_by_text("close α=1").wait_for()
    first = _gallery_bytes(page)
    assert "<lora:close:1>" in page.locator("#gen-params textarea").input_value()

    page.locator("#gen-live input").uncheck()     # the typed α alone must not regenerate
    _set_number(page, "gen-alpha", 0.5)
    page.locator("#gen-go").click()
    info.get_by_text("close α=0.5").wait_for()
    page.wait_for_function("() => document.querySelector('#gen-params textarea').value.includes('<lora:close:0.5>')")
    second = _gallery_bytes(page)
    assert "Seeds 7" in info.inner_text()
    assert first[:8] == second[:8] == b"\x89PNG\r\n\x1a\n" and first != second
    page.screenshot(path=str(artifacts_dir / "generate-alpha.png"), full_page=True)

    # live α: with the box on, dragging the slider regenerates with the same seed
    page.locator("#gen-live input").check()
    slider = page.locator("#gen-alpha input[type=range]")
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.999, box["y"] + box["height"] / 2)   # α -> 1.5
    info.get_by_text("close α=1.5").wait_for()
    assert "Seeds 7" in info.inner_text() and _gallery_bytes(page) not in (first, second)
    # ... and so do the slider's arrow keys and a value typed in its box + Enter (the box keeps the
    # focus until Enter), one generation per move
    joins = []
    page.on("request", lambda req: joins.append(req.url) if "/queue/join" in req.url else None)
    slider.focus()
    page.keyboard.press("ArrowLeft")                                                    # α -> 1.45
    info.get_by_text("close α=1.45").wait_for()
    number = page.locator("#gen-alpha input[type=number]")
    number.fill("0.3")
    number.press("Enter")
    info.get_by_text("close α=0.3").wait_for()
    page.wait_for_timeout(1500)
    assert len(joins) == 2 and "Seeds 7" in info.inner_text()

    # drop the first (α = 1) PNG back in: the form gets its settings back
    (tmp_path / "first.png").write_bytes(first)
    page.get_by_role("button", name="Read settings from PNG").click()
    page.locator("#read-png input[type=file]").set_input_files(str(tmp_path / "first.png"))
    page.locator("#read-note").get_by_text("Settings restored").wait_for()
    assert page.locator("#gen-alpha input[type=number]").input_value() == "1"
    assert page.locator("#gen-prompt textarea").input_value() == "a man on a bridge"
