"""The Video tab: its handlers called as the tab calls them, and the endpoints served for real
(a Blocks with only this tab, called with gradio_client)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dreamshot.errors import InvalidInput
from dreamshot.video import media
from dreamshot.video.handlers import ClipForm, RestyleForm, TransitionForm, VideoHandlers
from tests.video_fixtures import gradio_videos, video_loras, video_models, vstudio  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(frames=8, steps=2, width=64, height=64, seed="3")


def test_clip_and_transition_handlers(vstudio, video_models):
    h = VideoHandlers(vstudio)
    assert [name for _, name in h.lora_choices()][:3] == ["none", "long", "close"]
    form = ClipForm(prompt="a lighthouse", shot="close", camera="zoom-in", motion_adapter=video_models["adapter"],
                    **SMALL)
    shown = h.clip(form)
    assert media.count_frames(shown.video) == 8 and Image.open(shown.gif).n_frames == 8
    assert not shown.video.startswith(str(vstudio.settings.data_dir))   # copies outside the data folder
    assert "Camera: zoom-in 1" in shown.parameters and "8 frames" in shown.info
    assert h.seed_of(shown.parameters) == "3"            # ♻: the seed of the clip shown, into the Seed box
    random_seed = h.clip(ClipForm(prompt="a lighthouse", motion_adapter=video_models["adapter"], **{**SMALL, "seed": "-1"}))
    assert f"seed {h.seed_of(random_seed.parameters)}," in random_seed.info   # the seed -1 drew
    with pytest.raises(InvalidInput, match="Make a clip first"):
        h.seed_of("")

    def judge(frames):
        return [{"long": 0.2, "close": 0.8} for _ in frames]

    vstudio_svc = h.svc
    original = vstudio_svc.transition_judge
    vstudio_svc.transition_judge = lambda req, spec: judge     # the judge is pluggable
    try:
        seen = []
        shown = h.transition(form, TransitionForm(from_shot="long", to_shot="close", keyframes="0:0, 7:1", auto=True,
                                                  rounds=2), progress=lambda fraction, text: seen.append(text))
    finally:
        vstudio_svc.transition_judge = original
    assert seen[0] == "loading the shot-type judge (CLIP)…"     # offline, a Hub CLIP takes ~45 s to fail
    assert "long → close" in shown.info and "0.00" in shown.info
    assert "Judged shot per frame" in shown.info and shown.info.count("close") >= 8
    with pytest.raises(InvalidInput, match="Choose the shot LoRA at the first frame"):
        h.transition(form, TransitionForm(from_shot="long"))


def test_restyle_handler(vstudio):
    h = VideoHandlers(vstudio)
    video, plot, metrics_file, summary = h.restyle(RestyleForm(video=str(gradio_videos() / "b.mp4"), max_frames=4,
                                                               size=64, seed="2"))
    assert media.count_frames(video) == 4
    assert Image.open(plot).size == (720, 360)
    assert set(json.loads(open(metrics_file).read())) >= {"psnr", "t_ssim", "warp_error"}
    assert "T-SSIM" in summary and "4 frames" in summary
    with pytest.raises(InvalidInput, match="Upload a video"):
        h.restyle(RestyleForm())


def test_restyle_takes_the_advanced_settings_of_the_tab(vstudio):
    """Sampler, steps, CFG and negative prompt reach the restyle (the tab had none; it always ran DDIM,
    16 steps, CFG 6) and are stored with it."""
    h = VideoHandlers(vstudio)
    h.restyle(RestyleForm(video=str(gradio_videos() / "b.mp4"), max_frames=2, size=64, seed="3",
                          negative="blurry", sampler="Euler a", steps=2, cfg=3.5))
    stored = sorted((vstudio.settings.data_dir / "outputs").rglob("restyle.json"), key=lambda p: p.stat().st_mtime)
    settings = json.loads(stored[-1].read_text())["settings"]
    assert (settings["sampler"], settings["steps"], settings["cfg"], settings["negative"]) == ("Euler a", 2, 3.5,
                                                                                                "blurry")
    with pytest.raises(InvalidInput, match="Steps"):
        h.restyle(RestyleForm(video=str(gradio_videos() / "b.mp4"), max_frames=2, size=64, steps=2.5))


def test_a_stopped_restyle_says_how_far_it_got_and_resumes_from_the_form(vstudio):
    """Stop (same owner) during a restyle: the handler answers with the frames done instead of an error,
    and pressing Restyle again with the form unchanged (seed -1) resumes them."""
    h = VideoHandlers(vstudio)
    form = RestyleForm(video=str(gradio_videos() / "b.mp4"), prompt="a stopped restyle", max_frames=12, size=64)

    def stop_after_first_chunk(fraction, text):
        if text.startswith("frame "):
            h.stop("me")

    video, plot, metrics_file, summary = h.restyle(form, owner="me", progress=stop_after_first_chunk)
    assert (video, plot, metrics_file) == (None, None, None)
    assert "Stopped after 8/12 frames; press Restyle again to resume" in summary
    video, _, _, summary = h.restyle(form, owner="me")
    assert media.count_frames(video) == 12 and "Resumed: 8 frames were already done" in summary


def test_stop_with_nothing_of_yours_running_says_the_model_is_busy(vstudio):
    """A page reloaded mid-run is a new session: its Stop cannot reach the old run, and says so."""
    import threading

    h = VideoHandlers(vstudio)
    assert h.stop("nobody") == "Nothing is running."
    held, release = threading.Event(), threading.Event()

    def other_run():
        with h.svc.gen.lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert held.wait(30)
        assert "The model is busy with another run" in h.stop("nobody")
    finally:
        release.set()
        thread.join()
    assert h.stop("nobody") == "Nothing is running."


def test_whole_numbers_are_not_rounded_silently(vstudio):
    with pytest.raises(InvalidInput, match="Frames must be a whole number"):
        ClipForm(prompt="x", frames=8.5).request()
    with pytest.raises(InvalidInput, match="Max frames must be 0 .the whole video. or at least 2"):
        VideoHandlers(vstudio).restyle(RestyleForm(video=str(gradio_videos() / "b.mp4"), max_frames=-3))
    assert ClipForm(prompt="x", frames=8.0, seed="99999999999999999999").request().seed == 99999999999999999999


def test_video_endpoints_served(vstudio, video_models):
    import gradio as gr
    from gradio_client import Client

    from dreamshot.video import tab
    from tests.conftest import free_port

    with gr.Blocks() as demo:
        tab.build(vstudio, demo)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        blocked_paths=[str(vstudio.settings.data_dir)])
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        assert client.predict(api_name="/video_loras")[:2] == ["long", "close"]
        values = ClipForm(prompt="a bridge", shot="long", motion_adapter=video_models["adapter"], **SMALL)
        video, gif, info, params = client.predict(*[getattr(values, n) for n in ClipForm.fields()],
                                                  api_name="/video_clip")
        path = video["video"] if isinstance(video, dict) else video
        assert media.count_frames(path) == 8 and "Seed: 3" in params
    finally:
        demo.close()


def test_video_endpoints_are_for_studio_members(make_studio):
    import gradio as gr
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from dreamshot.video import tab
    from tests.conftest import free_port

    studio = make_studio(admin_password="pw")      # served without login: every caller is a participant
    with gr.Blocks() as demo:
        tab.build(studio, demo)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        from gradio_client import handle_file

        clip = [getattr(ClipForm(prompt="x"), n) for n in ClipForm.fields()]
        transition = clip + [getattr(TransitionForm(from_shot="long", to_shot="close"), n)
                             for n in TransitionForm.fields()]
        restyle = [handle_file(str(gradio_videos() / "b.mp4"))] + [getattr(RestyleForm(), n)
                                                                    for n in RestyleForm.fields()[1:]]
        for name, args in (("/video_loras", []), ("/video_stop", []), ("/video_clip", clip),
                           ("/video_transition", transition), ("/video_restyle", restyle)):
            with pytest.raises(AppError, match="Log in as a studio member"):
                client.predict(*args, api_name=name)
    finally:
        demo.close()
