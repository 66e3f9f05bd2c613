"""Absurd numbers for an evaluation: a huge pair count plans at once (it hung the server, looping up
to the count), and numbers that only mattered at the end (bootstrap, α-curve values) are refused
before a single image is generated."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from dreamshot.errors import InvalidInput
from dreamshot.evaluate import pairs
from dreamshot.evaluate.pairs import EvalOptions
from dreamshot.evaluate.service import service
from tests.evaluate_fixtures import eval_studio, tiny_eval_models  # noqa: F401
from tests.generate_fixtures import lora_files  # noqa: F401 (fixture)


def test_a_huge_pair_count_is_planned_at_once_and_reports_the_shortfall():
    frames = [SimpleNamespace(shot=s, key=f"{s}{i}") for s in ("close", "medium") for i in range(3)]
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=pairs.choose(frames, ["close", "medium"], 10**12, 0)),
                              daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "choose() loops up to the requested count"
    chosen, short = result["out"]
    assert len(chosen) == 6 and short == {"close": 5 * 10**11 - 3, "medium": 5 * 10**11 - 3}


@pytest.mark.parametrize("changes, message", [
    (dict(bootstrap=0), "Bootstrap resamples must be between 100"),
    (dict(bootstrap=10**9), "Bootstrap resamples must be between 100"),
    (dict(alpha_values=[0.0, 1000.0]), "α curve values must be between 0 and 1.5"),
    (dict(alpha_values=[i / 100 for i in range(50)]), "at most 21 values"),
    (dict(min_labels=0), "--min-labels must be at least 1"),
])
def test_numbers_used_at_the_end_are_refused_before_generating(eval_studio, tiny_eval_models, tmp_path, changes,
                                                                message, one_torch_thread):
    settings = dict(out=str(tmp_path / "eval"), clip_model=tiny_eval_models["clip"], dino_model=tiny_eval_models["dino"],
                    pairs=2, width=64, height=64, steps=2, alpha_subset=1, alpha_values=[0.0, 1.0], bootstrap=200)
    options = EvalOptions(**{**settings, **changes})
    with pytest.raises(InvalidInput, match=message):
        service(eval_studio).run(options)
    assert not (tmp_path / "eval" / "pairs.jsonl").exists()


def test_a_run_short_of_frames_does_not_ask_to_be_resumed():
    from dreamshot.evaluate import report

    short = dict(complete=False, stopped="short of the plan", pairs_planned=6, pairs_done=6,
                 short={"close": 1494, "medium": 1494})
    line = report.status_line(short)
    assert line.startswith("**INCOMPLETE") and "Run again" not in line
    assert "missing: close 1494, medium 1494" in line and "at most 6 captions" in line
    twins = dict(short, settings={"ablation": True})              # 6 pairs = 3 captions, each twice
    line = report.status_line(twins)
    assert "(3 captions, each with and without the shot type)" in line and "at most 3 captions" in line
    stopped = dict(short, stopped="stopped", pairs_done=2)        # a stopped run still resumes
    assert "Run again with the same settings to resume" in report.status_line(stopped)
