"""The precision setting (issue 23): ``--dtype auto|float16|bfloat16|float32`` and ``DREAMSHOT_DTYPE``
for the app and every CLI, one function deciding every model's dtype, the trainer's ``auto`` mixed
precision following it, and the page header and ``/status`` saying what is in use."""

from __future__ import annotations

import urllib.request

import pytest
import torch

from dreamshot import settings as config
from dreamshot.errors import SettingsError
from dreamshot.precision import device_and_dtype


def test_flag_variable_aliases_and_a_bad_value(monkeypatch):
    monkeypatch.delenv("DREAMSHOT_DTYPE", raising=False)
    assert config.parse([]).dtype == "auto"
    assert config.parse(["--dtype", "bf16"]).dtype == "bfloat16"
    monkeypatch.setenv("DREAMSHOT_DTYPE", "fp16")
    assert config.parse([]).dtype == "float16"
    assert config.parse(["--dtype", "float32"]).dtype == "float32"        # the flag wins
    assert config.Settings(dtype="half").dtype == "float16"
    with pytest.raises(SettingsError, match=r"^--dtype \(DREAMSHOT_DTYPE\) must be one of auto, float16, bfloat16, "
                                            r"float32; got 'int8'\.$"):
        config.parse(["--dtype", "int8"])


def test_one_function_decides_the_device_and_dtype(monkeypatch):
    cpu = torch.device("cpu")
    assert device_and_dtype("auto") == (cpu, torch.float32)
    assert device_and_dtype("float16") == (cpu, torch.float16)
    assert device_and_dtype("bfloat16") == (cpu, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_and_dtype("auto") == (torch.device("cuda"), torch.float16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(SettingsError, match="This GPU has no bfloat16"):
        device_and_dtype("bfloat16")


def test_every_cli_takes_dtype_before_or_after_its_subcommand(tmp_path, monkeypatch):
    from dreamshot.__main__ import build_parser as dreamshot_parser
    from labeling.__main__ import build_parser as labeling_parser
    from training.__main__ import build_parser as training_parser, trainer_config

    monkeypatch.delenv("DREAMSHOT_DTYPE", raising=False)
    for argv in (["--dtype", "float16", "loras"], ["loras", "--dtype", "float16"]):
        assert config.from_args(dreamshot_parser().parse_args(argv)).dtype == "float16"
    assert config.from_args(labeling_parser().parse_args(["stats", "--dtype", "bf16"])).dtype == "bfloat16"
    common = ["--dataset", str(tmp_path), "--shot", "close", "--base-model", str(tmp_path), "--output-dir",
              str(tmp_path / "run")]
    parse = training_parser().parse_args
    assert trainer_config(parse([*common, "--dtype", "bfloat16"])).mixed_precision == "bf16"
    assert trainer_config(parse([*common, "--dtype", "float32"])).mixed_precision == "no"
    assert trainer_config(parse(common)).mixed_precision == "auto"                  # decided on the device
    assert trainer_config(parse([*common, "--dtype", "float16", "--mixed-precision", "bf16"])).mixed_precision == "bf16"


def test_the_job_runner_trains_in_the_studio_precision(make_studio):
    from training import jobs

    runner = jobs.service(make_studio(dtype="bfloat16"))
    [cfg] = runner.check_request(jobs.TrainRequest(shots=["close"], preset="smoke"))
    assert cfg.mixed_precision == "bf16"
    [cfg] = runner.check_request(jobs.TrainRequest(shots=["close"], preset="smoke",
                                                   overrides={"mixed_precision": "no"}))
    assert cfg.mixed_precision == "no"


def test_captioner_loads_in_the_studio_precision(make_studio, tmp_path):
    from PIL import Image

    from labeling.captions import jobs as caption_jobs
    from labeling.captions.captioner import GenerationOptions
    from labeling.captions.tiny_blip2 import build_tiny_blip2

    captioner = caption_jobs.service(make_studio(dtype="bfloat16")).captioner(str(build_tiny_blip2(tmp_path / "b")))
    assert captioner.dtype == torch.bfloat16
    assert captioner.model.language_model.get_input_embeddings().weight.dtype == torch.bfloat16
    texts = captioner.caption([Image.new("RGB", (40, 30), "red")], GenerationOptions(max_new_tokens=3, min_new_tokens=3))
    assert len(texts) == 1


def test_header_and_status_show_the_precision(make_studio, serve, one_torch_thread):
    from gradio_client import Client

    studio = make_studio(dtype="bfloat16")
    url = serve(studio)
    with urllib.request.urlopen(url, timeout=30) as page:
        assert "Weights: bfloat16 (`--dtype`)" in page.read().decode()
    client = Client(url, verbose=False)
    status = client.predict(api_name="/status")
    assert (status["dtype"], status["precision"]) == ("bfloat16", "bfloat16")
    studio.models.pipeline()
    status = client.predict(api_name="/status")
    assert status["precision"] == "bfloat16 on cpu" and status["model_loaded"]
