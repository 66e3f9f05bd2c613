"""The automatic transition mode judges frames with the Evaluate tab's shot-type judge: the linear probe
trained on the studio's labeled frames when there are enough of them, else zero-shot CLIP; the
result says which judge was used and the judged shot per frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.evaluate_fixtures import add_held_out, build_tiny_clip
from tests.video_fixtures import FAST, video_loras, video_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return str(build_tiny_clip(tmp_path_factory.mktemp("judge-clip") / "clip"))


def test_without_enough_labels_the_judge_is_zero_shot(studio, tiny_clip):
    from dreamshot.video.judging import evaluate_judge

    add_held_out(studio, 2, split="train", shots=("long", "close"))
    judge = evaluate_judge(studio, ["long", "close"], tiny_clip)
    assert judge.kind == "zeroshot" and judge.description.startswith("zero-shot CLIP judge")


def test_with_labeled_frames_the_judge_is_the_trained_probe(studio, tiny_clip):
    from dreamshot.evaluate.service import service as evaluation
    from dreamshot.video.judging import evaluate_judge
    from labeling.captions.sources import frame_image

    ids = add_held_out(studio, 10, split="train", shots=("long", "close"))
    judge = evaluate_judge(studio, ["long", "close"], tiny_clip)
    assert judge.kind == "probe" and judge.description.startswith("linear-probe shot judge")
    assert judge.report["train"] > 0 and "accuracy" in judge.report
    frames = [frame_image(studio, fid, size=224) for fid in ids]
    probs = judge(frames)
    assert all(abs(sum(p.values()) - 1) < 1e-6 for p in probs)
    truth = ["long"] * 10 + ["close"] * 10
    picked = [max(p, key=p.get) for p in probs]
    # the same answers as the Evaluate feature's own judge on the same frames
    clip = evaluation(studio).clip(tiny_clip)
    evaluate_own, _ = evaluation(studio).shot_judge(clip, ["long", "close"])
    assert picked == evaluate_own.predict(clip.image_features(frames))
    assert sum(a == b for a, b in zip(picked, truth)) >= 15       # it learned the labeled frames


def test_cli_auto_transition_reports_the_probe_judge_and_the_shot_per_frame(studio, video_loras, video_models,
                                                                          tiny_clip, tmp_path, capsys):
    from dreamshot.__main__ import main
    from dreamshot.generate.loras import LoraLibrary

    lib = LoraLibrary(studio)
    lib.register(video_loras["long"], name="long", shot="long", origin="trained")
    lib.register(video_loras["close"], name="close", shot="close", origin="trained")
    add_held_out(studio, 8, split="train", shots=("long", "close"))
    studio.close()
    out = tmp_path / "auto"
    code = main(["video", "transition", "--data", str(studio.settings.data_dir), "--model", "demo",
                 "--prompt", "a woman on a bridge", "--from", "long", "--to", "close", "--auto", "--rounds", "2",
                 "--judge-clip", tiny_clip, "--frames", "8", "--width", "64", "--height", "64", "--steps", "2",
                 "--seed", "4", "--motion-adapter", video_models["adapter"], "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "judge: linear-probe shot judge" in printed
    info = json.loads((out / "clip.json").read_text())
    assert info["judge"].startswith("linear-probe shot judge")
    assert len(info["judged_shots"]) == 8 and set(info["judged_shots"]) <= {"long", "close"}
    assert len(info["rounds"]) == 2
    assert np.isclose(sum(info["judged"][0].values()), 1)
    assert Image.open(out / "clip.gif").n_frames == 8
