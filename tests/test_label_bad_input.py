"""Bad input a new user types at the Label and Captions command lines and forms: a clear one-line
refusal before anything is written."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from labeling import pool
from labeling.__main__ import main
from tests.label_helpers import synthetic_frames


@pytest.mark.parametrize("distance", [33, 64, 1000, -2])
def test_an_impossible_near_duplicate_distance_is_refused(studio, tmp_path, distance):
    synthetic_frames(tmp_path / "pool", 3)
    with pytest.raises(InvalidInput, match="near-duplicate distance must be between 0 and 32"):
        pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=100,
                                                   near_duplicate_distance=distance))
    with studio.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.frames)).scalar() == 0


def test_every_labeling_command_takes_the_studio_flags(tmp_path, capsys):
    """README: each command takes the settings (--data, --model, --db); a script passing them to every
    command must not trip on the caption commands that load no model."""
    data = str(tmp_path / "data")
    assert main(["caption-stats", "--data", data, "--model", "demo"]) == 0
    assert "0/0 captioned" in capsys.readouterr().out
    assert main(["caption-replace", "a", "b", "--data", data, "--model", "demo"]) == 0
    assert main(["stats", "--data", data, "--model", "demo"]) == 0
