"""A labeled frame without a caption does not train on the bare prompt: a studio run is refused
before it is queued, naming the frames, in the tab/API and on the command line alike (issue 21,
item 6); the captioning run's summary counts the same way as the Captions header."""

from __future__ import annotations

import pytest

from dreamshot.errors import InvalidInput
from labeling.captions import service as captions
from labeling.captions.jobs import CaptionProgress
from training import jobs

from .captions_helpers import add_frames


def test_a_studio_run_with_uncaptioned_frames_is_refused_before_it_is_queued(studio, capsys):
    from training.__main__ import main

    ids = add_frames(studio, 6)                    # close, medium, long, close, medium, long
    captions.save_machine_caption(studio, ids[0], "a man on a bridge", model="test")
    runner = jobs.TrainingRunner(studio)
    with pytest.raises(InvalidInput) as refused:
        runner.check_request(jobs.TrainRequest(["close", "long"], "smoke"))
    message = str(refused.value)
    assert message.startswith(f"Not started: 1 close frame ({ids[3]}); 2 long frames ({ids[2]}, {ids[5]}) have "
                              "no caption")
    assert "Caption them in the Captions tab" in message and "reject them in the Label tab" in message
    assert main(["--data", str(studio.settings.data_dir), "--model", "demo", "--shots", "close",
                 "--preset", "smoke"]) == 2
    assert f"1 close frame ({ids[3]}) has no caption" in capsys.readouterr().err
    assert runner.list_runs() == []

    captions.edit_caption(studio, captions.EditRequest(ids[3], "a dog in the rain", "ann"))
    assert [c.shot for c in runner.check_request(jobs.TrainRequest(["close"], "smoke"))] == ["close"]


def test_the_captioning_summary_counts_captioned_frames_like_the_header():
    p = CaptionProgress(state="done", model="demo", split="train", total=11, done=11, failed=1,
                        errors=["frame 9: empty machine caption"])
    text = p.summary()
    assert text.startswith("Done: 10/11 train frames captioned with demo")
    assert "1 failed (frame 9: empty machine caption): write it in the editor" in text
