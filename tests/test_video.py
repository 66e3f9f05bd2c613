"""Video clips, camera moves and transitions on the demo model (64 px, 2 steps, 8 frames) with a tiny
motion adapter built from a config; the CLI end to end."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from dreamshot.errors import InvalidInput, ModelLoadError
from dreamshot.video import media, schedule
from dreamshot.video.service import ClipRequest, service
from tests.video_fixtures import FAST, arrays, video_loras, video_models, vstudio  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clip(studio, adapter, **kw):
    req = ClipRequest(prompt="a woman on a bridge", motion_adapter=adapter, **{"use_template": False, **FAST, **kw})
    return service(studio).clip(req, save=False)


def test_clip_cli_writes_exactly_n_frames_mp4_gif_and_parameters(vstudio, video_models, tmp_path):
    from dreamshot.__main__ import main

    out = tmp_path / "clip"
    code = main(["video", "clip", "--data", str(vstudio.settings.data_dir), "--model", "demo", "--prompt", "a lighthouse",
                 "--shot", "close", "--alpha", "0.8", "--frames", "8", "--fps", "12", "--width", "64", "--height", "64",
                 "--steps", "2", "--seed", "5", "--sampler", "Euler", "--motion-adapter", video_models["adapter"],
                 "--out", str(out)])
    assert code == 0
    assert media.count_frames(out / "clip.mp4") == 8
    with av.open(str(out / "clip.mp4")) as c:
        assert c.streams.video[0].average_rate == 12
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (64, 64)
    gif = Image.open(out / "clip.gif")
    assert gif.n_frames == 8 and gif.info["duration"] == 80   # GIF: centiseconds
    text = (out / "clip.txt").read_text()
    assert text.startswith("a high-quality close shot picture of a lighthouse <lora:close:0.8>")
    for part in ("Steps: 2", "Sampler: Euler", "Seed: 5", "Size: 64x64", "Frames: 8", "FPS: 12",
                 f"Motion adapter: {video_models['adapter']}", "Lora hashes:"):
        assert part in text


def test_clip_is_reproducible_and_the_shot_lora_drives_it(vstudio, video_models):
    adapter = video_models["adapter"]
    a = arrays(clip(vstudio, adapter, shot="close").frames)
    assert a.shape == (8, 64, 64, 3)
    assert np.array_equal(a, arrays(clip(vstudio, adapter, shot="close").frames))
    base = arrays(clip(vstudio, adapter).frames)
    assert np.abs(a - base).mean() > 1.0                       # the LoRA changes the clip
    assert np.array_equal(arrays(clip(vstudio, adapter, shot="close", alpha=0.0).frames), base)  # α=0 is the base
    assert not np.array_equal(a, arrays(clip(vstudio, adapter, shot="close", seed=12).frames))


def test_motion_unet_shares_the_base_weights_and_a_generate_lora_does_not_leak(vstudio, video_models):
    from dreamshot.generate.service import GenerationRequest, service as generation

    adapter = video_models["adapter"]
    before = arrays(clip(vstudio, adapter).frames)
    motion = service(vstudio).motion_pipeline(adapter)
    base_unet = vstudio.models.pipeline().unet
    assert motion.unet.conv_in.weight is base_unet.conv_in.weight
    assert motion.unet.down_blocks[1].attentions[0].proj_in.weight is base_unet.down_blocks[1].attentions[0].proj_in.weight
    generation(vstudio).generate(GenerationRequest(prompt="x", shot="long", width=64, height=64, steps=2, seed=1),
                                 save=False)    # merges 'long' into the shared weights
    assert np.array_equal(arrays(clip(vstudio, adapter).frames), before)


def test_per_frame_weights_equal_constant_weights_when_constant(vstudio, video_models):
    """A transition whose schedule holds still is the constant-weight mix: the hook tiles and
    broadcasts the per-frame vector the way the UNet lays out [cfg × frames]."""
    adapter = video_models["adapter"]
    half = clip(vstudio, adapter, shot="long", to_shot="close", keyframes="0:0.5, 7:0.5", alpha=1.0)
    assert half.t == [0.5] * 8
    only_long = clip(vstudio, adapter, shot="long", to_shot="close", keyframes="0:0, 7:0")
    assert np.allclose(arrays(only_long.frames), arrays(clip(vstudio, adapter, shot="long").frames), atol=1.0)
    assert not np.allclose(arrays(half.frames), arrays(only_long.frames), atol=1.0)


def test_transition_first_frame_follows_a_last_frame_follows_b_exactly(vstudio, video_models):
    """With temporal layers made inert, frame f depends only on its own weights: the transition's
    first frame is the constant-long clip's, its last the constant-close clip's."""
    inert = video_models["inert"]
    trans = arrays(clip(vstudio, inert, shot="long", to_shot="close").frames)
    long_ = arrays(clip(vstudio, inert, shot="long").frames)
    close = arrays(clip(vstudio, inert, shot="close").frames)
    assert np.abs(long_ - close).mean() > 1.0
    assert np.allclose(trans[0], long_[0], atol=1.0) and not np.allclose(trans[0], close[0], atol=1.0)
    assert np.allclose(trans[-1], close[-1], atol=1.0) and not np.allclose(trans[-1], long_[-1], atol=1.0)
    middle = trans[4]
    assert not np.allclose(middle, long_[4], atol=1.0) and not np.allclose(middle, close[4], atol=1.0)


def test_transition_prompts_follow_the_template_frame_by_frame(vstudio, video_models):
    """With the template on, the first frame sees 'a high-quality long shot picture of ...' and the
    last 'a high-quality close shot picture of ...' (text embeddings blended in between)."""
    inert = video_models["inert"]
    kw = dict(use_template=True)
    trans = clip(vstudio, inert, shot="long", to_shot="close", **kw)
    assert trans.prompt == "a high-quality long shot picture of a woman on a bridge"
    long_, close = (arrays(clip(vstudio, inert, shot="long", **kw).frames),
                    arrays(clip(vstudio, inert, shot="close", **kw).frames))
    frames = arrays(trans.frames)
    assert np.allclose(frames[0], long_[0], atol=1.0) and np.allclose(frames[-1], close[-1], atol=1.0)
    untemplated = arrays(clip(vstudio, inert, shot="long", to_shot="close").frames)
    assert not np.allclose(untemplated[-1], frames[-1], atol=1.0)


def test_transition_with_motion_moves_from_a_to_b(vstudio, video_models):
    adapter = video_models["adapter"]
    result = clip(vstudio, adapter, shot="long", to_shot="close")
    trans, long_, close = (arrays(result.frames), arrays(clip(vstudio, adapter, shot="long").frames),
                           arrays(clip(vstudio, adapter, shot="close").frames))
    dist = lambda x, y: float(np.abs(x - y).mean())  # noqa: E731
    assert dist(trans[0], long_[0]) < dist(trans[0], close[0])
    assert dist(trans[-1], close[-1]) < dist(trans[-1], long_[-1])
    assert "Transition: long->close [0.00 0.14" in result.parameters and "<lora:long:1> <lora:close:1>" in result.parameters


def test_kohya_lora_gives_the_same_clip_as_its_diffusers_file(vstudio, video_models, video_loras):
    from dreamshot.generate.loras import LoraLibrary

    LoraLibrary(vstudio).register(video_loras["close_kohya"], name="close_k", shot="close", origin="uploaded",
                                  fmt="kohya")
    adapter = video_models["adapter"]
    assert np.allclose(arrays(clip(vstudio, adapter, shot="close_k").frames),
                       arrays(clip(vstudio, adapter, shot="close").frames), atol=1.0)


def test_camera_move_lora_from_the_models_folder(vstudio, video_models):
    adapter = video_models["adapter"]
    plain = arrays(clip(vstudio, adapter, shot="close").frames)
    zoom = clip(vstudio, adapter, shot="close", camera="zoom-in", camera_strength=1.0)
    assert np.abs(arrays(zoom.frames) - plain).mean() > 1.0
    assert "Camera: zoom-in 1" in zoom.parameters
    assert np.array_equal(arrays(clip(vstudio, adapter, shot="close", camera="zoom-in", camera_strength=0).frames), plain)
    with pytest.raises(InvalidInput, match="Unknown camera move 'dolly'"):
        clip(vstudio, adapter, camera="dolly")
    with pytest.raises(ModelLoadError, match="camera move 'pan-left'"):   # not in models/, Hub offline
        clip(vstudio, adapter, camera="pan-left")


def test_automatic_mode_steers_the_weights_with_the_judge(vstudio, video_models):
    calls = []

    def always_long(frames):
        calls.append(len(frames))
        return [{"long": 0.9, "close": 0.1} for _ in frames]

    req = ClipRequest(prompt="a man", shot="long", to_shot="close", motion_adapter=video_models["adapter"], **FAST)
    result = service(vstudio).clip(req, judge=always_long, rounds=2, save=False)
    assert calls == [8, 8]
    first, second = result.history[0]["t"], result.history[1]["t"]
    assert first[0] == 0 and first[-1] == 1
    assert all(b > a for a, b in zip(first[1:-1], second[1:-1]))   # judged too 'long': more 'close'
    assert result.judged_shots == ["long"] * 8
    plain = service(vstudio).clip(req, save=False)
    assert not np.allclose(arrays(result.frames), arrays(plain.frames), atol=1.0)


def test_evaluate_judge_gives_probabilities_per_frame(vstudio, tmp_path):
    from tests.evaluate_fixtures import build_tiny_clip

    from dreamshot.video.judging import evaluate_judge

    judge = evaluate_judge(vstudio, ["long", "close"], str(build_tiny_clip(tmp_path / "clip")))
    frames = [Image.new("RGB", (64, 64), c) for c in ("white", "black", "red")]
    out = judge(frames)
    assert len(out) == 3 and all(set(p) == {"long", "close"} and abs(sum(p.values()) - 1) < 1e-6 for p in out)
    assert out[0] != out[1]


def test_stop_cancels_a_clip(vstudio, video_models):
    from dreamshot.video.base import Cancelled

    class StopAtOnce:
        cancelled = False

        def report(self, fraction, text):
            self.cancelled = True

    with pytest.raises(Cancelled, match="Stopped"):
        service(vstudio).clip(ClipRequest(prompt="a man", motion_adapter=video_models["adapter"], **FAST),
                              StopAtOnce(), save=False)


def test_bad_requests_get_clear_messages(vstudio, video_models):
    adapter = video_models["adapter"]
    with pytest.raises(InvalidInput, match="Frames must be between 2 and 32"):
        clip(vstudio, adapter, frames=40)
    with pytest.raises(InvalidInput, match="multiple of 8"):
        clip(vstudio, adapter, width=70)
    with pytest.raises(InvalidInput, match="No LoRA for the shot type 'medium'"):
        clip(vstudio, adapter, shot="long", to_shot="medium")
    with pytest.raises(InvalidInput, match="from and to are both 'long'"):   # was a base -> long ramp
        clip(vstudio, adapter, shot="long", to_shot="long")
    with pytest.raises(ModelLoadError, match="Cannot load the motion adapter '/no/such/adapter'"):
        clip(vstudio, "/no/such/adapter")


def test_a_motion_adapter_not_cached_while_the_hub_cannot_be_reached_says_so(monkeypatch):
    from dreamshot.video.clip import load_motion_adapter
    from tests.conftest import free_port

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")   # nothing listens there
    with pytest.raises(ModelLoadError, match=r"'someone/not-cached-adapter' \(\w+; it is not in the local Hub "
                                             r"cache and the Hub \(http://127.0.0.1:\d+\) cannot be reached"):
        load_motion_adapter("someone/not-cached-adapter", None)


def test_schedules():
    assert schedule.schedule(5) == [0, 0.25, 0.5, 0.75, 1]
    assert schedule.schedule(5, keyframes="1:0, 3:1") == [0, 0, 0.5, 1, 1]
    assert schedule.lora_weights([0.0, 0.25], 0.8) == ([0.8, 0.6000000000000001], [0.0, 0.2])
    assert schedule.steer([0.5, 0.5], [0.0, 1.0], [0.5, 0.5]) == [0.0, 1.0]
    with pytest.raises(InvalidInput, match="outside the clip"):
        schedule.schedule(4, keyframes="0:0, 9:1")
    with pytest.raises(InvalidInput, match="not 'frame:weight'"):
        schedule.parse_keyframes("start:0")
    with pytest.raises(InvalidInput, match="frame 0 is given twice"):    # frame 0 got 1, not 0
        schedule.schedule(8, keyframes="0:0, 0:1, 7:1")
