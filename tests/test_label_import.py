"""Import of a frame pool: report counts per filter, originals untouched, resumable, zip safety,
decompression bombs, metadata rules, existing labels, video shots, datasets sources."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from dreamshot import schema
from dreamshot.errors import InvalidInput
from labeling import filters, labels, pool, sources
from tests.label_helpers import (MIXED_FILTERED, MIXED_NOT_IMAGES, PHOTOS, corrupt_zip, make_mixed_pool,
                                 synthetic_frames, tree_digest, write_video)


def _frames(studio):
    with studio.db.read() as conn:
        return conn.execute(sa.select(schema.frames)).all()


def test_mixed_folder_report_counts_and_originals_untouched(studio, tmp_path):
    expected = make_mixed_pool(tmp_path / "pool")
    before = tree_digest(tmp_path / "pool")
    report = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool")))

    assert report.status == "done"
    assert (report.seen, report.kept) == (expected["seen"], expected["kept"])
    assert report.filtered == expected["filtered"]
    problems = {p["item"]: p["reason"] for p in report.problems}
    assert problems == {"corrupt.jpg": "corrupt", "truncated.jpg": "corrupt"}
    assert "corrupt.jpg" in report.text() and "near-duplicate" in report.text()
    assert tree_digest(tmp_path / "pool") == before  # originals never modified

    rows = _frames(studio)
    ok = [r for r in rows if r.status == "ok"]
    assert len(ok) == 5 and all(r.split == "train" for r in ok)
    for r in ok:  # copied into the data folder, relative path, byte-identical to a source file
        stored = studio.settings.data_dir / r.path
        assert not r.path.startswith("/") and stored.is_file()
        assert stored.read_bytes() == (tmp_path / "pool" / r.source.split("pool/", 1)[1]).read_bytes()
    assert {r.status for r in rows} == {"ok", "grayscale", "corrupt", "near_duplicate", "too_small"}

    again = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool")))
    assert again.kept == 0 and len(_frames(studio)) == len(rows)


def test_import_is_resumable(studio, tmp_path):
    synthetic_frames(tmp_path / "many", 10)
    opts = lambda: pool.ImportOptions(str(tmp_path / "many"), min_side=100)  # noqa: E731
    first = pool.run_import(studio, opts(), stop_after=4)
    assert first.status == "interrupted" and first.seen == 4
    seen_progress = []
    second = pool.run_import(studio, opts(), progress=lambda d, t, n: seen_progress.append((d, t)))
    assert second.run_id == first.run_id and second.resumed_from == 4
    assert second.status == "done" and second.seen == 10 and second.kept == 10
    assert seen_progress[-1] == (10, 10)
    assert len(_frames(studio)) == 10


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)


def test_zip_refuses_unsafe_paths_and_bombs(studio, tmp_path):
    good = (PHOTOS / "tower.jpg").read_bytes()
    buf = io.BytesIO()
    Image.open(PHOTOS / "cheetah.jpg").save(buf, "PNG")
    archive = tmp_path / "upload" / "frames.zip"
    archive.parent.mkdir()
    _zip(archive, {"a/tower.jpg": good, "../evil.png": buf.getvalue(), "/abs/evil2.png": buf.getvalue(),
                   "bomb.png": b"\0" * 5_000_000, "readme.txt": b"skip me"})
    report = pool.run_import(studio, pool.ImportOptions(str(archive)))
    assert report.kind == "zip" and report.kept == 1
    assert report.filtered == {"unsafe_path": 2, "too_large": 1}
    assert {p["item"] for p in report.problems} == {"../evil.png", "/abs/evil2.png", "bomb.png"}
    data = studio.settings.data_dir
    outside = {p for p in tmp_path.rglob("*") if p != data and data not in p.parents}
    assert outside == {archive.parent, archive}                     # nothing written next to the zip
    stored = [p.read_bytes() for p in studio.settings.data_dir.rglob("*") if p.is_file()]
    assert buf.getvalue() not in stored                             # the unsafe entries' bytes are nowhere
    written = [p for p in studio.settings.data_dir.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg")]
    assert len(written) == 1 and written[0].read_bytes() == good
    assert {r.source: r.status for r in _frames(studio) if r.status != "ok"} == {
        f"{archive}!../evil.png": "unsafe_path", f"{archive}!/abs/evil2.png": "unsafe_path",
        f"{archive}!bomb.png": "too_large"}


def test_decompression_bomb_and_absurd_size_refused(studio, tmp_path):
    folder = tmp_path / "bombs"
    folder.mkdir()
    Image.new("1", (9000, 9000)).save(folder / "huge.png")  # 81 Mpx > the 64 Mpx limit, tiny file
    shutil_copy = (PHOTOS / "lion.jpg").read_bytes()
    (folder / "ok.jpg").write_bytes(shutil_copy)
    report = pool.run_import(studio, pool.ImportOptions(str(folder)))
    assert report.filtered == {"too_large": 1} and report.kept == 1
    assert report.problems[0]["item"] == "huge.png"


def test_metadata_rules(studio, tmp_path):
    paths = synthetic_frames(tmp_path / "films", 4)
    meta = tmp_path / "films.csv"
    meta.write_text("file,title,year\n" + "\n".join(
        f"{p.name},Film {i},{2010 + 2 * i}" for i, p in enumerate(paths[:3])) + "\n")  # frame 3 has no row
    report = pool.run_import(studio, pool.ImportOptions(
        str(tmp_path / "films"), min_side=100, rules=["year >= 2013"], metadata_file=str(meta)))
    # years 2010, 2012, 2014 and one without metadata: only 2014 passes
    assert report.kept == 1 and report.filtered == {"metadata_rule": 3}
    kept = [r for r in _frames(studio) if r.status == "ok"]
    assert kept[0].meta["year"] == "2014" and kept[0].meta["title"] == "Film 2"
    with pytest.raises(InvalidInput):
        pool.run_import(studio, pool.ImportOptions(str(tmp_path / "films"), rules=["year >>> 3"]))


def test_existing_labels_imported_and_unknown_class_rejected(studio, tmp_path):
    paths = synthetic_frames(tmp_path / "films", 3)
    old_labels = tmp_path / "labels.csv"
    old_labels.write_text(f"file,shot,annotator\n{paths[0].name},close,ann\n{paths[1].name},wide-ish,ann\n")
    report = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "films"), min_side=100,
                                                        labels_file=str(old_labels)))
    assert report.kept == 3 and report.labels_imported == 1 and report.labels_rejected == 1
    assert "wide-ish" in report.text()
    assert list(labels.final_labels(studio).values()) == ["close"]


def test_video_gives_one_frame_per_shot(studio, tmp_path):
    video = tmp_path / "clip.mp4"
    write_video(video)
    assert len(sources.shot_middles(video)) == 3
    report = pool.run_import(studio, pool.ImportOptions(str(video), min_side=100, near_duplicate_distance=-1,
                                                        split="test"))
    assert report.kind == "video" and report.kept == 3
    ok = [r for r in _frames(studio) if r.status == "ok"]
    assert all(r.split == "test" for r in ok)
    centers = []
    for r in ok:
        with Image.open(studio.settings.data_dir / r.path) as im:
            centers.append(np.asarray(im.convert("RGB"))[60, 80].argmax())
    assert centers == [0, 1, 2]  # red, green, blue shots in order, middle frames


def test_datasets_sources(studio, tmp_path):
    import datasets

    folder = tmp_path / "imf"
    paths = synthetic_frames(folder, 3, seed=1)
    (folder / "metadata.jsonl").write_text("\n".join(
        json.dumps({"file_name": p.name, "year": 2015 + i}) for i, p in enumerate(paths)) + "\n")
    report = pool.run_import(studio, pool.ImportOptions(f"imagefolder:{folder}", min_side=100, rules=["year >= 2016"]))
    assert report.kind == "imagefolder" and report.kept == 2 and report.filtered == {"metadata_rule": 1}

    saved = tmp_path / "saved"
    more = synthetic_frames(tmp_path / "more", 2, seed=2)
    ds = datasets.Dataset.from_dict({"image": [str(p) for p in more], "title": ["a", "b"]})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(saved))
    report = pool.run_import(studio, pool.ImportOptions(f"hf:{saved}", min_side=100))
    assert report.kind == "hf" and report.kept == 2
    titles = sorted(r.meta.get("title") for r in _frames(studio) if r.meta.get("title"))
    assert titles == ["a", "b"]

    repo = tmp_path / "dataset-repo"   # a local dataset repository (parquet shards), streamed
    (repo / "data").mkdir(parents=True)
    third = synthetic_frames(tmp_path / "third", 2, seed=3)
    ds = datasets.Dataset.from_dict({"image": [str(p) for p in third], "year": [2001, 2020]})
    ds.cast_column("image", datasets.Image()).to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    report = pool.run_import(studio, pool.ImportOptions(f"hf:{repo}", min_side=100, rules=["year > 2010"]))
    assert report.kind == "hf" and report.kept == 1 and report.filtered == {"metadata_rule": 1}
    with pytest.raises(InvalidInput, match="Cannot open the dataset"):  # offline, not cached: a clear error
        pool.run_import(studio, pool.ImportOptions("hf:someone/not-cached-anywhere"))


def test_filter_units():
    index = filters.PhashIndex(["ffff000000000000"], threshold=4)
    assert index.is_near_duplicate("ffff000000000007")       # 3 bits apart
    assert not index.is_near_duplicate("ffff0000000000ff")   # 8 bits apart
    rule = filters.parse_rule("year >= 2013")
    assert rule.check({"year": "2013"}) and not rule.check({"year": 2012}) and not rule.check({})
    assert filters.parse_rule("title != ''").check({"title": "x"})
    for bad in ("../x.png", "/etc/passwd", "a/../../b.png", "C:\\win.png", "\\\\server\\x.png"):
        assert sources.unsafe_member_name(bad), bad
    assert not sources.unsafe_member_name("a/b..c.png")


def test_palette_gif_and_one_bit_png_never_crash_the_import(studio, tmp_path):
    """Real pools hold GIFs (palette) and bilevel PNGs: they are decoded or filtered, never fatal."""
    folder = tmp_path / "odd"
    folder.mkdir()
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    rgb.convert("1").save(folder / "bilevel.png")
    report = pool.run_import(studio, pool.ImportOptions(str(folder), min_side=100))
    assert report.status == "done" and report.seen == 2
    statuses = {r.source.rsplit("/", 1)[-1]: r.status for r in _frames(studio)}
    assert statuses == {"palette.gif": "ok", "bilevel.png": "grayscale"}


def test_report_names_every_filtered_file_and_what_was_not_an_image(studio, tmp_path):
    make_mixed_pool(tmp_path / "pool")
    report = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool")))
    listed = {p["item"]: p for p in report.filtered_files}
    assert {k: v["reason"] for k, v in listed.items()} == {k: v[0] for k, v in MIXED_FILTERED.items()}
    text = report.text()
    for item, (_, words) in MIXED_FILTERED.items():
        line = next(x for x in text.splitlines() if x.strip().startswith(item + ":"))
        assert words in line, line
    skipped = {p["item"]: p["message"] for p in report.not_images}
    assert set(skipped) == set(MIXED_NOT_IMAGES)
    for item, words in MIXED_NOT_IMAGES.items():
        assert words in skipped[item] and f"{item}: {skipped[item]}" in text
    assert "skipped, not images (3)" in text


def test_corrupt_zip_entries_are_reported_and_skipped(studio, tmp_path):
    archive = tmp_path / "frames.zip"
    bad = corrupt_zip(archive)
    report = pool.run_import(studio, pool.ImportOptions(str(archive)))
    assert report.status == "done" and report.seen == 4 and report.kept == 1
    problems = {p["item"]: p for p in report.problems}
    assert set(problems) == set(bad)
    for name, word in bad.items():
        assert problems[name]["reason"] == "corrupt" and word in problems[name]["message"]
    with studio.db.read() as conn:
        run = conn.execute(sa.select(schema.import_runs)).one()
    assert run.status == "done" and run.cursor == "4"
    again = pool.run_import(studio, pool.ImportOptions(str(archive)))   # a retry is a clean no-op
    assert again.status == "done" and again.kept == 0 and len(again.problems) == 3
    assert [r.status for r in _frames(studio)].count("ok") == 1


def test_uploads_leave_no_temp_folder_and_report_names_the_files(studio, tmp_path, monkeypatch):
    import tempfile

    from labeling import uploads

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    frames = synthetic_frames(tmp_path / "picked", 3)
    (tmp_path / "picked" / "notes.txt").write_text("x")
    files = [str(p) for p in frames] + [str(tmp_path / "picked" / "notes.txt")]
    svc = uploads.service(studio)
    report = svc.run_import(files, pool.ImportOptions("", min_side=100))
    assert report.kept == 3 and list(scratch.iterdir()) == []
    text = report.text()
    assert "upload of 4 files: frame_0000.png, frame_0001.png, frame_0002.png, notes.txt" in text
    assert "dreamshot-upload" not in text and str(scratch) not in text
    assert sorted(r.source for r in _frames(studio)) == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]

    with pytest.raises(InvalidInput):                                 # refused after the copy: removed too
        svc.run_import(files, pool.ImportOptions("", rules=["year >>= 3"]))
    assert list(scratch.iterdir()) == []

    zipped = tmp_path / "shots.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(frames[0], "a/frame.png")
    one = svc.run_import([str(zipped)], pool.ImportOptions(""))
    assert one.source == "shots.zip" and " of shots.zip (uploaded zip): done" in one.text()

    left = scratch / (uploads.PREFIX + "left")                        # open when the studio closes
    left.mkdir()
    svc._open.add(left)
    studio.close()
    assert not left.exists()
