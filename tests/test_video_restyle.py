"""Restyling a video frame by frame (the videos shipped in the gradio wheel), resume after cancel,
refusals, and the temporal metrics themselves."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image

from dreamshot.errors import InvalidInput, ModelLoadError
from dreamshot.video import media, metrics
from dreamshot.video.base import Cancelled
from dreamshot.video.restyle import RestyleRequest
from dreamshot.video.service import service
from tests.video_fixtures import arrays, gradio_videos, video_loras, video_models, vstudio  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(width=64, height=64, steps=2, seed=4, strength=0.75)


def restyle(studio, out, video="b.mp4", job=None, **kw):
    req = RestyleRequest(video=gradio_videos() / video if isinstance(video, str) else video, out_dir=out,
                         **{"max_frames": 6, "chunk": 4, **FAST, **kw})
    return service(studio).restyle(req, job)


def frames_of(path) -> np.ndarray:
    return arrays([im for _, im in media.read_frames(path)])


def test_restyle_keeps_fps_and_audio_and_writes_metrics(vstudio, tmp_path):
    result = restyle(vstudio, tmp_path / "out", shot="close")
    assert media.count_frames(result.video) == 6
    with av.open(str(result.video)) as c:
        assert c.streams.video[0].average_rate == 30
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
        assert c.streams.audio[0].rate == 48000
    saved = json.loads((result.folder / "metrics.json").read_text())
    for key in ("psnr", "t_ssim", "warp_error"):
        assert len(saved[key]["per_frame"]) == 5
        assert saved[key]["mean"] == pytest.approx(np.mean(saved[key]["per_frame"]), abs=1e-5)
    assert saved["seed_policy"] == "fixed" and saved["frames"] == 6
    with av.open(str(result.video)) as c:   # 480x270 at long side 64 keeps its aspect: 64x36 -> 64x40
        assert (c.streams.video[0].width, c.streams.video[0].height) == (64, 40)
    assert Image.open(result.plot).size == (720, 360)
    plain = restyle(vstudio, tmp_path / "plain")
    assert np.abs(frames_of(result.video) - frames_of(plain.video)).mean() > 1.0   # the shot LoRA is used


@pytest.mark.parametrize("video, box, size", [((640, 360), 64, (64, 40)), ((360, 640), 64, (40, 64)),
                                               ((640, 360), 512, (512, 288)), ((1920, 1080), 1024, (1024, 576)),
                                               ((500, 500), 64, (64, 64)), ((4000, 100), 64, (64, 8))])
def test_the_restyle_size_keeps_the_videos_aspect(video, box, size):
    """Issue 21, item 10: long side 64 made a 640x360 video 64x64 (each side had a 64 px floor)."""
    from dreamshot.video.restyle import fit_inside

    assert fit_inside(*video, box, box) == size


def test_fixed_seed_is_steady_on_a_still_video_per_frame_seed_flickers(vstudio, tmp_path):
    still = Image.open(gradio_videos().parent / "images" / "cheetah1.jpg").convert("RGB").resize((64, 64))
    video = media.write_mp4([still] * 4, 10, tmp_path / "still.mp4")
    fixed = restyle(vstudio, tmp_path / "fixed", video=video, max_frames=None)
    per_frame = restyle(vstudio, tmp_path / "per", video=video, max_frames=None, seed_policy="per-frame")
    assert fixed.metrics["t_ssim"]["mean"] > 0.999 and fixed.metrics["psnr"]["mean"] > 40
    assert per_frame.metrics["t_ssim"]["mean"] < fixed.metrics["t_ssim"]["mean"] - 0.01
    assert per_frame.metrics["warp_error"]["mean"] > 10 * fixed.metrics["warp_error"]["mean"]


class StopAfterFirstChunk:
    cancelled = False

    def report(self, fraction, text):
        if text.startswith("frame "):
            self.cancelled = True


def test_cancelled_restyle_resumes_where_it_stopped(vstudio, tmp_path):
    out = tmp_path / "resumable"
    with pytest.raises(Cancelled, match="Stopped after 2/6 frames"):
        restyle(vstudio, out, job=StopAfterFirstChunk(), chunk=2)
    assert len(list((out / "frames").glob("*.png"))) == 2
    first = (out / "frames" / "000000.png").stat().st_mtime_ns
    resumed = restyle(vstudio, out, chunk=2)
    assert resumed.resumed_from == 2 and resumed.frames == 6
    assert (out / "frames" / "000000.png").stat().st_mtime_ns == first
    whole = restyle(vstudio, tmp_path / "whole", chunk=2)
    assert np.array_equal(frames_of(resumed.video), frames_of(whole.video))
    with pytest.raises(InvalidInput, match="holds a restyle with other settings"):
        restyle(vstudio, out, chunk=2, seed=99)


@pytest.mark.parametrize("into", ["default folder", "--out"])
def test_a_stopped_random_seed_restyle_resumes_with_its_seed(vstudio, tmp_path, into):
    """Seed -1 (the tab's default): running the same restyle again resumes the stopped one with the
    seed it drew, instead of starting over with a new random seed (or, with --out, being refused)."""
    out = tmp_path / "out" if into == "--out" else None
    kw = dict(seed=-1, chunk=2, prompt=f"a resumable random look {into}")
    with pytest.raises(Cancelled, match="Stopped after 2/6 frames"):
        restyle(vstudio, out, job=StopAfterFirstChunk(), **kw)
    resumed = restyle(vstudio, out, **kw)
    assert resumed.resumed_from == 2 and resumed.frames == 6
    seed = resumed.metrics["seed"]
    again = restyle(vstudio, out, **{**kw, "restart": True})   # finished: -1 draws a new seed again
    assert again.resumed_from == 0 and again.metrics["seed"] != seed


def test_controlnet_canny_steers_the_frames(vstudio, video_models, tmp_path):
    canny = restyle(vstudio, tmp_path / "canny", control="canny", controlnet=video_models["controlnet"], max_frames=3)
    plain = restyle(vstudio, tmp_path / "plain", max_frames=3)
    assert json.loads((canny.folder / "metrics.json").read_text())["control"] == "canny"
    assert np.abs(frames_of(canny.video) - frames_of(plain.video)).mean() > 1.0


def test_refusals(vstudio, video_models, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(InvalidInput, match="not a video file"):
        restyle(vstudio, tmp_path / "a", video=text)
    with pytest.raises(InvalidInput, match="lasts 30.0 s; videos are limited to 10 s"):
        restyle(vstudio, tmp_path / "b", video="world.mp4", max_seconds=10, max_frames=None)
    with pytest.raises(InvalidInput, match="limited to 0 MB"):
        restyle(vstudio, tmp_path / "c", max_bytes=1000)
    with pytest.raises(ModelLoadError, match="depth model 'depth-anything/Depth-Anything-V2-Small-hf' is not available"):
        restyle(vstudio, tmp_path / "d", control="depth", controlnet=video_models["controlnet"])
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_ssim_psnr_and_warp_error():
    flat = lambda v: np.full((32, 32), v)  # noqa: E731
    c1 = 0.01 ** 2
    assert metrics.ssim(flat(0.5), flat(0.6)) == pytest.approx((2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1))
    rng = np.random.default_rng(0)
    img = rng.random((48, 48))
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    assert metrics.ssim(img, np.clip(img + rng.normal(0, 0.2, img.shape), 0, 1)) < 0.9
    assert metrics.psnr(img, img) == metrics.PSNR_CAP
    assert metrics.psnr(flat(0.5), flat(0.6)) == pytest.approx(20.0)
    # a textured picture panning right by 2 px: outputs that follow the motion have a small warping
    # error; outputs that stand still while the input moves (or flicker) have a large one.
    base = Image.fromarray((np.kron(rng.random((12, 12)), np.ones((8, 8))) * 255).astype(np.uint8)).convert("RGB")
    moving = [base.transform(base.size, Image.AFFINE, (1, 0, -2 * i, 0, 1, 0)) for i in range(4)]
    follow = metrics.temporal_metrics(moving, moving)
    still = metrics.temporal_metrics([moving[0]] * 4, moving)
    assert follow["warp_error"]["mean"] < still["warp_error"]["mean"] / 3
    assert still["t_ssim"]["mean"] == pytest.approx(1.0) and follow["t_ssim"]["mean"] < 0.9


def test_restyle_cli_compares_fixed_and_per_frame_seeds(vstudio, tmp_path, capsys):
    from dreamshot.__main__ import main

    still = Image.open(gradio_videos().parent / "images" / "lion.jpg").convert("RGB").resize((64, 64))
    video = media.write_mp4([still] * 4, 12, tmp_path / "still.mp4")
    out = tmp_path / "cmp"
    code = main(["video", "restyle", str(video), "--data", str(vstudio.settings.data_dir), "--model", "demo",
                 "--seed-policy", "both", "--width", "64", "--height", "64", "--steps", "2", "--strength", "0.75",
                 "--seed", "8", "--out", str(out)])
    assert code == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["fixed"]["t_ssim"] > comparison["per-frame"]["t_ssim"] + 0.01
    for policy in ("fixed", "per-frame"):
        assert media.count_frames(out / policy / "restyled.mp4") == 4
        assert json.loads((out / policy / "metrics.json").read_text())["seed_policy"] == policy
    assert '"seed_policy": "per-frame"' in capsys.readouterr().out
