"""Building a survey from the admin form or the service: what a second build with the same name
does, settings no pair can be made with, an empty pasted list, and form numbers taken as given."""

from __future__ import annotations

import pytest

from dreamshot.errors import InvalidInput
from dreamshot.survey.service import service
from dreamshot.survey.tab_admin import SOURCES, BuildForm, SurveyAdminHandlers
from tests.survey_helpers import add_frames, small_spec
from tests.survey_helpers import gen_studio, lora_files  # noqa: F401  (fixtures)


def _form(**kw) -> BuildForm:
    values = dict(name="form", shots=["close", "medium"], pairs=4, per_participant=2, alpha=1.0, source=SOURCES[1],
                  prompts="a woman reading\na man on a bridge", frames="", intro="hi", steps=2, size=64)
    return BuildForm(**{**values, **kw})


def test_a_finished_survey_asked_for_with_other_settings_is_refused(gen_studio, one_torch_thread):
    svc = service(gen_studio)
    svc.build(small_spec())
    with pytest.raises(InvalidInput, match=r"exists already.*steps 3 \(it has 2\)"):
        svc.build(small_spec(steps=3))
    with pytest.raises(InvalidInput, match=r"b lora@0\.5 \(it has lora@1\)"):
        svc.build(small_spec(alpha=0.5))
    info = svc.build(small_spec())           # the same settings again: nothing to do, no error
    assert (info.ready, info.pool, info.settings["steps"]) == (4, 4, 2)


def test_an_unfinished_survey_is_finished_with_its_own_settings_and_the_form_told(gen_studio, one_torch_thread,
                                                                                   monkeypatch):
    """The handler words what ``build`` returns (``kept``): the survey is read and compared once."""
    from dreamshot.survey import build as building

    svc = service(gen_studio)
    svc.create(small_spec(name="form", prompts=["a woman reading", "a man on a bridge"]))
    compared = []
    real = building.differences
    monkeypatch.setattr(building, "differences", lambda *a: compared.append(a) or real(*a))
    message = SurveyAdminHandlers(gen_studio).build(_form(steps=3), request=None)
    assert "4/4 pairs ready" in message
    assert "settings it was created with, not the form's: steps 3 (it has 2)" in message
    assert len(compared) == 1                       # by the service; the handler asks nothing again
    assert svc.info("form").settings["steps"] == 2
    assert svc.build(small_spec(name="new", pairs=2)).kept == ()
    svc.create(small_spec(name="later", pairs=2))
    assert svc.build(small_spec(name="later", pairs=2, steps=3)).kept == ("steps 3 (it has 2)",)


@pytest.mark.parametrize("changes, message", [(dict(steps=1000), "Steps must be between"),
                                              (dict(width=100000, height=100000), "Width must be between"),
                                              (dict(width=60, height=60), "not a multiple of 8"),
                                              (dict(cfg=-4.0), "CFG scale")])
def test_settings_no_pair_can_be_made_with_leave_no_draft_behind(gen_studio, changes, message):
    svc = service(gen_studio)
    with pytest.raises(InvalidInput, match=message):
        svc.build(small_spec(name="bad", **changes))
    assert svc.list() == []                  # the name is still free, nothing stuck half-built


def test_an_empty_pasted_list_is_refused_not_replaced_by_held_out_frames(gen_studio):
    add_frames(gen_studio, [("test", "close", "a held-out caption")])
    svc = service(gen_studio)
    with pytest.raises(InvalidInput, match="prompt list is empty"):
        svc.create(small_spec(name="empty", prompts=[]))
    with pytest.raises(InvalidInput, match="prompt list is empty"):
        svc.create(_form(prompts="\n  \n# only a comment\n").spec())
    assert svc.list() == []


def test_form_numbers_are_taken_as_given_and_empty_ones_get_defaults():
    spec = _form(steps=0, alpha=0, size=0).spec()
    assert (spec.steps, spec.alpha, spec.width) == (0, 0, 0)      # checked later, never silently 16 / 1 / 512
    spec = _form(steps=None, alpha=None, size="", pairs=None).spec()
    assert (spec.steps, spec.alpha, spec.width, spec.pairs) == (16, 1.0, 512, 0)
    # a frame list left in its field does not matter while prompts are pasted
    assert _form(frames="12, x").spec().frames is None
    with pytest.raises(InvalidInput, match="Frame ids"):
        _form(frames="12, x", source=SOURCES[0]).spec()


def test_survey_and_evaluate_share_one_generator_pair_widget(studio):
    """Both forms get their Generator A / B from ``dreamshot.ui.generator_dropdowns``: the same
    labels, defaults, forms hint and free text, under their own element ids."""
    import gradio as gr

    from dreamshot.evaluate import tab as evaluate_tab
    from dreamshot.survey import tab as survey_tab

    with gr.Blocks() as demo:
        survey_tab.build(studio, demo)
        evaluate_tab.build(studio, demo)
    found = {b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label
             and b.label.startswith("Generator")}
    assert set(found) == {"survey-gen-a", "survey-gen-b", "eval-gen-a", "eval-gen-b"}
    for prefix in ("survey", "eval"):
        a, b = found[f"{prefix}-gen-a"], found[f"{prefix}-gen-b"]
        assert (a.label, a.value, b.label, b.value) == ("Generator A", "base", "Generator B", "lora")
        assert a.allow_custom_value and b.allow_custom_value
        assert a.info.startswith("base, lora@0.8, full@1, ti")
    assert found["survey-gen-b"].info.startswith("participants see A and B on random sides")
    assert found["eval-gen-b"].info.startswith("'lora' = the shot's LoRA at the α below")
