"""MP4 writing keeps every frame past the encoder's lookahead (a 16-frame clip is 16 frames)."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from dreamshot.video import media


@pytest.mark.parametrize("count,fps", [(16, 8), (32, 12), (20, 29.97)])
def test_write_mp4_keeps_every_frame_at_the_frame_rate(tmp_path, count, fps):
    rng = np.random.default_rng(count)
    frames = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(count)]
    path = media.write_mp4(frames, fps, tmp_path / "clip.mp4", comment="a prompt, Steps: 2")
    assert media.count_frames(path) == count
    with av.open(str(path)) as container:
        assert abs(float(container.streams.video[0].average_rate) - fps) < 0.01
