"""ControlNet in Generate: control images (canny, depth, scribble), the shared loader, steering,
scale and start/end, batches, the PNG parameters and the saved control image, read-back, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dreamshot.errors import InvalidInput, ModelLoadError
from dreamshot.generate import control as ctl
from dreamshot.generate.control_models import controls
from dreamshot.generate import pngmeta
from dreamshot.generate.request import ControlRequest, check_inputs
from dreamshot.generate.service import service
from tests.control_fixtures import control_models, cstudio, reference  # noqa: F401
from tests.generate_fixtures import fast, pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_control(cm, kind="canny", image=None, seed=7, **kw):
    return fast(seed=seed, control=ControlRequest(kind, reference() if image is None else image,
                                                  model=cm["controlnet"], **kw))


def diff(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


# ---- control images ------------------------------------------------------------------------------

def test_canny_map_follows_the_edges_and_its_thresholds():
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill=(255, 255, 255))
    edges = np.asarray(ctl.canny(image))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    on = edges[..., 0] > 0
    assert on[14:18, 16:48].any(axis=0).all() and on[16:48, 46:50].any(axis=1).all()   # the square's border
    assert not on[24:40, 24:40].any() and not on[:10].any()                             # not inside, not outside
    faint = Image.new("RGB", (64, 64), (100, 100, 100))
    ImageDraw.Draw(faint).rectangle((16, 16, 47, 47), fill=(125, 125, 125))
    assert np.asarray(ctl.canny(faint, 10, 30)).any() and not np.asarray(ctl.canny(faint, 150, 250)).any()


def test_scribble_is_white_strokes_on_black_whatever_was_drawn():
    paper = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(paper).line((0, 16, 31, 16), fill="black", width=2)
    inverted = np.asarray(ctl.scribble(paper))[..., 0]
    assert inverted[16].min() == 255 and inverted[:10].max() == 0
    dark = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(dark).line((0, 16, 31, 16), fill="white", width=2)
    assert np.array_equal(np.asarray(ctl.scribble(dark)), np.asarray(dark))                   # kept as is
    canvas = Image.new("RGBA", (32, 32), (0, 0, 0, 0))                                         # a sketchpad's
    ImageDraw.Draw(canvas).line((0, 16, 31, 16), fill=(0, 0, 0, 255), width=2)
    assert np.array_equal(np.asarray(ctl.scribble(canvas)), np.asarray(ctl.scribble(paper)))


def test_depth_map_comes_from_the_depth_model_loaded_once(cstudio, control_models, monkeypatch):
    monkeypatch.setenv(ctl.DEPTH_ENV, control_models["depth"])
    models = controls(cstudio)
    depth = models.prepare(ctl.check_control(ControlRequest("depth", reference(1, 96))), 64, 48)
    arr = np.asarray(depth)
    assert depth.size == (64, 48) and np.array_equal(arr[..., 0], arr[..., 2]) and arr.std() > 0
    assert models.depth() is models.depth()
    other = np.asarray(models.prepare(ctl.check_control(ControlRequest("depth", reference(2, 96))), 64, 48))
    assert np.abs(arr.astype(int) - other).mean() > 1          # a map of the image, not a constant
    monkeypatch.setenv(ctl.DEPTH_ENV, "/nowhere/depth")
    with pytest.raises(ModelLoadError, match="depth model '/nowhere/depth' is not available.*DREAMSHOT_DEPTH_MODEL"):
        models.depth()


def test_check_inputs_refuses_bad_controls(tmp_path):
    cases = [(ControlRequest("pose", reference()), "Unknown ControlNet kind 'pose'"),
             (ControlRequest("canny", None), "needs a reference image"),
             (ControlRequest("scribble", ""), "needs a sketch"),
             (ControlRequest("canny", str(tmp_path / "gone.png")), "does not exist"),
             (ControlRequest("canny", reference(), scale=2.5), "scale must be between 0 and 2"),
             (ControlRequest("canny", reference(), start=0.6, end=0.4), "start .0.6. must be below its end"),
             (ControlRequest("canny", reference(), start=0.5, end=0.5), "start .0.5. must be below its end"),
             (ControlRequest("canny", reference(), end=float("nan")), "end must be between 0 and 1"),
             (ControlRequest("canny", reference(), low=200, high=100), "low threshold .200. must be below")]
    for control, message in cases:
        with pytest.raises(InvalidInput, match=message):
            check_inputs(fast(control=control))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InvalidInput, match="not an image"):
        check_inputs(fast(control=ControlRequest("canny", str(tmp_path / "notes.png"))))
    assert check_inputs(fast(control=ControlRequest("none", None))).control is None


# ---- generation ------------------------------------------------------------------------------------

def test_control_image_steers_scale_zero_is_no_control_and_start_end_apply(cstudio, control_models):
    svc = service(cstudio)
    plain = svc.generate(fast(), save=False)
    steered = svc.generate(with_control(control_models), save=False)
    other = svc.generate(with_control(control_models, image=reference(5)), save=False)
    assert diff(steered, plain) > 2 and diff(steered, other) > 2
    assert diff(svc.generate(with_control(control_models, scale=0.0), save=False), plain) < 0.5
    assert diff(svc.generate(with_control(control_models, end=0.1), save=False), plain) < 0.5   # acts on no step
    late = svc.generate(with_control(control_models, start=0.5), save=False)
    assert diff(late, plain) > 0.5 and diff(late, steered) > 0.5
    assert svc.pipe.unet is controls(cstudio).pipeline(control_models["controlnet"]).unet   # shared weights


def test_demo_controlnet_is_the_default_on_the_demo_model_and_steers(cstudio):
    svc = service(cstudio)
    assert controls(cstudio).source("scribble") == ctl.DEMO
    sketch = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(sketch).ellipse((8, 8, 56, 56), outline="black", width=4)
    drawn = svc.generate(fast(control=ControlRequest("scribble", sketch)), save=False)
    assert diff(drawn, svc.generate(fast(), save=False)) > 1
    assert np.asarray(drawn.control_image)[32, 32].max() == 0 and np.asarray(drawn.control_image).max() == 255


def test_which_controlnet_request_then_environment_then_studio_setting_then_default(cstudio, monkeypatch):
    models = controls(cstudio)
    for name in (ctl.env_name("canny"), ctl.LEGACY_ENV, ctl.env_name("depth"), ctl.DEPTH_ENV):
        monkeypatch.delenv(name, raising=False)
    cstudio.db.set_setting(ctl.setting_key("canny"), "/studio/canny")
    cstudio.db.set_setting(ctl.setting_key("depth_model"), "/studio/depth")
    try:
        assert models.source("canny") == "/studio/canny" and models.depth_source() == "/studio/depth"
        monkeypatch.setenv(ctl.LEGACY_ENV, "/env/legacy")            # the restyle's variable before #14
        assert models.source("canny") == "/env/legacy" and models.source("depth") == ctl.DEMO
        monkeypatch.setenv(ctl.env_name("canny"), "/env/canny")
        monkeypatch.setenv(ctl.DEPTH_ENV, "/env/depth")
        assert models.source("canny") == "/env/canny" and models.depth_source() == "/env/depth"
        assert models.source("canny", "/request/canny") == "/request/canny"
    finally:
        cstudio.db.set_setting(ctl.setting_key("canny"), "")
        cstudio.db.set_setting(ctl.setting_key("depth_model"), "")
    assert models.source("scribble") == ctl.DEMO                       # the demo model's own


def test_batched_controls_match_one_by_one(cstudio, control_models):
    svc = service(cstudio)
    reqs = [with_control(control_models, seed=3), with_control(control_models, image=reference(7), seed=4)]
    batched = svc.generate_many(reqs, batch_size=2, save=False)
    for req, result in zip(reqs, batched):
        alone = svc.generate(req, save=False)
        assert diff(result, alone) < 1.0
    assert diff(batched[0], batched[1]) > 2


def test_missing_controlnet_gives_one_clear_message(cstudio, tmp_path):
    svc = service(cstudio)
    with pytest.raises(ModelLoadError, match=r"ControlNet '/no/such/net' is not available.*--controlnet DIR"):
        svc.generate(fast(control=ControlRequest("canny", reference(), model="/no/such/net")), save=False)
    with pytest.raises(ModelLoadError, match=r"lllyasviel/control_v11p_sd15_canny' is not available.*HF_HUB_OFFLINE"):
        svc.generate(fast(control=ControlRequest("canny", reference(), model=ctl.DEFAULT_CONTROLNETS["canny"])),
                     save=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"ControlNet '.*empty' is not available: this folder does not hold one"):
        svc.generate(fast(control=ControlRequest("depth", reference(), model=str(tmp_path / "empty"))), save=False)
    assert svc.generate(fast(), save=False).images   # the service keeps working


def test_models_missing_when_the_hub_cannot_be_reached_are_refused_at_once(cstudio, monkeypatch):
    """Online in name (no HF_HUB_OFFLINE) but the Hub unreachable: a ControlNet / depth model that is
    not cached is refused after the 3-second probe with the reason, not after minutes of retries."""
    from dreamshot import models
    from tests.conftest import free_port

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")   # nothing listens there
    svc = service(cstudio)
    with pytest.raises(ModelLoadError, match=r"not in the local Hub cache, and the Hub \(http://127.0.0.1:\d+\) "
                                             r"cannot be reached from this machine"):
        svc.generate(fast(control=ControlRequest("canny", reference(), model="someone/not-cached-net")), save=False)
    with pytest.raises(ModelLoadError, match=r"depth model 'someone/not-cached-depth'.*cannot be reached"):
        controls(cstudio).depth("someone/not-cached-depth")
    assert models.hub_unavailable(probe_hub=lambda: True) is None     # a reachable Hub lets loads try


def test_png_names_the_controlnet_and_the_saved_control_image_restores_it(cstudio, control_models):
    svc = service(cstudio)
    result = svc.generate(with_control(control_models, scale=0.8, start=0.25))
    path = result.images[0].path
    text = pngmeta.read_parameters(path)
    assert ('ControlNet 0: "Module: canny, Model: controlnet, Weight: 0.8, Threshold A: 100, Threshold B: 200, '
            'Guidance Start: 0.25, Guidance End: 1"') in text
    saved = path.with_name(path.stem + "-control.png")
    assert f"Control image: {saved.parent.name}/{saved.name}" in text
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), np.asarray(result.control_image))
    req, notes = svc.request_from_parameters(text)
    c = req.control
    assert (c.kind, c.scale, c.start, c.end, c.preprocessed, c.model) == ("canny", 0.8, 0.25, 1.0, True, None)
    assert any("'controlnet' is a local folder" in n for n in notes)
    again = svc.generate(req.replace(control=ControlRequest(**{**vars(c), "model": control_models["controlnet"]})),
                         save=False)
    assert diff(again, result) == 0
    a1111 = text.split("Control image")[0].rstrip(", ")          # an A1111 image: no file to restore
    req, notes = svc.request_from_parameters(a1111)
    assert req.control.kind == "canny" and req.control.image is None and any("not stored here" in n for n in notes)


# ---- CLI and storyboard ------------------------------------------------------------------------------

def test_cli_generate_with_control_writes_the_png_and_its_control_image(cstudio, control_models, tmp_path, capsys):
    import json

    from dreamshot.__main__ import main

    frame = tmp_path / "frame.png"
    reference(3).save(frame)
    out = tmp_path / "out"
    code = main(["generate", "--data", str(cstudio.settings.data_dir), "--model", "demo", "--prompt", "a pier",
                 "--width", "64", "--height", "64", "--steps", "3", "--seed", "5", "--control", "canny",
                 "--control-image", str(frame), "--controlnet", control_models["controlnet"], "--control-scale",
                 "0.7", "--control-end", "0.8", "--canny-low", "50", "--out", str(out), "--json"])
    assert code == 0
    row = json.loads(capsys.readouterr().out)["images"][0]
    text = pngmeta.read_parameters(row["path"])
    assert "Weight: 0.7, Threshold A: 50, Threshold B: 200, Guidance Start: 0, Guidance End: 0.8" in text
    expected = ctl.canny(reference(3), 50, 200)
    assert np.array_equal(np.asarray(Image.open(row["control"]).convert("RGB")), np.asarray(expected))
    assert row["control"].startswith(str(out))
    code = main(["read-png", row["path"], "--json", "--data", str(tmp_path / "no-studio")])
    restored = json.loads(capsys.readouterr().out)["request"]["control"]
    assert restored["kind"] == "canny" and restored["scale"] == 0.7 and restored["image"].endswith("-control.png")
    assert main(["generate", "--data", str(cstudio.settings.data_dir), "--model", "demo", "--prompt", "a pier",
                 "--control-image", str(frame)]) != 0
    assert "--control-image needs --control" in capsys.readouterr().err


def test_storyboard_panel_with_a_sketch_uses_the_scribble_controlnet(cstudio, control_models, tmp_path, capsys):
    from dreamshot.__main__ import main
    from dreamshot.generate.storyboard import storyboard, uploaded_sketches

    sketch = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(sketch).rectangle((10, 20, 54, 44), outline="black", width=3)
    (tmp_path / "sketches").mkdir()
    sketch.save(tmp_path / "sketches" / "pier.png")
    board = "- | a pier at dusk | pier.png\n- | a pier at dusk\n"
    svc = service(cstudio)
    template = ControlRequest("scribble", None, model=control_models["controlnet"])
    result = storyboard(svc, board, fast(prompt="-"), sketches=uploaded_sketches([tmp_path / "sketches" / "pier.png"]),
                        sketch_control=template)
    drawn, plain = result.panels
    assert drawn.sketch == "pier.png" and "ControlNet 0" in drawn.parameters and "ControlNet" not in plain.parameters
    assert diff(drawn.image, plain.image) > 2
    with pytest.raises(InvalidInput, match="'gone.png' is not among the uploaded sketches .pier.png."):
        storyboard(svc, "- | x | gone.png", fast(prompt="-"), sketches=uploaded_sketches([tmp_path / "sketches" / "pier.png"]))
    (tmp_path / "board.txt").write_text(board)
    code = main(["storyboard", str(tmp_path / "board.txt"), "--data", str(cstudio.settings.data_dir), "--model", "demo",
                 "--width", "64", "--height", "64", "--steps", "4", "--seed", "7", "--sketch-dir",
                 str(tmp_path / "sketches"), "--controlnet", control_models["controlnet"], "--out", str(tmp_path / "b")])
    assert code == 0 and (tmp_path / "b" / "storyboard.pdf").is_file()
    assert "sketch pier.png" in pngmeta.read_parameters(tmp_path / "b" / "storyboard.png")
    assert main(["storyboard", str(tmp_path / "board.txt"), "--data", str(cstudio.settings.data_dir), "--model",
                 "demo", "--sketch-dir", str(tmp_path), "--out", str(tmp_path / "c")]) != 0
    assert "Sketch 'pier.png' not found" in capsys.readouterr().err


def test_video_restyle_depth_uses_the_same_loader_and_depth_model(cstudio, control_models, monkeypatch, tmp_path):
    import json

    from dreamshot.video import media
    from dreamshot.video.restyle import RestyleRequest
    from dreamshot.video.service import service as video
    from tests.video_fixtures import arrays, gradio_videos

    monkeypatch.setenv(ctl.DEPTH_ENV, control_models["depth"])
    monkeypatch.setenv(ctl.env_name("depth"), control_models["controlnet"])
    run = lambda out, **kw: video(cstudio).restyle(RestyleRequest(  # noqa: E731
        video=gradio_videos() / "b.mp4", out_dir=tmp_path / out, max_frames=2, chunk=2, width=64, height=64,
        steps=2, seed=4, strength=0.75, **kw))
    depth, canny = run("depth", control="depth"), run("canny", control="canny", controlnet=control_models["controlnet"])
    saved = json.loads((depth.folder / "restyle.json").read_text())["settings"]
    assert saved["controlnet"] == control_models["controlnet"] and saved["depth_model"] == control_models["depth"]
    models = controls(cstudio)
    assert models.depth() is models.depth(control_models["depth"])        # Generate's depth model, loaded once
    frames = lambda r: arrays([im for _, im in media.read_frames(r.video)])  # noqa: E731
    assert np.abs(frames(depth) - frames(canny)).mean() > 1.0


# ---- Generate tab (handlers) ---------------------------------------------------------------------------

def test_tab_handlers_preview_generate_with_a_drawn_sketch_and_restore(cstudio, control_models, monkeypatch, tmp_path):
    from dreamshot.generate.handlers import GenerateForm, GenerateHandlers

    monkeypatch.setenv(ctl.env_name("scribble"), control_models["controlnet"])
    h = GenerateHandlers(cstudio)
    canvas = Image.new("RGBA", (96, 96), (0, 0, 0, 0))                 # what gr.Sketchpad(type="pil") gives
    ImageDraw.Draw(canvas).line((10, 80, 86, 16), fill=(0, 0, 0, 255), width=5)
    sketch = {"background": None, "layers": [canvas], "composite": canvas}
    uploaded = tmp_path / "upload.png"
    Image.new("RGB", (64, 64), "white").save(uploaded)
    form = GenerateForm(prompt="a road", steps=3, width=64, height=64, seed="9", control="scribble",
                        control_image=str(uploaded), control_sketch=sketch, control_scale=0.9)
    preview = np.asarray(Image.open(h.control_preview(form)))
    assert preview.shape == (64, 64, 3) and preview[..., 0].max() == 255 and (preview[..., 0] > 0).mean() < 0.3
    shown = h.generate(form)
    assert len(shown.gallery) == 2 and shown.gallery[1][1] == "scribble control image"
    assert "scribble ControlNet ×0.9" in shown.info
    assert np.array_equal(np.asarray(Image.open(shown.gallery[1][0])), preview)   # the drawn sketch, not the upload
    blank = {"background": None, "layers": [], "composite": Image.new("RGBA", (96, 96), (0, 0, 0, 0))}
    with pytest.raises(InvalidInput, match="needs a sketch"):
        h.generate(GenerateForm(prompt="a road", control="scribble", control_sketch=blank))
    restored, note = h.read_text(shown.parameters)
    assert (restored.control, restored.control_scale, restored.control_map) == ("scribble", 0.9, True)
    assert np.array_equal(np.asarray(Image.open(restored.control_image).convert("RGB")), preview)
    assert str(cstudio.settings.data_dir) not in restored.control_image            # a served copy, not outputs/
    again = h.generate(restored)
    assert np.array_equal(np.asarray(Image.open(again.gallery[0][0])), np.asarray(Image.open(shown.gallery[0][0])))
    assert h.control_preview(GenerateForm(prompt="x")) is None
    Image.open(restored.control_image).save(tmp_path / "road.png")
    _, _, info = h.storyboard(GenerateForm(steps=2, width=64, height=64, seed="3", control_scale=0.5),
                              "- | a road | road.png\n- | a field", 2, "", [str(tmp_path / "road.png")])
    assert "2 panels" in info
    with pytest.raises(InvalidInput, match="'road.png' is not among the uploaded sketches .none."):
        h.storyboard(GenerateForm(steps=2, width=64, height=64), "- | a road | road.png", 2, "", None)


def test_api_generate_with_a_control_image_and_preview(cstudio, control_models, monkeypatch, serve, tmp_path):
    """The ControlNet inputs come after the 13 documented ones (and the embedding) in /generate."""
    from gradio_client import Client, handle_file

    monkeypatch.setenv(ctl.env_name("canny"), control_models["controlnet"])
    frame = tmp_path / "frame.png"
    reference(4).save(frame)
    client = Client(serve(cstudio), verbose=False)
    head = ["a pier", "none", 1.0, True, "", "DDIM", 3, 6, 64, 64, "5", 1, ""]
    control = dict(embedding="none", control="canny", control_image=handle_file(str(frame)), control_scale=0.6)
    gallery, info, seed, params = client.predict(*head, **control, api_name="/generate")
    assert len(gallery) == 2 and "canny ControlNet ×0.6" in info and 'Model: controlnet, Weight: 0.6' in params
    preview = client.predict(*head, **control, api_name="/control_preview")
    assert np.array_equal(np.asarray(Image.open(preview).convert("RGB")), np.asarray(ctl.canny(reference(4))))
    plain, *_ = client.predict(*head, api_name="/generate")                  # the 13-value call still works
    assert len(plain) == 1


def test_settings_read_back_at_once_find_the_control_image_still_being_written(cstudio, control_models, monkeypatch,
                                                                                tmp_path):
    """PNGs and control images are written in the background: reading the settings back before the
    write ended found no control image ('not stored here'; seen in a loaded CI run)."""
    import time

    from dreamshot.generate import batch
    from dreamshot.generate.handlers import GenerateForm, GenerateHandlers

    slow_save = batch.save_outputs
    monkeypatch.setattr(batch, "save_outputs", lambda *a: (time.sleep(0.8), slow_save(*a))[1])
    monkeypatch.setenv(ctl.env_name("scribble"), control_models["controlnet"])
    reference = tmp_path / "sketch.png"
    Image.new("RGB", (64, 64), "white").save(reference)
    ImageDraw.Draw(img := Image.open(reference)).line((5, 60, 60, 5), fill="black", width=4)
    img.save(reference)
    h = GenerateHandlers(cstudio)
    shown = h.generate(GenerateForm(prompt="a road", steps=2, width=64, height=64, seed="3", control="scribble",
                                    control_image=str(reference)))
    restored, note = h.read_text(shown.parameters)
    assert (restored.control, restored.control_map) == ("scribble", True) and "not stored here" not in note
