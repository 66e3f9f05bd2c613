"""Importing a folder again with other filters judges the files an earlier import filtered out again
(a too-small frame comes in once the minimum side is lowered), and the report never calls a file
that was left out "an exact duplicate of a frame already in the pool"."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dreamshot import schema
from labeling import pool
from tests.label_helpers import make_mixed_pool, synthetic_frames


def _statuses(studio) -> list[str]:
    with studio.db.read() as conn:
        return sorted(conn.execute(sa.select(schema.frames.c.status)).scalars())


def test_lower_minimum_side_then_import_again_keeps_the_frames(studio, tmp_path):
    synthetic_frames(tmp_path / "pool", 3, size=(320, 240))
    first = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=256))
    assert first.kept == 0 and first.filtered == {"too_small": 3}
    second = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=200))
    assert second.kept == 3 and second.filtered == {}
    assert "duplicate" not in second.text()
    assert _statuses(studio) == ["ok", "ok", "ok"]                    # one row per file, updated
    third = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=200))
    assert third.kept == 0 and third.filtered == {"duplicate": 3}     # now they are in the pool


def test_the_same_import_again_names_each_left_out_file_by_its_reason(studio, tmp_path):
    make_mixed_pool(tmp_path / "pool")
    first = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool")))
    again = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool")))
    assert again.kept == 0
    text = again.text()
    assert "gray_tower.jpg: grayscale" in text and "bus_small.png: too small" in text
    assert "corrupt.jpg: exact duplicate" not in text
    assert again.filtered["duplicate"] == first.kept + first.filtered["duplicate"]  # the kept five, the copy
    assert _statuses(studio).count("ok") == 5


@pytest.mark.postgres
def test_import_again_on_postgresql(make_studio, pg_url, tmp_path):
    test_lower_minimum_side_then_import_again_keeps_the_frames(make_studio(db_url=pg_url), tmp_path)


def test_a_labels_file_applies_to_frames_already_in_the_pool(studio, tmp_path):
    """Held-out frames imported without labels, then the same folder again with a labels file: the
    labels land on the frames already there (reported as such), once; a changed label relabels."""
    from labeling import labels

    synthetic_frames(tmp_path / "pool", 4, size=(320, 240))
    first = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=200, split="test"))
    assert first.kept == 4 and labels.final_labels(studio) == {}
    csv = tmp_path / "labels.csv"
    csv.write_text("file,shot\nframe_0000.png,close\nframe_0001.png,long\nframe_0002.png,wide\n")
    again = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=200, split="test",
                                                       labels_file=str(csv)))
    text = again.text()
    assert "already in the pool, labels from the file applied: 2 (added 2)" in text
    assert again.filtered == {"duplicate": 2} and again.labels_rejected == 1      # frame 3: no label; 2: 'wide'
    assert "frame_0000.png: exact duplicate" not in text and "Unknown shot type 'wide'" in text
    assert sorted(labels.final_labels(studio, split="test").values()) == ["close", "long"]
    with studio.db.read() as conn:
        assert set(conn.execute(sa.select(schema.labels.c.source)).scalars()) == {"imported"}

    csv.write_text("file,shot\nframe_0000.png,close\nframe_0001.png,medium\n")
    third = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=200, split="test",
                                                       labels_file=str(csv)))
    assert "labels from the file applied: 2 (relabeled 1, unchanged 1)" in third.text()
    assert sorted(labels.final_labels(studio, split="test").values()) == ["close", "medium"]
