"""The LoRA trainer on the tiny demo model: settings checks, data checks, an end-to-end run, exact
resume, both export formats giving the same image, and the bad inputs (each with a clear message)."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest

from dreamshot.errors import InvalidInput, ModelLoadError
from training import config as tconfig
from training import data as tdata
from training import export
from tests.training_helpers import make_imagefolder, smoke_config, status_events

FAST = dict(resolution=32, validation_steps=0, validation_inference_steps=2, checkpoint_steps=0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def imagefolder(tmp_path):
    return make_imagefolder(tmp_path / "set", shots=("close", "long"), per_shot=3)


def smoke(imagefolder, demo_model_dir, out, **changes):
    return smoke_config(imagefolder, demo_model_dir, out, **{**FAST, **changes})


events = status_events


# ---- settings -------------------------------------------------------------------------------------
def test_presets_are_valid_and_paper_matches_the_paper():
    paper = tconfig.preset("paper").validate()
    assert (paper.max_steps, paper.learning_rate, paper.resolution, paper.target) == (8000, 1e-4, 512, "cross")
    assert paper.target_modules == ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
    assert "attn1.to_q" in tconfig.preset("paper", target="all").target_modules
    assert tconfig.preset("smoke").validate().max_steps <= 10


def test_out_of_range_settings_are_refused_with_every_problem_named():
    cfg = tconfig.preset("paper", rank=0, learning_rate=0.0, resolution=36, mixed_precision="fp32",
                         batch_size=500, validation_seeds=[1])
    with pytest.raises(InvalidInput) as err:
        cfg.validate()
    text = str(err.value)
    for flag in ("--rank", "--learning-rate", "--resolution", "--mixed-precision", "--batch-size", "--validation-seeds"):
        assert flag in text


def test_cli_flags_start_from_the_preset():
    from training.__main__ import build_parser

    args = build_parser().parse_args(["--dataset", "d", "--preset", "smoke", "--rank", "8", "--no-random-flip",
                                      "--learning-rate", "3e-4", "--validation-seeds", "5", "6"])
    cfg = tconfig.from_namespace(args)
    assert (cfg.preset, cfg.rank, cfg.random_flip, cfg.learning_rate, cfg.max_steps) == ("smoke", 8, False, 3e-4, 4)
    assert cfg.validation_seeds == [5, 6]


def test_cli_refuses_bad_settings_before_starting(tmp_path, imagefolder, demo_model_dir, capsys):
    from training.__main__ import main

    out = tmp_path / "run"
    code = main(["--dataset", str(imagefolder), "--base-model", str(demo_model_dir), "--output-dir", str(out),
                 "--preset", "smoke", "--rank", "0"])
    assert code == 2 and "--rank must be between 1 and 256" in capsys.readouterr().err
    assert not out.exists()


# ---- data -----------------------------------------------------------------------------------------
def test_imagefolder_reading_and_its_errors(tmp_path, imagefolder):
    close = tdata.read_imagefolder(imagefolder, shot="close")
    assert len(close) == 3 and close[0].text.startswith("a high-quality close shot picture of")
    with pytest.raises(InvalidInput, match="class is empty"):
        tdata.read_imagefolder(imagefolder, shot="medium")
    with pytest.raises(InvalidInput, match="no metadata.jsonl"):
        tdata.read_imagefolder(tmp_path)
    (imagefolder / "close" / "close-001.png").unlink()
    with pytest.raises(InvalidInput, match="missing on disk: close/close-001.png"):
        tdata.read_imagefolder(imagefolder, shot="close")


def test_caption_only_rows_get_the_runs_prompt_template(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    make_imagefolder(folder, per_shot=1)
    row = json.loads((folder / "metadata.jsonl").read_text())
    del row["text"]
    (folder / "metadata.jsonl").write_text(json.dumps(row) + "\n")
    (ex,) = tdata.read_imagefolder(folder, shot="close", phrase="close-up shot", template="a {shot} film still of {caption}")
    assert ex.text == "a close-up shot film still of a person number 0 in a room"


def test_pixels_are_resized_and_cropped_square(imagefolder):
    pixels = tdata.load_pixels(imagefolder / "close" / "close-000.png", 32)
    assert pixels.shape == (3, 32, 32) and -1.0 <= pixels.min() and pixels.max() <= 1.0


# ---- memory ---------------------------------------------------------------------------------------
def test_frozen_parts_leave_memory_once_the_caches_are_built(tmp_path, imagefolder, demo_model_dir):
    from training.trainer import Trainer

    t = Trainer(smoke(imagefolder, demo_model_dir, tmp_path / "run"))
    t.check_inputs()
    t.setup()
    t.build_caches()
    assert t.parts.text_encoder is None and t.text_encoder is None       # frozen: its embeddings are cached
    assert t.parts.vae.encoder is None and t.parts.vae.decoder is not None  # only validation decodes
    assert t.caches.validation_emb.shape[0] == len(t.config.prompts()) + 1  # prompts + the empty prompt
    assert t.caches.text_emb.shape[0] == 3


def test_latents_are_encoded_a_few_images_at_a_time(imagefolder):
    import torch

    calls = []

    class Vae:
        config = type("Config", (), {"scaling_factor": 1.0})

        def encode(self, x):
            calls.append(x.shape[0])
            dist = type("Dist", (), {"mean": x[:, :4, ::8, ::8], "std": torch.ones_like(x[:, :4, ::8, ::8])})
            return type("Out", (), {"latent_dist": dist})

    paths = [e.path for e in tdata.read_imagefolder(imagefolder, shot="close")]
    cache = tdata.encode_latents(Vae(), paths, resolution=512, center_crop=True, flip=True, device="cpu",
                                 dtype=torch.float32)
    assert len(cache) == 3 and calls == [1] * 6          # 512 px: one image (and its mirror) per call
    calls.clear()
    tdata.encode_latents(Vae(), paths, resolution=64, center_crop=True, flip=False, device="cpu", dtype=torch.float32)
    assert calls == [3]


# ---- end to end -----------------------------------------------------------------------------------
def test_trainer_end_to_end_writes_status_samples_checkpoints_and_both_formats(tmp_path, imagefolder, demo_model_dir):
    from training.checkpoints import list_checkpoints
    from training.trainer import train

    out = tmp_path / "run"
    cfg = smoke(imagefolder, demo_model_dir, out, max_steps=4, validation_steps=2, checkpoint_steps=2,
                checkpoints_keep=1, cache="disk")
    result = train(cfg)
    assert result.status == "done" and result.step == 4 and len(result.losses) == 4
    assert all(np.isfinite(result.losses))
    log = events(out)
    steps = [e for e in log if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and all("it_s" in e and "eta_s" in e for e in steps)
    assert [e["step"] for e in log if e["event"] == "validation"] == [2, 4]
    assert (out / "samples" / "step-000004-1.png").is_file()
    assert [s for s, _ in list_checkpoints(out)] == [2]           # rotation kept the last one
    assert list((out / "cache").glob("*.safetensors"))             # disk cache written
    assert log[-1]["event"] == "done"
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    meta = export.read_metadata(out / "dreamshot-close.safetensors")
    assert meta["ss_network_dim"] == "4" and meta["ss_shot_type"] == "close" and meta["ss_resolution"] == "(32, 32)"
    assert meta["ss_max_train_steps"] == "4" and len(meta["ss_dataset_hash"]) == 64
    assert meta["ss_sd_model_name"] == str(demo_model_dir)
    assert not list(out.glob(".*partial"))


def test_resume_continues_the_same_loss_curve(tmp_path, imagefolder, demo_model_dir):
    from training.trainer import Trainer, train

    options = dict(max_steps=4, batch_size=2, grad_accum=2, checkpoint_steps=2, lr_scheduler="linear",
                   lr_warmup_steps=1, snr_gamma=5.0, noise_offset=0.05, random_flip=True, validation_inference_steps=1)
    whole = train(smoke(imagefolder, demo_model_dir, tmp_path / "whole", **options))

    out = tmp_path / "split"
    cfg = smoke(imagefolder, demo_model_dir, out, **options)
    first = Trainer(cfg, should_stop=lambda: first.state.step >= 2)
    part1 = first.run()
    assert part1.status == "cancelled" and part1.step == 2 and not (out / "pytorch_lora_weights.safetensors").exists()
    part2 = train(cfg, resume="latest")
    assert part2.status == "done"
    assert part1.losses == whole.losses[:2]
    assert part2.losses == whole.losses[2:]          # bit-identical continuation


def test_text_encoder_lora_trains_without_text_cache(tmp_path, imagefolder, demo_model_dir):
    from safetensors.torch import load_file

    from training.trainer import train

    out = tmp_path / "te"
    result = train(smoke(imagefolder, demo_model_dir, out, max_steps=2, train_text_encoder=True,
                         target="all", alpha=8.0))
    assert result.status == "done"
    assert len(list((out / "samples").glob("*.png"))) == 2  # validation through the trained text encoder
    caching = next(e for e in events(out) if e["event"] == "caching")
    assert caching["text_cache"] is False and "recomputed" in caching["note"]
    keys = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("text_encoder.") for k in keys) and any("attn1" in k for k in keys)
    kohya = load_file(str(out / "dreamshot-close.safetensors"))
    assert any(k.startswith("lora_te_") for k in kohya) and any(k.startswith("lora_unet_") for k in kohya)


# ---- export formats ---------------------------------------------------------------------------------
def _image(pipe):
    import torch

    g = torch.Generator().manual_seed(3)
    return pipe("a high-quality close shot picture of a woman", num_inference_steps=3, height=64, width=64,
                generator=g, output_type="np").images[0]


def test_kohya_and_diffusers_files_give_the_same_image_as_the_trained_model(tmp_path, demo_model_dir):
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from safetensors.torch import load_file

    pipe = StableDiffusionPipeline.from_pretrained(str(demo_model_dir), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    base = _image(pipe)
    torch.manual_seed(0)
    # rank 4, alpha 8 (scale 2): a random, non-zero LoRA so a wrong alpha would show
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                     target_modules=tconfig.TARGETS["cross"]))
    in_memory = _image(pipe)
    diffusers_file = export.save_diffusers(tmp_path / "out", pipe.unet)
    kohya_file = export.save_kohya(tmp_path / "out" / "k.safetensors", pipe.unet, metadata={"ss_network_alpha": "8"})
    pipe.unet.delete_adapters(["default"])

    kohya = load_file(str(kohya_file))
    alphas = {k: v for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas and all(float(v) == 8.0 for v in alphas.values())
    assert all(k.startswith("lora_unet_") and "attn2" in k for k in kohya)
    assert export.read_metadata(kohya_file)["ss_network_alpha"] == "8"

    pipe.load_lora_weights(str(diffusers_file), adapter_name="diff")
    pipe.set_adapters(["diff"], adapter_weights=[1.0])
    from_diffusers = _image(pipe)
    pipe.delete_adapters(["diff"])
    pipe.load_lora_weights(str(kohya_file), adapter_name="kohya")
    pipe.set_adapters(["kohya"], adapter_weights=[1.0])
    from_kohya = _image(pipe)
    pipe.delete_adapters(["kohya"])
    # as the Generate tab loads it: a plain state dict, so no file metadata (alpha must not depend on it)
    pipe.load_lora_weights(load_file(str(diffusers_file)), adapter_name="dict")
    pipe.set_adapters(["dict"], adapter_weights=[1.0])
    from_state_dict = _image(pipe)

    assert np.abs(in_memory - base).max() > 1e-3          # the LoRA changes the image...
    np.testing.assert_allclose(from_diffusers, in_memory, atol=1e-5)  # ...and both files reproduce it
    np.testing.assert_allclose(from_kohya, from_diffusers, atol=1e-5)
    np.testing.assert_allclose(from_state_dict, from_diffusers, atol=1e-5)


# ---- bad input ------------------------------------------------------------------------------------
def test_base_model_that_is_not_sd1_is_refused(tmp_path, imagefolder, demo_model_dir, capsys):
    from dreamshot.demo_model import MARKER
    from training.__main__ import main

    other = tmp_path / "not-sd1"
    shutil.copytree(demo_model_dir, other)
    (other / MARKER).unlink()  # the tiny model's cross_attention_dim (32) is not SD 1.x's 768
    out = tmp_path / "run"
    code = main(["--dataset", str(imagefolder), "--base-model", str(other), "--output-dir", str(out),
                 "--shot", "close", "--preset", "smoke", "--resolution", "32"])
    assert code == 2
    last = events(out)[-1]
    assert last["event"] == "error" and last["kind"] == "input" and "not SD 1.x" in last["message"]
    with pytest.raises(ModelLoadError):
        from training.components import check_base_model

        check_base_model(str(other))


def test_empty_class_is_a_clear_error(tmp_path, imagefolder, demo_model_dir):
    from training.__main__ import main

    out = tmp_path / "run"
    code = main(["--dataset", str(imagefolder), "--base-model", str(demo_model_dir), "--output-dir", str(out),
                 "--shot", "medium", "--preset", "smoke"])
    assert code == 2 and "class is empty" in events(out)[-1]["message"]


def test_out_of_memory_is_reported_and_no_lora_is_presented(tmp_path, imagefolder, demo_model_dir, monkeypatch):
    import torch

    from training import trainer
    from training.__main__ import main

    def boom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer.Trainer, "micro_step", boom)
    out = tmp_path / "run"
    code = main(["--dataset", str(imagefolder), "--base-model", str(demo_model_dir), "--output-dir", str(out),
                 "--shot", "close", "--preset", "smoke", "--resolution", "32"])
    last = events(out)[-1]
    assert code == 3 and last["kind"] == "oom" and "--batch-size" in last["message"]
    assert not (out / "pytorch_lora_weights.safetensors").exists()


def test_disk_full_during_export_leaves_no_finished_lora(tmp_path, imagefolder, demo_model_dir, monkeypatch):
    from training import export as export_module
    from training.__main__ import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "save_kohya", full)
    out = tmp_path / "run"
    code = main(["--dataset", str(imagefolder), "--base-model", str(demo_model_dir), "--output-dir", str(out),
                 "--shot", "close", "--preset", "smoke", "--resolution", "32", "--max-steps", "2",
                 "--validation-steps", "0", "--validation-inference-steps", "1"])
    log = events(out)
    assert code == 4 and log[-1]["kind"] == "disk_full" and "free space" in log[-1]["message"]
    assert not any(e["event"] == "done" for e in log)
    assert not (out / "dreamshot-close.safetensors").exists()
    assert (out / "command.txt").read_text().startswith("python -m training --dataset")


def test_prior_preservation_generates_missing_class_images(tmp_path, imagefolder, demo_model_dir):
    from training.trainer import train

    out, classes = tmp_path / "run", tmp_path / "class"
    result = train(smoke(imagefolder, demo_model_dir, out, max_steps=2, prior_preservation=True,
                         class_dir=str(classes), num_class_images=2, class_prompt="a high-quality picture",
                         mixed_precision="bf16", gradient_checkpointing=True))
    assert result.status == "done" and all(np.isfinite(result.losses))
    assert sorted(p.name for p in classes.iterdir()) == ["class-00000.png", "class-00001.png"]
    assert next(e for e in events(out) if e["event"] == "class_images") == {
        **next(e for e in events(out) if e["event"] == "class_images"), "have": 0, "generating": 2}


def test_epochs_decide_the_number_of_steps(tmp_path, imagefolder, demo_model_dir):
    from training.trainer import train

    cfg = smoke(imagefolder, demo_model_dir, tmp_path / "run", epochs=2, batch_size=2, max_steps=99)
    assert cfg.total_steps(3) == 4  # ceil(3 images / batch 2) = 2 steps per epoch
    result = train(cfg)
    assert result.status == "done" and result.step == 4
