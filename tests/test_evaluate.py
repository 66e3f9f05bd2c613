"""Evaluation end to end on the demo model with tiny CLIP/DINO from configs: pairs, resume,
results (Tables 3-4, α curve, judge), contamination, bad input, sharding and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dreamshot.errors import InvalidInput, ModelLoadError
from dreamshot.evaluate import pairs
from dreamshot.evaluate.pairs import EvalOptions
from dreamshot.evaluate.service import service
from tests.evaluate_fixtures import add_held_out, eval_studio, tiny_eval_models, write_metadata  # noqa: F401
from tests.generate_fixtures import lora_files  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = dict(width=64, height=64, steps=2, batch=4, bootstrap=200, alpha_values=[0.0, 1.0], alpha_subset=1)


def opts(tmp_path, models, **kw) -> EvalOptions:
    return EvalOptions(out=str(tmp_path / "eval"), clip_model=models["clip"], dino_model=models["dino"],
                       pairs=4, **{**FAST, **kw})


def test_run_writes_pairs_tables_alpha_curve_and_judge(eval_studio, tiny_eval_models, tmp_path):
    res = service(eval_studio).run(opts(tmp_path, tiny_eval_models))
    out = tmp_path / "eval"
    lines = pairs.read_jsonl(out / "pairs.jsonl")
    assert len(lines) == 8 and res["complete"] and res["pairs_done"] == 8
    main = [r for r in lines if not r["ablation"]]
    assert sorted(r["shot"] for r in main) == ["close", "close", "medium", "medium"]     # even over shots
    first = next(r for r in lines if r["id"] == "00000-shot")
    twin = next(r for r in lines if r["id"] == "00000-noshot")
    assert first["prompt"] == f"a high-quality {first['shot']} shot picture of {first['caption']}"
    assert twin["prompt"] == f"a high-quality picture of {first['caption']}" and twin["seed"] == first["seed"]
    from dreamshot.generate import pngmeta

    text = pngmeta.read_parameters(out / first["tuned_image"])
    assert f"Seed: {first['seed']}" in text and "<lora:" in text
    assert "<lora:" not in pngmeta.read_parameters(out / first["base_image"])
    t3 = res["tables"]["table3"]
    assert t3["n_pairs"] == 4 and set(t3["clip_t"]["per_shot"]) == {"close", "medium"}
    row = t3["dino"]["overall"]
    assert row["ci_low"] <= row["diff"] <= row["ci_high"] and row["n"] == 4
    assert res["tables"]["table4"]["n_pairs"] == 4
    assert [a["alpha"] for a in res["alpha_curve"]] == [0.0, 1.0]
    assert res["judge"]["kind"] == "zeroshot"                  # too few labeled frames for a probe
    assert tiny_eval_models["clip"] in res["models"]["clip"] and "sha256" in res["models"]["dino"]
    assert (out / "results.csv").read_text().startswith("table,metric,shot")
    assert (out / "results.png").stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["tables"] == json.loads(json.dumps(res["tables"]))


def test_resume_skips_done_pairs_and_stop_is_never_complete(eval_studio, tiny_eval_models, tmp_path):
    from dreamshot.generate.service import Job

    svc = service(eval_studio)
    job = Job()
    seen = []

    def progress(fraction, text):
        seen.append(text)
        if len(seen) == 2:
            job.cancel()

    res = svc.run(opts(tmp_path, tiny_eval_models, batch=1), progress=progress, job=job)
    assert not res["complete"] and res["stopped"] == "stopped" and 0 < res["pairs_done"] < 8
    assert "ETA" in seen[0]
    out = tmp_path / "eval"
    assert json.loads((out / "results.json").read_text())["complete"] is False
    done_before = {r["id"]: (out / r["base_image"]).stat().st_mtime_ns for r in pairs.read_jsonl(out / "pairs.jsonl")}
    res = svc.run(opts(tmp_path, tiny_eval_models, batch=1))
    assert res["complete"] and res["pairs_done"] == 8
    after = {r["id"]: r for r in pairs.read_jsonl(out / "pairs.jsonl")}
    assert len(after) == 8
    for pid, mtime in done_before.items():                      # not generated again
        assert (out / after[pid]["base_image"]).stat().st_mtime_ns == mtime
    with pytest.raises(InvalidInput, match="other settings"):
        svc.run(opts(tmp_path, tiny_eval_models, steps=3))
