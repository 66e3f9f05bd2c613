"""Video import keeps a short clip per detected shot, linked to the shot's labeled frame; labeling the
frame labels its clip; the labeled shots' clips export as an imagefolder of clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from labeling import clips, labels, pool
from tests.label_helpers import VIDEO_COLORS as COLORS
from tests.label_helpers import write_video


def decode(path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], fps


def _ok_frames(studio):
    f = schema.frames
    with studio.db.read() as conn:
        return conn.execute(sa.select(f).where(f.c.status == "ok").order_by(f.c.id)).all()


@pytest.fixture
def imported(studio, tmp_path):
    video = write_video(tmp_path / "three-shots.mp4")
    report = pool.run_import(studio, pool.ImportOptions(str(video), min_side=100, near_duplicate_distance=-1))
    assert report.kept == 3
    return _ok_frames(studio)


def test_window_stays_inside_the_shot():
    assert clips.window(29, 20, 40, 12) == (21, 37)        # 16 frames centred on the middle
    assert clips.window(29, 20, 40, 4) == (25, 33)         # 2 s at 4 fps = 8 frames
    assert clips.window(2, 0, 5, 24) == (0, 5)             # a 5-frame shot: the whole shot
    assert clips.window(48, 40, 50, 24) == (40, 50)        # never past the cut


def test_each_shot_keeps_a_clip_of_itself_linked_to_its_frame(studio, imported):
    for row, color in zip(imported, COLORS):
        meta = row.meta
        assert meta["clip_frames"] == [row.meta["video_frame"] - 8, row.meta["video_frame"] + 8]
        assert meta["clip_fps"] == 12
        path = clips.frame_clip(studio, row.id)
        assert path is not None and path.parent.parent.name == "clips"
        frames, fps = decode(path)
        assert len(frames) == 16 and fps == 12
        assert frames[0].shape == (120, 160, 3)
        # every frame of the clip shows this shot's colour, none the neighbour's across a cut
        means = np.stack([f.reshape(-1, 3).mean(axis=0) for f in frames])
        assert (means.argmax(axis=1) == int(np.argmax(color))).all()


def test_clip_size_is_bounded(studio, tmp_path, monkeypatch):
    monkeypatch.setattr(clips, "CLIP_SIDE", 64)
    video = write_video(tmp_path / "big.mp4", colors=COLORS[:1])
    pool.run_import(studio, pool.ImportOptions(str(video), min_side=100))
    (row,) = _ok_frames(studio)
    assert (row.width, row.height) == (160, 120)             # the labeled frame keeps its size
    frames, _ = decode(clips.frame_clip(studio, row.id))
    assert frames[0].shape[:2] == (48, 64)


def test_labeling_the_frame_labels_its_clip_and_export_writes_clip_imagefolder(studio, imported, tmp_path):
    red, green, blue = imported
    labels.record(studio, "ann", red.id, "close")
    labels.record(studio, "ann", blue.id, "long")
    report = clips.export_clips(studio, tmp_path / "clips-set")
    assert report.count == 2 and report.per_class == {"close": 1, "long": 1}
    rows = [json.loads(line) for line in (tmp_path / "clips-set" / "metadata.jsonl").read_text().splitlines()]
    assert [(r["shot"], r["frame_id"], r["frames"], r["fps"]) for r in rows] == [
        ("close", red.id, 16, 12), ("long", blue.id, 16, 12)]
    assert rows[0]["text"] == studio.project.prompt("close", "")
    for r in rows:
        assert (tmp_path / "clips-set" / r["file_name"]).read_bytes() == clips.frame_clip(studio, r["frame_id"]).read_bytes()
    only = clips.export_clips(studio, tmp_path / "long-only", shots=["long"])
    assert only.count == 1
    with pytest.raises(InvalidInput, match="No labeled close shot has a clip"):
        clips.refuse_empty(clips.export_clips(studio, tmp_path / "none", shots=["medium"]), "close")


def test_stills_have_no_clip(studio, tmp_path):
    from PIL import Image

    (tmp_path / "pool").mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(tmp_path / "pool" / "a.png")
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool")))
    (row,) = _ok_frames(studio)
    assert "clip" not in row.meta and clips.frame_clip(studio, row.id) is None
    labels.record(studio, "ann", row.id, "close")
    report = clips.export_clips(studio, tmp_path / "out")
    assert report.count == 0 and report.without_clip == 1


def test_cli_export_clips(studio, imported, tmp_path, capsys):
    import argparse

    from labeling import cli

    labels.record(studio, "ann", imported[1].id, "medium")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(), [])
    args = parser.parse_args(["export-clips", str(tmp_path / "c"), "--shot", "medium"])
    assert args.run(studio, args) == 0
    assert "Exported 1 shot clips" in capsys.readouterr().out
    assert len(list((tmp_path / "c" / "clips").glob("*_medium.mp4"))) == 1


def test_label_tab_plays_the_shown_frames_clip(studio, imported):
    from labeling.tab import LabelHandlers

    h = LabelHandlers(studio)
    shown = h.shot_clip("ann", str(imported[0].id), None)
    stored = clips.frame_clip(studio, imported[0].id)
    # a copy outside the data folder (which the app never serves), same bytes
    assert studio.settings.data_dir not in Path(shown).parents
    assert Path(shown).read_bytes() == stored.read_bytes()
    with pytest.raises(InvalidInput, match="No frame is shown"):
        h.shot_clip("ann", "", None)


def test_label_tab_says_a_still_has_no_clip(studio, tmp_path):
    from PIL import Image

    from labeling.tab import LabelHandlers

    (tmp_path / "pool").mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(tmp_path / "pool" / "a.png")
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool")))
    (row,) = _ok_frames(studio)
    with pytest.raises(InvalidInput, match="still .* no shot clip"):
        LabelHandlers(studio).shot_clip("ann", str(row.id), None)


def test_label_tab_exports_shot_clips_as_a_zip(studio, imported, tmp_path):
    import zipfile

    from labeling.tab_admin import AdminHandlers

    labels.record(studio, "ann", imported[2].id, "long")
    out = studio.settings.data_dir / "exports" / "shot-clips"    # the page exports inside the allowed roots
    text, archive = AdminHandlers(studio).do_export_clips(str(out), False, None)
    assert "Exported 1 shot clips" in text
    names = zipfile.ZipFile(archive).namelist()
    assert "metadata.jsonl" in names and any(n.startswith("clips/") and n.endswith("_long.mp4") for n in names)
