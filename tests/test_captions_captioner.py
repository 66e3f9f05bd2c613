"""Auto-captioning end to end on the tiny BLIP-2 (random weights, offline tokenizer), loaded through
the same ``from_pretrained(folder)`` path as the real checkpoints: service, background worker, CLI,
resume, cancel, the race with human edits, and captioner ids that cannot be loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dreamshot.errors import InvalidInput, ModelLoadError
from labeling.captions import jobs as caption_jobs
from labeling.captions import service as captions
from labeling.captions.jobs import CaptionRequest, run_captioning
from labeling.captions.captioner import load_captioner, resolve_source
from labeling.captions.service import EditRequest

from .captions_helpers import add_frames

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_blip2(tmp_path_factory) -> str:
    from labeling.captions.tiny_blip2 import build_tiny_blip2

    return str(build_tiny_blip2(tmp_path_factory.mktemp("captioners") / "tiny-blip2"))


def _request(model, **kw) -> CaptionRequest:
    return CaptionRequest(model=model, **{"batch_size": 2, "max_new_tokens": 6, "min_new_tokens": 3, **kw})


def test_captioner_loads_from_folder_fp32_on_cpu_and_is_shared(studio, tiny_blip2):
    import torch
    from PIL import Image

    from labeling.captions.captioner import GenerationOptions

    worker = caption_jobs.service(studio)
    c = worker.captioner(tiny_blip2)
    assert type(c.model).__name__ == "Blip2ForConditionalGeneration"
    assert c.dtype == torch.float32 and next(c.model.parameters()).dtype == torch.float32
    assert worker.captioner(tiny_blip2) is c  # loaded once per studio, kept by its captioning service
    images = [Image.new("RGB", (40, 30), (i * 60, 20, 90)) for i in range(3)]
    texts = c.caption(images, GenerationOptions(max_new_tokens=5, min_new_tokens=5))
    assert len(texts) == 3 and all(t.strip() for t in texts)
    assert all(len(t.split()) <= 5 for t in texts)
    # the prompt prefix steers generation but is not kept in the caption
    prefixed = c.caption(images[:1], GenerationOptions(prefix="a photo of", max_new_tokens=4, min_new_tokens=4))
    assert not prefixed[0].lower().startswith("a photo of")


def test_captioning_service_is_per_studio_and_closes_with_it(make_studio, tiny_blip2):
    first, second = make_studio(), make_studio()
    worker = caption_jobs.service(first)
    assert caption_jobs.service(first) is worker and caption_jobs.service(second) is not worker
    c = worker.captioner(tiny_blip2)
    assert worker.loaded == tiny_blip2
    assert caption_jobs.service(second).captioner(tiny_blip2) is not c  # nothing shared between studios
    add_frames(first, 2)
    worker.start(_request(tiny_blip2))
    first.close()  # stops the run and frees the captioner
    assert not worker.snapshot().running and worker.loaded is None
    assert caption_jobs.service(first) is not worker  # a closed studio's services are gone


def test_fp16_path_as_on_cuda(tiny_blip2):
    """The GPU code path (fp16 weights, fp16 pixels, BLIP-2's Q-Former kept in fp32), run on the CPU."""
    import torch
    from PIL import Image

    from labeling.captions.captioner import GenerationOptions

    c = load_captioner(tiny_blip2, dtype="float16")      # what --dtype float16 (and auto on CUDA) gives
    assert c.dtype == torch.float16
    assert c.model.language_model.get_input_embeddings().weight.dtype == torch.float16
    texts = c.caption([Image.new("RGB", (40, 30), "green")] * 2, GenerationOptions(max_new_tokens=4, min_new_tokens=4))
    assert len(texts) == 2 and all(texts)


def test_blip_architecture_loads_through_the_same_path(tmp_path):
    from PIL import Image

    from labeling.captions.captioner import GenerationOptions
    from labeling.captions.tiny_blip2 import build_tiny_blip

    folder = str(build_tiny_blip(tmp_path / "tiny-blip"))
    c = load_captioner(folder)
    assert type(c.model).__name__ == "BlipForConditionalGeneration"
    texts = c.caption([Image.new("RGB", (50, 40), "red")] * 2, GenerationOptions(max_new_tokens=6, min_new_tokens=3))
    assert len(texts) == 2 and all(t and t.isprintable() for t in texts)


def test_flan_t5_style_blip2_encoder_decoder(tmp_path):
    from PIL import Image

    from labeling.captions.captioner import GenerationOptions
    from labeling.captions.tiny_blip2 import build_tiny_blip2

    # seed 0: with random weights some seeds only emit special tokens, which decode to ""
    folder = str(build_tiny_blip2(tmp_path / "tiny-blip2-t5", seed=0, text_model="t5"))
    c = load_captioner(folder)
    assert c.is_encoder_decoder and c.model.config.text_config.model_type == "t5"
    images = [Image.new("RGB", (50, 40), "blue")] * 3
    texts = c.caption(images, GenerationOptions(prefix="a photo of", max_new_tokens=4, min_new_tokens=4))
    assert len(texts) == 3 and all(len(t.split()) >= 1 for t in texts)


def test_clean_caption():
    from labeling.captions.captioner import clean_caption

    assert clean_caption("a photo of  a man\x00 in\ufffd a\nhat ", "a photo of") == "a man in a hat"
    assert clean_caption("A Photo Of a dog", "a photo of") == "a dog"


def test_service_end_to_end_with_progress(studio, tiny_blip2):
    ids = add_frames(studio, 5)
    seen = []
    result = run_captioning(studio, _request(tiny_blip2, prefix="a photo of"),
                            on_progress=lambda p: seen.append((p.state, p.done, p.total, p.eta_s)))
    assert result.state == "done" and (result.done, result.total, result.failed) == (5, 5, 0)
    dones = [d for s, d, _, _ in seen if s == "running"]
    assert dones == sorted(dones) and dones[-1] == 5 and 2 in dones  # batches of 2
    assert any(eta is not None for s, d, _, eta in seen if s == "running" and 0 < d < 5)
    views = captions.list_captions(studio)
    assert [v.frame_id for v in views] == ids
    for v in views:
        assert v.caption and v.caption == v.caption_original and v.model == tiny_blip2
        assert v.prompt.startswith(f"a high-quality {v.shot} shot picture of ")
    s = captions.stats(studio)
    assert (s.captioned, s.machine, s.changed) == (5, 5, 0)


def test_demo_captioner_is_built_once_in_the_models_folder(studio):
    ids = add_frames(studio, 3)
    result = run_captioning(studio, CaptionRequest(model="demo", batch_size=4, max_new_tokens=6))
    assert result.state == "done" and result.done == 3 and result.failed == 0
    assert "untrained demo captioner" in result.summary()
    folder = studio.settings.models_dir / "demo-blip2"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    views = captions.list_captions(studio)
    assert [v.frame_id for v in views if v.caption] == ids
    assert all(len(v.caption.split()) >= 1 and v.model == "demo" for v in views)


def test_resume_skips_captioned_frames_and_redo_keeps_human_edits(studio, tiny_blip2):
    ids = add_frames(studio, 4)
    first = run_captioning(studio, _request(tiny_blip2, frame_ids=tuple(ids[:2])))
    assert (first.done, first.total) == (2, 2)
    second = run_captioning(studio, _request(tiny_blip2))
    assert (second.skipped, second.total, second.done) == (2, 2, 2)
    third = run_captioning(studio, _request(tiny_blip2))
    assert (third.skipped, third.total, third.state) == (4, 0, "done")

    captions.edit_caption(studio, EditRequest(ids[0], "a knight on a horse", "alice"))
    redo = run_captioning(studio, _request(tiny_blip2, redo=True, max_new_tokens=8, min_new_tokens=8))
    assert (redo.total, redo.kept_human) == (4, 1)
    v = captions.get_caption(studio, ids[0])
    assert v.caption == "a knight on a horse" and v.edited_by == "alice"
    assert len(v.caption_original.split()) > 3  # the new machine caption is stored beside it


def test_edit_during_a_run_is_never_overwritten(studio, tiny_blip2):
    ids = add_frames(studio, 6)
    run_captioning(studio, _request(tiny_blip2))

    def edit_between_batches(p):
        if p.state == "running" and p.done == 2:  # frames 5 and 6 are captioned after this
            captions.edit_caption(studio, EditRequest(ids[5], "a ship at sea", "bob"))

    result = run_captioning(studio, _request(tiny_blip2, redo=True), on_progress=edit_between_batches)
    assert result.kept_human == 1
    v = captions.get_caption(studio, ids[5])
    assert (v.caption, v.edited_by) == ("a ship at sea", "bob")


def test_cancel_between_batches_then_resume(studio, tiny_blip2):
    ids = add_frames(studio, 6)
    cancel = threading.Event()

    def stop_after_first_batch(p):
        if p.state == "running" and p.done >= 2:
            cancel.set()

    result = run_captioning(studio, _request(tiny_blip2), on_progress=stop_after_first_batch, cancel=cancel)
    assert result.state == "cancelled" and result.done == 2
    assert "Cancelled after 2/6" in result.summary()
    assert len(captions.frames_with_machine_caption(studio, ids)) == 2
    resumed = run_captioning(studio, _request(tiny_blip2))
    assert (resumed.skipped, resumed.done, resumed.state) == (2, 4, "done")


def test_background_worker_one_run_at_a_time_and_cancel(studio, tiny_blip2, monkeypatch):
    add_frames(studio, 4)
    gate, entered = threading.Event(), threading.Event()
    real_batch = caption_jobs._caption_batch

    def slow_batch(*args):
        entered.set()
        assert gate.wait(30)
        real_batch(*args)

    monkeypatch.setattr(caption_jobs, "_caption_batch", slow_batch)
    worker = caption_jobs.service(studio)
    worker.start(_request(tiny_blip2))
    assert entered.wait(60)
    with pytest.raises(InvalidInput, match="already in progress"):
        worker.start(_request(tiny_blip2))
    assert worker.snapshot().state == "running"
    assert worker.cancel() is True
    gate.set()
    final = worker.wait(60)
    assert final.state == "cancelled" and final.done == 2
    assert worker.cancel() is False


def test_bad_captioner_ids_give_clear_messages(studio, tmp_path, demo_model_dir):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(ModelLoadError, match="cannot load captioner Salesforce/blip2-flan-t5-xl: not in the local "
                                             "cache and the Hub is unreachable"):
        resolve_source("Salesforce/blip2-flan-t5-xl")
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(ModelLoadError, match="expected a BLIP-2 or BLIP"):
        load_captioner(str(demo_model_dir / "text_encoder"))
    with pytest.raises(ModelLoadError, match="neither a local folder nor a Hub id"):
        resolve_source("not a model")
    # the background worker reports it at once and stays usable; the data is untouched
    ids = add_frames(studio, 2)
    captions.edit_caption(studio, EditRequest(ids[0], "a cat", "alice"))
    with pytest.raises(ModelLoadError, match="cannot load captioner"):
        caption_jobs.service(studio).start(CaptionRequest(model="Salesforce/blip2-opt-2.7b"))
    assert captions.get_caption(studio, ids[0]).caption == "a cat"


def _cli(*args):
    """``python -m labeling ARGS`` as a real process (the README's command line)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "labeling", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _cli_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """The same command through ``labeling.__main__.main(argv)`` in this process: each CLI test runs
    one real process above; a second process would only pay the torch/transformers start-up again."""
    from labeling.__main__ import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["python", "-m", "labeling", *args], code, out, err)


def test_cli_captions_then_resumes(studio, tiny_blip2, capsys):
    ids = add_frames(studio, 3)
    test_ids = add_frames(studio, 2, split="test", labeled=False)
    data = str(studio.settings.data_dir)
    proc = _cli("caption", "--data", data, "--model", tiny_blip2, "--batch", "2", "--min-length", "2",
                "--max-length", "6", "--prefix", "a photo of")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done: 3/3 train frames captioned" in proc.stdout
    assert "captioning: 100%" in proc.stderr and "3/3" in proc.stderr and "frame/s" in proc.stderr  # tqdm bar
    views = captions.list_captions(studio)
    assert [v.frame_id for v in views if v.caption_original] == ids
    assert all(v.model == tiny_blip2 for v in views)

    # resumable, flags before the subcommand too, held-out test frames
    captions.save_machine_caption(studio, test_ids[0], "a cat", model="earlier")
    test = _cli_in_process(capsys, "--data", data, "caption", "--model", tiny_blip2, "--split", "test",
                           "--min-length", "2")
    assert test.returncode == 0, test.stderr[-3000:]
    assert "Done: 1/1 test frames" in test.stdout and "1 already captioned, skipped" in test.stdout
    assert captions.frames_with_machine_caption(studio, test_ids) == set(test_ids)
    assert captions.get_caption(studio, test_ids[0]).caption == "a cat"


def test_cli_unloadable_captioner(studio):
    [fid] = add_frames(studio, 1)
    captions.save_machine_caption(studio, fid, "a cat", model="x")  # nothing left to do: still reported
    proc = _cli("caption", "--data", str(studio.settings.data_dir), "--model", "Salesforce/blip2-flan-t5-xl")
    assert proc.returncode == 2
    assert "cannot load captioner Salesforce/blip2-flan-t5-xl: not in the local cache and the Hub is unreachable" \
        in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bulk_replace_and_edit_rate(studio, capsys):
    ids = add_frames(studio, 4)
    for fid, text in zip(ids, ["a man standing", "a man sitting", "a man walking", "a dog"]):
        captions.save_machine_caption(studio, fid, text, model="x")
    captions.edit_caption(studio, EditRequest(ids[0], "an old man standing", "alice"))
    data = str(studio.settings.data_dir)
    proc = _cli("caption-replace", "man", "person", "--data", data, "--apply", "--editor", "bob")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{ids[1]}\ta man sitting\t->\ta person sitting" in proc.stdout
    assert "applied to 3 captions (recorded as bulk edits)" in proc.stderr
    stats = _cli_in_process(capsys, "caption-stats", "--data", data)
    assert stats.returncode == 0, stats.stderr[-2000:]
    assert "edit rate (hand edits): 25% (1 of 4)" in stats.stdout
    assert "bulk edits only:        50% (2 of 4)" in stats.stdout
    bad = _cli("caption-replace", "(", "x", "--regex", "--data", data)
    assert bad.returncode == 2 and "Invalid regular expression" in bad.stderr and "Traceback" not in bad.stderr
