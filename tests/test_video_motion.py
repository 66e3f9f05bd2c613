"""Shot LoRAs trained on clips (``--method motion``): a few steps on three tiny clips through the demo
model + the demo motion adapter; the loss is logged, the LoRA is saved in both formats on the
spatial cross-attention only, the motion modules are unchanged, cancel/resume works, and the LoRA
loads in the Video clip pipeline (listed as motion-trained) and changes the clip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dreamshot.errors import InvalidInput
from training import config as tconfig
from tests.precision_models import clips   # clips of a texture sliding sideways (shared with the precision tests)
from training.motion import MotionTrainer, spatial_targets

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(resolution=64, max_steps=2, validation_steps=0, checkpoint_steps=0, validation_inference_steps=2)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return clips(tmp_path_factory.mktemp("clips") / "set", n=3)


def motion_config(clip_folder, demo_model_dir, out, **changes):
    return tconfig.preset("smoke", shot="close", dataset=str(clip_folder), base_model=str(demo_model_dir),
                          output_dir=str(out), method="motion", **{**FAST, **changes})


def motion_params(unet) -> dict:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "motion_modules" in n and "lora" not in n}


def test_spatial_targets_leave_the_motion_modules_out():
    import re

    pattern = spatial_targets(["attn2.to_q"])
    assert re.fullmatch(pattern, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q")
    assert not re.fullmatch(pattern, "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.to_q")
    assert not re.fullmatch(pattern, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")


@pytest.fixture(scope="module")
def trained(clip_folder, demo_model_dir, tmp_path_factory):
    """One short run (lr high enough that two steps visibly move the LoRA)."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("motion-run") / "run"
    trainer = MotionTrainer(motion_config(clip_folder, demo_model_dir, out, learning_rate=5e-2, max_steps=3,
                                              clip_frames=4))
    trainer.check_inputs()
    trainer.setup()
    before = motion_params(trainer.unet)
    trainer.build_caches()
    trainer.prepare(None)
    result = trainer.loop()
    result = trainer.export(result)
    trainer.accelerator.end_training()
    trainer.status.close()
    after = motion_params(trainer.accelerator.unwrap_model(trainer.unet))
    return {"out": out, "result": result, "before": before, "after": after}


def test_motion_run_logs_loss_saves_both_formats_and_keeps_motion_modules(trained):
    from safetensors.torch import load_file

    out, result = trained["out"], trained["result"]
    assert result.status == "done" and len(result.losses) == 3 and all(np.isfinite(result.losses))
    events = [json.loads(line) for line in (out / "status.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3] and all("loss" in e for e in steps)
    assert any(e["event"] == "motion" and e["clip_frames"] == 4 and e["adapter"] == "demo" for e in events)
    # validation clips (GIFs of the clip length) at the end
    done = next(e for e in events if e["event"] == "validation" and e["final"])
    from PIL import Image

    assert Image.open(out / done["images"][0]).n_frames == 4
    assert len(list((out / "clip-frames" / "00000").glob("*.png"))) == 4
    state = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert state and not any("motion_modules" in k for k in state)
    assert all("attn2" in k for k in state)
    assert any(float(v.abs().max()) > 0 for k, v in state.items() if "lora.up" in k or "lora_B" in k)
    kohya = load_file(str(out / result.files["kohya"]))
    assert any(k.startswith("lora_unet_") for k in kohya)
    # the motion module weights did not move
    before, after = trained["before"], trained["after"]
    assert before and before.keys() == after.keys()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)


def test_motion_lora_is_listed_and_changes_the_video_clip(trained, studio):
    from dreamshot.generate.loras import LoraLibrary
    from dreamshot.video.handlers import VideoHandlers
    from dreamshot.video.service import ClipRequest, service

    LoraLibrary(studio).register(trained["out"] / "pytorch_lora_weights.safetensors", name="close-clips",
                                 shot="close", origin="trained", method="motion")
    labels = dict(VideoHandlers(studio).lora_choices())
    assert "close-clips (close, motion-trained)" in labels
    common = dict(prompt="a dancer", use_template=False, width=64, height=64, steps=2, frames=8, seed=3,
                  motion_adapter="demo")
    base = service(studio).clip(ClipRequest(**common), save=False)
    shot = service(studio).clip(ClipRequest(shot="close-clips", alpha=1.0, **common), save=False)
    a, b = (np.stack([np.asarray(f, dtype=np.float64) for f in r.frames]) for r in (base, shot))
    assert a.shape == b.shape == (8, 64, 64, 3)
    assert np.abs(a - b).mean() > 0.5


def test_cancel_then_resume_finishes_the_run(clip_folder, demo_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = motion_config(clip_folder, demo_model_dir, out, max_steps=2)
    first = MotionTrainer(cfg, should_stop=lambda: True).run()
    assert first.status == "cancelled" and first.step == 1
    assert (out / "checkpoints").is_dir()
    second = MotionTrainer(cfg).run(resume="latest")
    assert second.status == "done" and second.step == 2 and len(second.losses) == 1
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_stills_and_text_encoder_lora_are_refused(demo_model_dir, tmp_path):
    from tests.training_helpers import make_imagefolder

    stills = make_imagefolder(tmp_path / "stills", per_shot=2)
    with pytest.raises(InvalidInput, match="trains on clips"):
        MotionTrainer(motion_config(stills, demo_model_dir, tmp_path / "a")).check_inputs()
    with pytest.raises(InvalidInput, match="--train-text-encoder"):
        MotionTrainer(motion_config(stills, demo_model_dir, tmp_path / "b", train_text_encoder=True)).check_inputs()


def test_job_runner_trains_a_motion_run_on_the_labeled_clips_and_registers_it(studio, tmp_path):
    from dreamshot.generate.loras import LoraLibrary
    from labeling import labels, pool
    from labeling.captions.service import save_machine_caption
    from tests.test_label_clips import _ok_frames, write_video
    from tests.test_train_jobs import wait_for
    from training import jobs

    video = write_video(tmp_path / "shots.mp4")
    pool.run_import(studio, pool.ImportOptions(str(video), min_side=100, near_duplicate_distance=-1))
    red, green, _ = _ok_frames(studio)
    for frame in (red, green):
        labels.record(studio, "ann", frame.id, "close")
        save_machine_caption(studio, frame.id, f"thing {frame.id}", model="test")
    runner = jobs.TrainingRunner(studio, poll_s=0.2)
    (run,) = runner.submit(jobs.TrainRequest(["close"], "smoke", {**FAST, "method": "motion"}))
    wait_for(runner, lambda: runner.get(run.id).status not in ("queued", "running"))
    done = runner.get(run.id)
    assert done.status == "done", done.error
    rows = [json.loads(line) for line in (done.output_dir / "data" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["frame_id"] for r in rows) == [red.id, green.id]
    assert all(r["file_name"].endswith(".mp4") for r in rows)
    assert "labeled close clip(s) for motion training" in (done.output_dir / "train.log").read_text()
    (lora,) = LoraLibrary(studio).list()
    assert (lora.kind, lora.method, lora.shot) == ("lora", "motion", "close")
