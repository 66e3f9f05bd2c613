"""The import report says what happened to videos (shots found and frames kept, per video) and calls
an upload an upload (issue 21, item 8)."""

from __future__ import annotations

import shutil

from labeling import pool, uploads

from .label_helpers import synthetic_frames, write_video


def test_the_report_counts_each_videos_shots_and_names_an_upload(studio, tmp_path):
    folder = tmp_path / "films"
    synthetic_frames(folder, 2)
    write_video(folder / "clip.mp4")                       # three shots with hard cuts
    (folder / "broken.mp4").write_bytes(b"not a video")
    report = pool.run_import(studio, pool.ImportOptions(str(folder), min_side=100, near_duplicate_distance=-1))
    text = report.text()
    assert report.kept == 5 and report.videos["clip.mp4"] == {"shots": 3, "kept": 3}
    assert "  2 videos: 3 shots found, 3 frames kept" in text
    assert "    clip.mp4: 3 shots found (one frame each), 3 frames kept" in text
    assert "    broken.mp4: unreadable (see below)" in text

    shutil.copyfile(folder / "clip.mp4", tmp_path / "again.mp4")   # the same shots: found, none kept
    again = uploads.service(studio).run_import([str(tmp_path / "again.mp4")], pool.ImportOptions("", min_side=100))
    assert again.text().startswith(f"Import #{again.run_id} of again.mp4 (uploaded video): done")
    assert "  video again.mp4: 3 shots found (one frame each), 0 frames kept" in again.text()

    more = synthetic_frames(tmp_path / "more", 2, seed=5)
    upload = uploads.service(studio).run_import([str(p) for p in more], pool.ImportOptions("", min_side=100))
    assert upload.text().startswith(f"Import #{upload.run_id} (upload of 2 files: {more[0].name}, {more[1].name}): "
                                    "done")
    assert "(folder)" not in upload.text() and "video" not in upload.text()
