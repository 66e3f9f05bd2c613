"""Training settings refused with the names the user sees: the Train tab's field labels in the tab
("Steps must be between …"), the flags on the command line ("--max-steps must be between …"), from
the one check in ``training.config`` (issue 21, item 9)."""

from __future__ import annotations

import pytest

from dreamshot.errors import InvalidInput
from training import config as tconfig
from training import jobs
from training.views import FORM_NAMES, TrainForm


def _form(**changes) -> TrainForm:
    values = {**{name: getattr(tconfig.preset("smoke"), name) for name in FORM_NAMES}, **changes}
    return TrainForm.from_inputs(["close"], "smoke", None, None, *[values[n] for n in FORM_NAMES])


@pytest.mark.parametrize("changes, shown", [
    (dict(max_steps=0), "Steps must be between 1 and 1,000,000 (got 0)."),
    (dict(lr_warmup_steps=9), "Warm-up steps cannot exceed Steps."),
    (dict(epochs=1.5), "Epochs must be a whole number (got 1.5)."),
    (dict(method="ti", token="a b"), "Token must be 2-48 characters"),
])
def test_the_tab_names_its_fields(studio, monkeypatch, changes, shown):
    from training.tab import TrainHandlers

    monkeypatch.setattr(jobs.TrainingRunner, "start", lambda self: self)   # nothing trains here
    with pytest.raises(InvalidInput) as refused:
        TrainHandlers(studio).start(_form(**changes), None)
    assert shown in str(refused.value) and "--" not in str(refused.value)


def test_the_command_line_names_its_flags():
    problems = tconfig.preset("smoke", max_steps=0, lr_warmup_steps=9).problems()
    assert "--max-steps must be between 1 and 1,000,000 (got 0)." in problems
    assert "--lr-warmup-steps cannot exceed --max-steps." in problems
