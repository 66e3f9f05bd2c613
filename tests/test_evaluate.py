"""Evaluation end to end on the demo model with tiny CLIP/DINO from configs: pairs, resume,
results (Tables 3-4, α curve, judge), contamination, bad input, sharding and the CLI."""

from __future__ import annotations

import json

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
    settings = {"out": str(tmp_path / "eval"), "clip_model": models["clip"], "dino_model": models["dino"],
                "pairs": 4, **FAST, **kw}
    return EvalOptions(**settings)


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
    # The judge chooses among every shot type of the project, not only the two evaluated here.
    assert list(res["judge"]["labeled"]) == ["close", "medium", "long"]
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


def test_two_ranks_split_the_pairs_and_rank_zero_merges(eval_studio, tiny_eval_models, tmp_path, monkeypatch):
    svc = service(eval_studio)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    shard = svc.run(opts(tmp_path, tiny_eval_models))
    out = tmp_path / "eval"
    assert shard["shard"] == 1 and not (out / "results.json").exists()
    ones = pairs.read_jsonl(out / "shards" / "pairs-1.jsonl")
    plan = [i["id"] for i in json.loads((out / "plan.json").read_text())["items"]]
    assert {r["id"] for r in ones} == {p for n, p in enumerate(plan) if n % 2 == 1 and not p[6:].startswith("a")}
    monkeypatch.setenv("RANK", "0")
    res = svc.run(opts(tmp_path, tiny_eval_models), wait_for_shards=5)
    assert res["complete"] and res["pairs_done"] == 8 and res["alpha_done"] == 2
    merged = pairs.read_jsonl(out / "pairs.jsonl")
    assert [r["id"] for r in merged] == sorted(r["id"] for r in merged) and len(merged) == 8
    monkeypatch.setenv("WORLD_SIZE", "1")
    again = svc.merge_and_score(opts(tmp_path, tiny_eval_models))
    assert again["tables"] == res["tables"]


def test_rank_zero_never_presents_missing_shards_as_complete(eval_studio, tiny_eval_models, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    res = service(eval_studio).run(opts(tmp_path, tiny_eval_models), wait_for_shards=0.1)
    assert not res["complete"] and "shards [1]" in res["stopped"] and res["pairs_done"] == 4


def _training_run_on(studio, folder, frame_ids, images=()):
    from dreamshot import schema
    from dreamshot.storage import now

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"file_name": f"img{i}.png", "frame_id": fid, "shot": "close"} for i, fid in enumerate(frame_ids)]
    rows += [{"file_name": p.name, "shot": "close"} for p in images]
    write_metadata(folder, rows)
    with studio.db.write() as conn:
        conn.execute(schema.training_runs.insert().values(
            name="r", shot="close", status="done", config={"train": {"dataset": str(folder)}}, output_dir="runs/r",
            step=1, total_steps=1, created_at=now()))


def test_frames_used_for_training_are_refused_unless_overridden(eval_studio, tiny_eval_models, tmp_path):
    from dreamshot.evaluate import report

    test_ids = add_held_out(eval_studio, 1, seed=5)          # extra frames; one of them was trained on
    _training_run_on(eval_studio, tmp_path / "trainset", [test_ids[0]])
    svc = service(eval_studio)
    with pytest.raises(InvalidInput, match="used for training"):
        svc.run(opts(tmp_path, tiny_eval_models, pairs=9))
    res = svc.run(opts(tmp_path, tiny_eval_models, pairs=9, allow_contaminated=True, ablation=False))
    assert res["contaminated_frames"] == [f"frame-{test_ids[0]}"] and res["contamination_override"]
    assert "Contaminated" in report.markdown(res)


def test_imagefolder_source_and_its_contamination_by_file_hash(eval_studio, tiny_eval_models, tmp_path):
    import shutil

    from PIL import Image

    folder = tmp_path / "held"
    folder.mkdir()
    rows = []
    for i, shot in enumerate(["close", "medium"]):
        Image.new("RGB", (40, 40), (i * 90, 30, 200)).save(folder / f"{shot}.png")
        rows.append({"file_name": f"{shot}.png", "shot": shot, "caption": f"a dog number {i}"})
    write_metadata(folder, rows)
    train = tmp_path / "train"
    train.mkdir()
    shutil.copyfile(folder / "close.png", train / "copied.png")
    svc = service(eval_studio)
    res = svc.run(opts(tmp_path, tiny_eval_models, frames=str(folder), pairs=2, ablation=False))
    assert res["complete"] and res["pairs_done"] == 2
    _training_run_on(eval_studio, train, [], images=[train / "copied.png"])
    with pytest.raises(InvalidInput, match="1 held-out frame"):
        svc.run(opts(tmp_path, tiny_eval_models, frames=str(folder), pairs=2, ablation=False, out=str(tmp_path / "e2")))


def test_bad_input_gets_one_clear_message(eval_studio, tiny_eval_models, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from dreamshot.generate.loras import LoraLibrary

    svc = service(eval_studio)
    with pytest.raises(ModelLoadError, match="does not exist"):
        svc.run(opts(tmp_path, tiny_eval_models, clip_model=str(tmp_path / "nope")))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        svc.run(opts(tmp_path, tiny_eval_models, dino_model="someone/unknown-dino"))
    with pytest.raises(InvalidInput, match="Unknown shot type"):
        svc.run(opts(tmp_path, tiny_eval_models, shots=["closeup"]))
    with pytest.raises(InvalidInput, match="No LoRA for the shot type 'long'"):
        svc.run(opts(tmp_path, tiny_eval_models, shots=["long"]))
    with pytest.raises(InvalidInput, match="not a multiple of 8"):
        svc.run(opts(tmp_path, tiny_eval_models, width=60))
    with pytest.raises(InvalidInput, match="Batch size"):
        svc.run(opts(tmp_path, tiny_eval_models, batch=0))
    with pytest.raises(InvalidInput, match="at least 1"):
        svc.run(opts(tmp_path, tiny_eval_models, pairs=0))
    empty = tmp_path / "empty"
    empty.mkdir()
    write_metadata(empty, [])
    with pytest.raises(InvalidInput, match="Zero pairs"):
        svc.run(opts(tmp_path, tiny_eval_models, frames=str(empty)))
    write_metadata(empty, [{"file_name": "gone.png", "shot": "close", "caption": "x"}])
    with pytest.raises(InvalidInput, match="missing: gone.png"):
        svc.run(opts(tmp_path, tiny_eval_models, frames=str(empty)))
    lib = LoraLibrary(eval_studio)
    state = load_file(str(lib.get("close").path))
    key = next(k for k in state if "lora" in k.lower())
    state[key] = torch.zeros(state[key].shape[0], 999)
    save_file(state, str(tmp_path / "other_base.safetensors"))
    lib.register(tmp_path / "other_base.safetensors", name="sdxl-ish", shot="long", origin="uploaded")
    with pytest.raises(InvalidInput, match="sdxl-ish|other_base"):
        svc.run(opts(tmp_path, tiny_eval_models, shots=["long"]))
    assert not (tmp_path / "eval" / "pairs.jsonl").exists()       # nothing generated by any refusal


def test_cli_end_to_end_and_its_errors(eval_studio, tiny_eval_models, tmp_path, capsys):
    from dreamshot.__main__ import main

    data = str(eval_studio.settings.data_dir)
    args = ["evaluate", "--data", data, "--model", "demo", "--out", str(tmp_path / "cli"), "--pairs", "2",
            "--clip-model", tiny_eval_models["clip"], "--dino-model", tiny_eval_models["dino"],
            "--width", "64", "--height", "64", "--steps", "2", "--alpha-values", "0,1", "--alpha-subset", "1",
            "--bootstrap", "100"]
    assert main(args) == 0
    res = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert res["complete"] and res["pairs_done"] == 4 and res["settings"]["pairs"] == 2
    assert main(args + ["--merge"]) == 0
    bad = ["evaluate", "--data", data, "--model", "demo", "--out", str(tmp_path / "bad"),
           "--clip-model", str(tmp_path / "missing")]
    assert main(bad) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: The CLIP model folder")


def test_scores_equal_cosines_computed_by_hand_with_transformers(eval_studio, tiny_eval_models, tmp_path):
    """CLIP-T and DINO of one pair recomputed here from the raw models: CLIP image/text projections,
    DINO's CLS token of last_hidden_state (no pooler)."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPTokenizer, ViTModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    service(eval_studio).run(opts(tmp_path, tiny_eval_models, pairs=2, ablation=False, alpha_subset=0))
    out = tmp_path / "eval"
    rec = pairs.read_jsonl(out / "pairs.jsonl")[0]
    score = next(s for s in pairs.read_jsonl(out / "scores.jsonl") if s["id"] == rec["id"])
    tuned = Image.open(out / rec["tuned_image"]).convert("RGB")
    frame = Image.open(rec["frame_path"]).convert("RGB")

    clip = CLIPModel.from_pretrained(tiny_eval_models["clip"]).eval()
    tok = CLIPTokenizer.from_pretrained(tiny_eval_models["clip"])
    proc = CLIPImageProcessorPil.from_pretrained(tiny_eval_models["clip"])
    with torch.no_grad():
        img = clip.vision_model(pixel_values=proc(images=[tuned], return_tensors="pt")["pixel_values"]).pooler_output
        img = clip.visual_projection(img)[0].numpy()
        ids = tok([rec["prompt"]], return_tensors="pt")
        txt = clip.text_projection(clip.text_model(**ids).pooler_output)[0].numpy()
    expected = float(img @ txt / np.linalg.norm(img) / np.linalg.norm(txt))
    assert score["tuned"]["clip_t"] == pytest.approx(expected, abs=1e-5)

    vit = ViTModel.from_pretrained(tiny_eval_models["dino"], add_pooling_layer=False).eval()
    vproc = ViTImageProcessorPil.from_pretrained(tiny_eval_models["dino"])
    with torch.no_grad():
        a, b = (vit(pixel_values=vproc(images=[im], return_tensors="pt")["pixel_values"]).last_hidden_state[0, 0].numpy()
                for im in (tuned, frame))
    assert score["tuned"]["dino"] == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)


def test_ctrl_c_leaves_results_marked_incomplete(eval_studio, tiny_eval_models, tmp_path, monkeypatch):
    from dreamshot.evaluate import service as evaluate_service

    real, calls = evaluate_service.render, []

    def render_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_service, "render", render_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        service(eval_studio).run(opts(tmp_path, tiny_eval_models, batch=2))
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["complete"] is False and saved["stopped"] == "interrupted" and saved["pairs_done"] == 2
