"""The training methods besides a LoRA, on the tiny demo model: textual inversion (only the token's
rows learn; the A1111 file loads in diffusers' ``load_textual_inversion``; resume continues the same
embedding) and the full fine-tune (memory check before loading, 8-bit optimizer message, the UNet
delta, and the extracted LoRA reproducing the fine-tune's image at full rank), plus the job runner's
library entries, the run history and the Train tab's method fields."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from dreamshot.errors import InvalidInput
from tests.training_helpers import make_imagefolder, smoke_config, status_events
from training import config as tconfig

FAST = dict(resolution=32, validation_steps=0, validation_inference_steps=1, checkpoint_steps=0)
PROMPT = "a high-quality {} picture of a woman in a red coat"
# Measured on the tiny model (float32, CPU): the full-rank LoRA's image differs from the fine-tune's
# by at most 1.8e-6 (pixel values in [0, 1]) where the fine-tune itself moved pixels by up to 0.26.
FULL_RANK_PIXEL_TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def imagefolder(tmp_path):
    return make_imagefolder(tmp_path / "set", shots=("close", "long"), per_shot=3)


def smoke(imagefolder, demo_model_dir, out, **changes):
    return smoke_config(imagefolder, demo_model_dir, out, **{**FAST, **changes})


events = status_events


def whole_and_cancelled_at_2(trainer_class, imagefolder, demo_model_dir, tmp_path, options):
    """(the uninterrupted run's result, the split run's folder and config): the same run twice, the
    second cancelled after step 2 (and checked to have stopped), ready for a resume."""
    from training.trainer import train

    whole = train(smoke(imagefolder, demo_model_dir, tmp_path / "whole", **options))
    out = tmp_path / "split"
    cfg = smoke(imagefolder, demo_model_dir, out, **options)
    first = trainer_class(cfg, should_stop=lambda: first.state.step >= 2)
    assert first.run().status == "cancelled"
    return whole, out, cfg


def pipeline(demo_model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(demo_model_dir), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe, prompt):
    import torch

    return pipe(prompt, num_inference_steps=3, height=64, width=64, generator=torch.Generator().manual_seed(3),
                output_type="np").images[0]


# ---- settings ---------------------------------------------------------------------------------------
def test_method_settings_defaults_and_flags(tmp_path):
    from training.__main__ import build_parser

    ti = tconfig.preset("smoke", method="ti", shot="close").validate()
    # the default token is a plain word, the embedding file's name, so A1111 and ComfyUI take it as is (#22)
    assert (ti.placeholder, ti.initializer, ti.learning_rate) == ("close-shot", "close", 5e-3)
    assert ti.prompts()[0] == "a high-quality close-shot picture of a woman in a red coat standing in the rain"
    phrase = tconfig.TrainConfig(shot="close_up", shot_phrase="close-up shot", method="ti")
    assert (phrase.placeholder, phrase.initializer) == ("close_up-shot", "close-up")
    assert tconfig.preset("paper", method="full").learning_rate == 5e-6
    assert tconfig.preset("paper").learning_rate == 1e-4 and tconfig.preset("paper").method == "lora"

    args = build_parser().parse_args(["--dataset", "d", "--preset", "smoke", "--method", "ti", "--token", "<cu>",
                                      "--init-word", "close-up", "--num-vectors", "3"])
    cfg = tconfig.from_namespace(args)
    assert (cfg.method, cfg.placeholder, cfg.initializer, cfg.num_vectors, cfg.learning_rate) == (
        "ti", "<cu>", "close-up", 3, 5e-3)
    args = build_parser().parse_args(["--dataset", "d", "--method", "full", "--extract-rank", "16",
                                      "--optimizer", "adamw8bit", "--freeze-non-lora", "--learning-rate", "1e-5"])
    cfg = tconfig.from_namespace(args)
    assert (cfg.method, cfg.extract_rank, cfg.optimizer, cfg.freeze_non_lora, cfg.learning_rate) == (
        "full", 16, "adamw8bit", True, 1e-5)
    cfg.save(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "full"

    bad = tconfig.preset("smoke", method="ti", token="two words", train_text_encoder=True)
    text = " ".join(bad.problems())
    assert "--token must be" in text and "--train-text-encoder is for LoRA runs" in text
    assert "--method must be one of" in " ".join(tconfig.preset("smoke", method="dreambooth").problems())


def test_textual_inversion_prompts_put_the_token_where_the_shot_words_stand(tmp_path):
    from training import data as tdata
    from training.ti import expand

    folder = make_imagefolder(tmp_path / "set", per_shot=2)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    del rows[1]["caption"]  # a row with only its full text: the shot words are replaced
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = tdata.read_imagefolder(folder, shot="close", phrase="close shot", template="a {shot} still of {caption}",
                                      placeholder="<close-shot>")
    assert [e.text for e in examples] == ["a <close-shot> still of a person number 0 in a room",
                                          "a high-quality <close-shot> picture of a person number 1 in a room"]
    assert expand("a <t> b", "<t>", 3) == "a <t> <t>_1 <t>_2 b"


# ---- textual inversion --------------------------------------------------------------------------------
def test_textual_inversion_learns_only_its_token_and_loads_in_diffusers(tmp_path, imagefolder, demo_model_dir):
    import torch
    from safetensors import safe_open
    from transformers import CLIPTextModel

    from training.ti import TextualInversionTrainer

    out = tmp_path / "ti"
    trainer = TextualInversionTrainer(smoke(imagefolder, demo_model_dir, out, method="ti", num_vectors=2,
                                            max_steps=3, learning_rate=0.05, validation_steps=2))
    result = trainer.run()
    # the file is named after the token: AUTOMATIC1111 names an embedding after its file (#22)
    assert result.status == "done" and result.files == {"embedding": "close-shot.safetensors"}
    done = events(out)[-1]
    assert done["event"] == "done" and done["method"] == "ti" and done["token"] == "close-shot"
    validation = [e for e in events(out) if e["event"] == "validation"]
    assert validation and "close-shot" in validation[0]["prompts"][0]

    path = out / "close-shot.safetensors"
    with safe_open(str(path), "pt") as fh:
        keys, meta, rows = list(fh.keys()), fh.metadata(), fh.get_tensor("emb_params")
    assert keys == ["emb_params"] and tuple(rows.shape) == (2, 32)
    assert (meta["token"], meta["shot"], meta["method"], meta["init_word"], meta["steps"]) == (
        "close-shot", "close", "ti", "close", "3")
    assert meta["base_model"] == str(demo_model_dir) and len(meta["dataset_hash"]) == 64
    assert not list(out.glob(".*partial"))

    # Only the token's rows learned: every other row is the base model's, bit for bit.
    base = CLIPTextModel.from_pretrained(str(demo_model_dir), subfolder="text_encoder").get_input_embeddings().weight
    trained = trainer.embeddings.weight.detach()
    assert trained.shape[0] == base.shape[0] + 2
    assert torch.equal(trained[: base.shape[0]], base.detach())
    init = base[trainer.parts.tokenizer.encode("close", add_special_tokens=False)[0]].detach()
    assert all(float((trained[i] - init).abs().max()) > 1e-3 for i in trainer.token_ids)  # ...and they moved
    assert torch.equal(trained[trainer.token_ids], rows)

    # diffusers reads the file: the token's prompt embedding is the trainer's, and it changes the image.
    pipe = pipeline(demo_model_dir)
    prompt = PROMPT.format("close-shot")
    pipe.load_textual_inversion(str(path), token=path.stem)      # the file name is the token
    without = image(pipe, prompt.replace("close-shot ", ""))
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    assert (ids == pipe.tokenizer.convert_tokens_to_ids("close-shot_1")).any()
    with torch.no_grad():
        mine = trainer.accelerator.unwrap_model(trainer.text_encoder)(ids)[0]
        theirs = pipe.text_encoder(ids)[0]
    torch.testing.assert_close(theirs, mine, atol=1e-6, rtol=1e-5)
    assert np.abs(image(pipe, prompt) - without).max() > 1e-2


def test_textual_inversion_resume_continues_the_same_embedding(tmp_path, imagefolder, demo_model_dir):
    from safetensors.torch import load_file

    from training.ti import TextualInversionTrainer
    from training.trainer import train

    options = dict(method="ti", max_steps=4, checkpoint_steps=2, learning_rate=0.05, weight_decay=0.1)
    whole, out, cfg = whole_and_cancelled_at_2(TextualInversionTrainer, imagefolder, demo_model_dir, tmp_path, options)
    assert (out / "checkpoints" / "checkpoint-2" / "embedding_state.safetensors").is_file()
    second = train(cfg, resume="latest")
    assert second.status == "done" and second.losses == whole.losses[2:]
    name = "close-shot.safetensors"     # named after its token (#22)
    assert load_file(str(out / name))["emb_params"].equal(load_file(str(tmp_path / "whole" / name))["emb_params"])


# ---- full fine-tune -------------------------------------------------------------------------------------
def test_full_finetune_memory_check_refuses_before_loading(tmp_path, imagefolder, demo_model_dir, monkeypatch):
    from diffusers import UNet2DConditionModel

    from training import components, full
    from training.trainer import train

    params = full.unet_parameters(str(demo_model_dir))
    unet = UNet2DConditionModel.from_pretrained(str(demo_model_dir), subfolder="unet")
    assert params == sum(p.numel() for p in unet.parameters())

    sd15 = tconfig.preset("paper", method="full")
    plain = full.required_bytes(full.SD15_UNET_PARAMS, sd15) / full.GIB
    lean = full.required_bytes(full.SD15_UNET_PARAMS, sd15.updated(optimizer="adamw8bit",
                                                                   gradient_checkpointing=True)) / full.GIB
    assert 20 < plain < 30 and 10 < lean < 16  # SD 1.5: ~24 GB with AdamW, fits 16 GB in 8 bits + checkpointing
    with pytest.raises(InvalidInput, match=r"needs about 2\d\.\d GiB .* has 16\.0 GiB free.*--gradient-checkpointing"):
        full.check_memory(full.SD15_UNET_PARAMS, sd15, 16 * full.GIB)
    full.check_memory(full.SD15_UNET_PARAMS, sd15, 80 * full.GIB)
    full.check_memory(full.SD15_UNET_PARAMS, sd15, None)  # not a CUDA device: no check

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the memory check")

    monkeypatch.setattr(full, "free_memory", lambda device: 1 << 20)  # a GPU with 1 MiB free
    monkeypatch.setattr(components, "load", must_not_load)
    with pytest.raises(InvalidInput, match="GPU memory"):
        train(smoke(imagefolder, demo_model_dir, tmp_path / "run", method="full"))


def test_adamw8bit_without_bitsandbytes_is_refused_with_a_clear_message(tmp_path, imagefolder, demo_model_dir,
                                                                        monkeypatch):
    import importlib.util

    from training import components
    from training.trainer import train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    monkeypatch.setattr(components, "load", lambda *a, **k: pytest.fail("loaded before the optimizer check"))
    with pytest.raises(InvalidInput, match="adamw8bit needs the bitsandbytes package"):
        train(smoke(imagefolder, demo_model_dir, tmp_path / "run", method="full", optimizer="adamw8bit"))


def test_full_finetune_extracted_lora_reproduces_the_finetune_at_full_rank(tmp_path, imagefolder, demo_model_dir):
    import torch
    from safetensors.torch import load_file

    from training import extract
    from training.__main__ import main

    out = tmp_path / "full"
    code = main(["--dataset", str(imagefolder), "--base-model", str(demo_model_dir), "--output-dir", str(out),
                 "--shot", "close", "--preset", "smoke", "--method", "full", "--learning-rate", "2e-3",
                 "--max-steps", "3", "--resolution", "32", "--validation-steps", "0", "--checkpoint-steps", "0",
                 "--validation-inference-steps", "1", "--freeze-non-lora", "--extract-rank", "4096"])
    assert code == 0
    done = events(out)[-1]
    assert done["method"] == "full" and done["files"] == {"kohya": "dreamshot-close.safetensors",
                                                          "delta": "unet_delta.safetensors",
                                                          "extraction": "extraction.json"}
    summary = done["extraction"]
    assert summary["layers"] == 79 and summary["max_error"] < 1e-6 and summary["not_in_lora"] == 0
    report = json.loads((out / "extraction.json").read_text())
    assert len(report["per_layer"]) == 79 and report["max_error"] == summary["max_error"]

    pipe = pipeline(demo_model_dir)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    delta = load_file(str(out / "unet_delta.safetensors"))
    assert set(delta) <= extract.lora_weight_names(pipe.unet) and len(delta) == 79  # changed tensors only
    prompt = PROMPT.format("close shot")
    base_image = image(pipe, prompt)
    pipe.unet.load_state_dict({k: v + delta.get(k, torch.zeros_like(v)) for k, v in base_state.items()})
    finetuned = image(pipe, prompt)
    pipe.unet.load_state_dict(base_state)
    pipe.load_lora_weights(str(out / "dreamshot-close.safetensors"), adapter_name="full")
    pipe.set_adapters(["full"], adapter_weights=[1.0])
    from_lora = image(pipe, prompt)
    assert np.abs(finetuned - base_image).max() > 0.05  # the fine-tune changes the image...
    assert np.abs(from_lora - finetuned).max() < FULL_RANK_PIXEL_TOLERANCE  # ...and the LoRA reproduces it

    low = extract.extract(base_state, {k: v + delta.get(k, 0) for k, v in base_state.items()}, set(delta), 1)
    assert low.summary()["mean_error"] > 0.1 and min(low.errors.values()) > 0
    assert low.alpha == 1 and all(v.shape[0] == 1 for k, v in low.state.items() if "lora_down" in k)


def test_full_finetune_resumes_and_reports_what_the_lora_cannot_carry(tmp_path, imagefolder, demo_model_dir):
    from safetensors.torch import load_file

    from training.full import FullTrainer
    from training.trainer import train

    options = dict(method="full", max_steps=4, checkpoint_steps=2, learning_rate=1e-3, extract_rank=4)
    whole, out, cfg = whole_and_cancelled_at_2(FullTrainer, imagefolder, demo_model_dir, tmp_path, options)
    assert (out / "checkpoints" / "checkpoint-2" / "unet_state.safetensors").is_file()
    assert train(cfg, resume="latest").losses == whole.losses[2:]
    a, b = load_file(str(out / "unet_delta.safetensors")), load_file(str(tmp_path / "whole" / "unet_delta.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    summary = events(out)[-1]["extraction"]
    # Biases, norms, conv_in/out and the time embedding trained too (kohya's default): outside the LoRA.
    assert summary["not_in_lora"] > 0 and summary["not_in_lora_max"] > 0
    assert any(k.endswith(".bias") for k in a) and "conv_in.weight" in a
    assert summary["rank"] == 4 and 0 < summary["mean_error"] <= summary["max_error"] < 1


@pytest.mark.parametrize("method", ["ti", "full"])
def test_methods_train_in_mixed_precision_with_prior_preservation(tmp_path, imagefolder, demo_model_dir, method):
    """bf16 (the CPU's mixed precision; a GPU's fp16 takes the same path): the trained part stays fp32,
    the frozen ones do not, and the class images are generated under autocast."""
    import numpy as np

    from training.trainer import train

    out, classes = tmp_path / "run", tmp_path / "class"
    result = train(smoke(imagefolder, demo_model_dir, out, method=method, max_steps=2, mixed_precision="bf16",
                         gradient_checkpointing=True, prior_preservation=True, class_dir=str(classes),
                         num_class_images=1, extract_rank=2))
    assert result.status == "done" and all(np.isfinite(result.losses))
    assert [p.name for p in classes.iterdir()] == ["class-00000.png"]


# ---- job runner, history, tab --------------------------------------------------------------------------
def test_runner_puts_each_method_in_the_library_and_the_history(studio, tmp_path):
    from dreamshot.generate.loras import LoraLibrary
    from training import jobs, views

    dataset = str(make_imagefolder(tmp_path / "set", shots=("close", "long"), per_shot=2))
    runner = jobs.TrainingRunner(studio, poll_s=0.2)
    with pytest.raises(InvalidInput, match="one shot type at a time"):
        runner.submit(jobs.TrainRequest(["close", "long"], "smoke", {"method": "ti", "token": "<x>"}, dataset=dataset))
    made = {}
    for method, extra in [("ti", {"num_vectors": 2}), ("full", {"extract_rank": 8})]:
        (run,) = runner.submit(jobs.TrainRequest(["close"], "smoke", {**FAST, "max_steps": 2, "method": method,
                                                                       **extra}, dataset=dataset))
        made[method] = run
    assert made["ti"].name == f"close-ti-run{made['ti'].id}" and made["ti"].method == "ti"
    assert made["ti"].train_config.learning_rate == 5e-3  # the method's default on top of the preset
    deadline = time.time() + 300
    while any(r.active for r in runner.list_runs()) and time.time() < deadline:
        runner.tick()
        time.sleep(0.3)
    runs = {r.method: r for r in runner.list_runs()}
    assert all(r.status == "done" for r in runs.values()), [(r.method, r.error) for r in runs.values()]

    library = {e.name: e for e in LoraLibrary(studio).list()}
    emb, full = (library[made[m].name] for m in ("ti", "full"))
    assert (emb.kind, emb.method, emb.token, emb.format) == ("embedding", "ti", "close-shot", "a1111")
    assert emb.path == made["ti"].output_dir / "close-shot.safetensors" and emb.a1111_name == "close-shot"
    assert (full.kind, full.method, full.format) == ("lora", "full", "kohya")
    assert full.meta["rank"] == 8 and 0 < full.meta["mean_error"] <= full.meta["max_error"]
    assert full.meta["delta_file"].endswith("unet_delta.safetensors")
    assert runs["full"].result["extraction"]["layers"] == 79
    assert f"<b>#{made['ti'].id} close</b> · TI · done" in views.bar_html(runner.progress(made["ti"].id))
    rows = {row[0]: row[5] for row in views.history_rows(runner.list_runs())}
    assert rows[made["ti"].id].startswith("TI close-shot ×2 · smoke · lr 0.005")
    assert rows[made["full"].id].startswith("Full (adamw) → LoRA r8 · smoke")


def test_train_tab_method_fields_and_form(studio, monkeypatch):
    import inspect

    from training import jobs, tab, views

    monkeypatch.setattr(jobs.TrainingRunner, "start", lambda self: self)
    ui = tab.TrainHandlers(studio)
    ti_box, full_box, motion_box, lr, *lora_only = ui.method_fields("ti", "smoke")
    assert (ti_box.visible, full_box.visible, motion_box.visible, lr) == (True, False, False, 5e-3)
    assert len(lora_only) == len(tab.LORA_ONLY) and not any(u["visible"] for u in lora_only)
    ti_box, full_box, motion_box, lr, *_ = ui.method_fields("full", "paper")
    assert (ti_box.visible, full_box.visible, motion_box.visible, lr) == (False, True, False, 5e-6)
    ti_box, full_box, motion_box, lr, *lora_only = ui.method_fields("lora", "paper")
    assert (ti_box.visible, full_box.visible, motion_box.visible, lr) == (False, False, False, 1e-4)
    assert all(u["visible"] for u in lora_only)
    ti_box, full_box, motion_box, lr, *lora_only = ui.method_fields("motion", "paper")
    assert (ti_box.visible, full_box.visible, motion_box.visible) == (False, False, True)
    shown = {name for name, u in zip(tab.LORA_ONLY, lora_only) if u["visible"]}
    assert shown == {"rank", "alpha", "target"}       # a motion run is a LoRA, never a text-encoder one

    endpoint = tab.start_api(ui)
    names = list(inspect.signature(endpoint).parameters)
    assert names[1:5] == ["shots", "preset", "dataset", "hub_token"]
    assert names[-9:] == ["method", "token", "init_word", "num_vectors", "optimizer", "extract_rank",
                          "freeze_non_lora", "motion_adapter", "clip_frames"]  # new inputs last: older callers work
    values = {**{n: getattr(tconfig.preset("smoke"), n) for n in views.PARAM_NAMES},
              "method": "ti", "token": " ", "init_word": "close-up", "num_vectors": 3.0, "optimizer": "adamw",
              "extract_rank": 64, "freeze_non_lora": False, "motion_adapter": "", "clip_frames": 8}
    form = views.TrainForm.from_inputs(["close"], "smoke", "", "", *[values[n] for n in views.FORM_NAMES])
    overrides = form.overrides()
    assert overrides["method"] == "ti" and overrides["num_vectors"] == 3 and "token" not in overrides
    assert overrides["init_word"] == "close-up"
