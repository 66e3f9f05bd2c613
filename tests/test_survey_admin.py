"""The survey admin panel: after Exclude / Include again the results are shown again at once (they
change), after Open / Close the list of surveys; the participants table rounds seconds."""

from __future__ import annotations

import gradio as gr

from dreamshot.survey.service import QUESTIONS, service
from dreamshot.survey.tab_admin import SurveyAdminHandlers, build_admin
from tests.survey_helpers import ready_survey


def _followers(demo, api_name: str):
    """The events chained (on success) after the event named ``api_name``: their output components."""
    first = next(i for i, f in demo.fns.items() if f.api_name == api_name)
    return [f.outputs for f in demo.fns.values() if f.trigger_after == first and f.trigger_only_on_success]


def test_exclusion_shows_the_results_again_and_open_close_the_list(studio):
    with gr.Blocks() as demo:
        build_admin(studio, demo)
    people = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataframe) and b.label == "Participants")
    for api_name in ("survey_exclude", "survey_include"):
        assert any(people in outputs for outputs in _followers(demo, api_name)), api_name
    results = next(f for f in demo.fns.values() if f.api_name == "survey_results")
    listing = [f for f in demo.fns.values() if f.name == "listing"]
    assert len(listing) == 2                      # after Open and after Close
    assert results.outputs[2] is people


def test_participants_table_rounds_seconds(studio):
    ready_survey(studio, name="db")
    svc = service(studio)
    token = svc.join("db", "", "198.51.100.9")
    view = svc.view(token)
    for q in QUESTIONS:
        svc.answer(token, view["slot"], view["pair_id"], q, "A", "198.51.100.9")
    h = SurveyAdminHandlers(studio)
    _, _, rows = h.results("db", request=None)
    median = rows[0][2]
    assert median is not None and median == round(median, 1)
