"""Evaluate offline: the ``demo`` CLIP and DINO (tiny, random weights, built offline) are the default
on the demo model, and every place the results are shown says they measure nothing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from dreamshot.errors import ModelLoadError
from dreamshot.evaluate import embedders, report
from dreamshot.evaluate.pairs import EvalOptions
from dreamshot.evaluate.service import service
from dreamshot.evaluate.tab import EvalForm, EvaluateHandlers
from tests.evaluate_fixtures import eval_studio  # noqa: F401 (fixture)
from tests.generate_fixtures import lora_files  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_clip_and_dino_are_the_default_on_the_demo_model_and_label_the_results(eval_studio, monkeypatch):
    monkeypatch.delenv(embedders.CLIP_ENV, raising=False)
    monkeypatch.delenv(embedders.DINO_ENV, raising=False)
    assert embedders.default_clip(eval_studio) == "demo" and embedders.default_dino(eval_studio) == "demo"
    real = SimpleNamespace(model_choice=lambda: SimpleNamespace(is_demo=False))
    assert embedders.default_clip(real) == embedders.DEFAULT_CLIP      # a real base model: the real judge
    monkeypatch.setenv(embedders.CLIP_ENV, "./my-clip")
    assert embedders.default_clip(eval_studio) == "./my-clip"
    monkeypatch.delenv(embedders.CLIP_ENV)

    # The tab's form left as it comes (no model named): HF_HUB_OFFLINE is set, nothing is cached.
    form = EvalForm(name="offline", pairs=2, batch=2, size=64, steps=2, ablation=False, alpha_values="")
    options = EvaluateHandlers(eval_studio).options(form)
    res = service(eval_studio).run(EvalOptions(**{**options.__dict__, "bootstrap": 100}))
    assert res["complete"] and res["demo_models"] == ["CLIP", "DINO"]
    assert res["settings"]["clip_model"] == "demo" and "demo CLIP (tiny, random weights" in res["models"]["clip"]
    saved = json.loads((eval_studio.settings.data_dir / "evaluations" / "offline" / "results.json").read_text())
    assert saved["demo_models"] == ["CLIP", "DINO"]                    # the JSON the CLI writes
    text = report.markdown(res)
    assert "Scored with the demo CLIP/DINO: random weights, not a measurement" in text
    assert "### Table 3 - shot type in the prompt (2 pairs) - demo CLIP/DINO" in text
    assert (eval_studio.settings.models_dir / "demo-clip" / "config.json").is_file()
    real_results = {**res, "demo_models": []}
    assert "Scored with" not in report.markdown(real_results) and "- demo" not in report.markdown(real_results)

    # Hub ids are still refused when not cached, and the message names the way out.
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*'demo'"):
        service(eval_studio).clip("someone/uncached-clip")

