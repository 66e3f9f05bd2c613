"""Crop and export: content-aware box stored (original untouched), nudges, crop sizes; the exported
imagefolder loads with `datasets`; captions feed `text`; the CLI runs the same steps headless."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from PIL import Image

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.shots import training_prompt, get_taxonomy
from dreamshot.storage import now
from labeling import crop, export, labels, pool
from tests.label_helpers import PHOTOS, ROOT, make_mixed_pool, run_cli, synthetic_frames, tree_digest


@pytest.fixture
def pooled(studio, tmp_path):
    make_mixed_pool(tmp_path / "pool")
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool")))
    with studio.db.read() as conn:
        rows = conn.execute(sa.select(schema.frames.c.id, schema.frames.c.width, schema.frames.c.height,
                                      schema.frames.c.path).where(schema.frames.c.status == "ok")
                            .order_by(schema.frames.c.id)).all()
    return studio, rows


def test_content_aware_crop_is_stored_and_nudged(pooled):
    studio, rows = pooled
    wide = next(r for r in rows if r.width > r.height)          # groot 910x512
    original = (studio.settings.data_dir / wide.path).read_bytes()
    img = crop.cropped_image(studio, wide.id)
    assert img.size == (512, 512)
    box = crop.get_box(studio, wide.id)
    assert box[3] - box[1] == box[2] - box[0] == wide.height and 0 <= box[0] <= wide.width - wide.height
    with studio.db.read() as conn:
        stored = conn.execute(sa.select(schema.frames.c.crop_box, schema.frames.c.crop_source)
                              .where(schema.frames.c.id == wide.id)).one()
    assert stored.crop_box == box and stored.crop_source == "auto"

    centered = crop.nudge(studio, wide.id, "center")
    assert centered == crop.center_box(wide.width, wide.height)
    moved = crop.nudge(studio, wide.id, "right")
    assert moved[0] > centered[0] and moved[1] == centered[1]
    for _ in range(20):
        moved = crop.nudge(studio, wide.id, "right")
    assert moved[2] == wide.width                                  # clamped at the edge
    assert crop.get_box(studio, wide.id) == moved
    assert (studio.settings.data_dir / wide.path).read_bytes() == original
    with pytest.raises(InvalidInput):
        crop.nudge(studio, wide.id, "sideways")

    crop.set_crop_size(studio, 256)
    assert crop.cropped_image(studio, wide.id).size == (256, 256)
    assert crop.cropped_image(studio, wide.id, 768).size == (768, 768)
    with pytest.raises(InvalidInput):
        crop.set_crop_size(studio, 300)


def test_smartcrop_follows_content():
    # a bright detailed subject on the right of a flat frame: the square window moves right
    frame = Image.new("RGB", (600, 300), (20, 20, 25))
    subject = Image.open(PHOTOS / "cheetah.jpg").convert("RGB").resize((280, 280))
    frame.paste(subject, (310, 10))
    x0, y0, x1, y1 = crop.compute_box(frame)
    assert (x1 - x0, y1 - y0) == (300, 300) and x0 >= 250


def test_export_loads_with_datasets(pooled, tmp_path):
    import datasets

    studio, rows = pooled
    ids = [r.id for r in rows]
    labels.set_quotas(studio, {"close": 1})
    labels.record(studio, "ann", ids[0], "close")
    labels.record(studio, "ann", ids[1], "close")      # beyond the quota -> extra
    labels.record(studio, "ann", ids[2], "long")
    labels.record(studio, "ann", ids[3], "reject")
    labels.record(studio, "ann", ids[4], "medium")
    labels.record(studio, "ben", ids[4], "long")       # open disagreement: not exported until resolved
    with studio.db.write() as conn:
        conn.execute(schema.captions.insert().values(
            frame_id=ids[2], caption_original="a man on a hill", caption="a lone man on a hill", reviewed=True,
            version=1, created_at=now(), updated_at=now()))

    out = tmp_path / "export"
    report = export.export_imagefolder(studio, out)
    assert report.count == 2 and report.per_class == {"close": 1, "long": 1} and report.uncaptioned == 1
    assert "no caption yet" in report.text()
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    by_id = {x["frame_id"]: x for x in lines}
    assert by_id[ids[2]]["text"] == "a high-quality long shot picture of a lone man on a hill"
    assert by_id[ids[2]]["caption_original"] == "a man on a hill" and by_id[ids[2]]["annotator"] == "ann"
    assert by_id[ids[0]]["text"] == training_prompt(get_taxonomy("paper").get("close"), "")
    assert by_id[ids[0]]["source"].endswith(".jpg") or by_id[ids[0]]["source"].endswith(".jpeg")

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == 2 and set(ds.column_names) >= {"image", "shot", "text", "caption", "source", "annotator"}
    assert ds[0]["image"].size == (512, 512)

    labels.resolve(studio, ids[4], "medium", "lead")
    studio.project.set_template("{shot}, {caption}")
    report = export.export_imagefolder(studio, out, include_extra=True)  # re-export over an earlier export
    assert report.per_class == {"close": 2, "long": 1, "medium": 1}
    texts = {json.loads(x)["frame_id"]: json.loads(x)["text"] for x in (out / "metadata.jsonl").read_text().splitlines()}
    assert texts[ids[2]] == "long shot, a lone man on a hill"
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        f"{fid:07d}_{shot}.png" for fid, shot in ((ids[0], "close"), (ids[1], "close"), (ids[2], "long"), (ids[4], "medium")))
    only_long = export.export_imagefolder(studio, tmp_path / "long-only", shots=["long"])
    assert only_long.per_class == {"long": 1}


def test_export_refuses_bad_targets_and_push_needs_token(pooled, tmp_path, monkeypatch):
    studio, rows = pooled
    labels.record(studio, "ann", rows[0].id, "close")
    with pytest.raises(InvalidInput):
        export.export_imagefolder(studio, studio.settings.data_dir)
    with pytest.raises(InvalidInput):
        export.export_imagefolder(studio, studio.settings.frames_dir / "x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.txt").write_text("keep me")
    with pytest.raises(InvalidInput):
        export.export_imagefolder(studio, busy)
    assert (busy / "thesis.txt").read_text() == "keep me"

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(InvalidInput, match="HF_TOKEN"):
        export.export_imagefolder(studio, tmp_path / "out", push_to_hub="me/shots")

    calls = []

    class FakeApi:
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw["repo_type"]))

        def upload_folder(self, folder_path, repo_id, **kw):
            skipped = kw.get("ignore_patterns") or []   # the studio's marker file stays home
            calls.append(("upload", repo_id, sorted(n for n in os.listdir(folder_path) if n not in skipped)))

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    report = export.export_imagefolder(studio, tmp_path / "out", push_to_hub="me/shots")
    assert report.pushed_to == "me/shots"
    assert calls == [("token", "hf_" + "x" * 30), ("create", "me/shots", "dataset"),
                     ("upload", "me/shots", ["images", "metadata.jsonl"])]


def test_cli_import_stats_export(tmp_path):
    data = tmp_path / "data"
    make_mixed_pool(tmp_path / "pool")
    synthetic_frames(tmp_path / "pool" / "extra", 3)
    before = tree_digest(tmp_path / "pool")
    labels_file = tmp_path / "old.csv"
    labels_file.write_text("file,shot\nframe_0000.png,medium\nframe_0001.png,closeup\n")
    out = run_cli("import", str(tmp_path / "pool"), "--min-side", "200", "--labels", str(labels_file), data=data)
    assert "kept: 8" in out.stdout and "corrupt or truncated file: 2" in out.stdout
    assert "truncated.jpg" in out.stdout and "labels imported: 1   rejected: 1" in out.stdout
    stats = subprocess.run([sys.executable, "-m", "labeling", "stats", "--data", str(data)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)  # flags after the subcommand too
    assert "medium                 1 / 200" in stats.stdout and "Pool (train)" in stats.stdout
    exported = run_cli("export", str(tmp_path / "set"), data=data)
    assert "Exported 1 frames" in exported.stdout
    assert json.loads((tmp_path / "set" / "metadata.jsonl").read_text())["shot"] == "medium"
    bad = run_cli("import", str(tmp_path / "nope"), data=data, check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    assert tree_digest(tmp_path / "pool") == before
    pushed = run_cli("export", str(tmp_path / "set2"), "--push-to-hub", "me/x", data=data,
                     env={"HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": ""}, check=False)
    assert pushed.returncode == 2 and "HF_TOKEN" in pushed.stderr
    token = "hf_" + "y" * 30                      # a real token, offline: the push fails, the token stays out
    pushed = run_cli("export", str(tmp_path / "set3"), "--push-to-hub", "me/x", data=data,
                     env={"HF_TOKEN": token, "HF_HUB_OFFLINE": "1"}, check=False)
    assert pushed.returncode != 0 and pushed.stderr.strip()
    assert token not in pushed.stderr and token not in pushed.stdout and "yyyyyyyy" not in pushed.stderr
