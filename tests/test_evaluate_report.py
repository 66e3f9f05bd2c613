"""What Evaluate shows (issue 21, item 11): a chart whose text can be read and whose negative CLIP-T
bars are drawn below zero, the judge's accuracy "on all 12 labeled frames", and the offline depth
model's message naming the model once."""

from __future__ import annotations

import numpy as np
import pytest

from dreamshot.errors import ModelLoadError
from dreamshot.evaluate import report


def _row(a: float, b: float) -> dict:
    return {"n": 12, "base": a, "tuned": b, "diff": b - a, "ci_low": 0.0, "ci_high": 0.0}


def _ink(img, colour, box) -> np.ndarray:
    """Rows and columns of ``box`` where ``img`` has exactly ``colour``."""
    arr = np.asarray(img.crop(box).convert("RGB")).astype(int)
    return np.argwhere((np.abs(arr - np.array(colour)).sum(axis=2) == 0))


def test_negative_clip_t_bars_are_drawn_below_zero_and_the_text_is_readable():
    results = {"complete": True, "tables": {"table3": {"clip_t": {"overall": _row(-0.03, -0.01)}}}}
    img = report.plot(results)
    left = (0, 90, img.width // 2, img.height - 46)     # the CLIP-T panel, below the legend
    blue, grey = _ink(img, (40, 110, 200), left), _ink(img, (150, 150, 150), left)   # side B, side A
    assert len(blue) > 300 and len(grey) > 300                     # two bars, not two 1-pixel lines
    assert grey[:, 0].max() - grey[:, 0].min() > 2 * (blue[:, 0].max() - blue[:, 0].min())  # -0.03 vs -0.01
    title = _ink(img, (0, 0, 0), (0, 0, img.width, 40))
    assert title[:, 0].max() - title[:, 0].min() >= 14             # the title's letters are >= 14 px tall


@pytest.mark.parametrize("measured_on, words", [("all labeled frames", "on all 12 labeled frames"),
                                                ("held-out labeled frames", "on 12 held-out labeled frames")])
def test_the_judge_accuracy_names_its_frames_in_order(measured_on, words):
    text = report.judge_text({"kind": "zeroshot", "accuracy": 0.5, "accuracy_ci": [0.25, 0.75], "n": 12,
                              "measured_on": measured_on, "classes": ["close"], "confusion": [[6]]})
    assert words in text


def test_the_offline_depth_model_message_names_the_model_once(studio):
    from dreamshot.generate.control_models import DEFAULT_DEPTH_MODEL, controls

    with pytest.raises(ModelLoadError) as refused:
        controls(studio).depth()
    message = str(refused.value)
    assert message.count(DEFAULT_DEPTH_MODEL) == 1 and "DREAMSHOT_DEPTH_MODEL" in message


@pytest.mark.parametrize("lo, hi", [(-0.4212, -0.4210), (0.95301, 0.95304), (0.2, 0.9)])
def test_the_alpha_curve_labels_its_two_ends_apart(lo, hi):
    """An α curve that moves by 0.0002 read -0.421 at both ends of its axis."""
    from dreamshot.evaluate.report import _digits

    digits = _digits(lo, hi)
    assert f"{lo:.{digits}f}" != f"{hi:.{digits}f}" and digits <= 6
