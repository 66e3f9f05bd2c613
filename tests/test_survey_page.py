"""The participant page's handlers (no server): a refused answer, a page left behind by another
window, a survey closed under a participant, a start with nothing open; the page stays whole and
says why (Gradio would otherwise stamp "Error" over every picture and button)."""

from __future__ import annotations

import pytest

from dreamshot.errors import InvalidInput
from dreamshot.survey.service import QUESTIONS, service
from dreamshot.survey.tab import SurveyHandlers
from tests.survey_helpers import ready_survey

PAIR_COLUMN, HEADER, STATUS, END, SLOT = 4, 5, 17, 18, 19


class Req:
    client = type("C", (), {"host": "192.0.2.1"})()
    headers = {}
    query_params = {}
    username = None


def _started(studio):
    ready_survey(studio, name="db")
    h = SurveyHandlers(studio)
    page = h.ui_start("", "", Req())
    return h, page[0], page[SLOT], page[SLOT + 1]


def test_a_refused_answer_keeps_the_page_and_says_why(studio):
    h, token, slot, pair = _started(studio)
    h.ui_answer("like", "A", token, slot, pair, Req())
    page = h.ui_answer("like", "B", token, slot, pair, Req())        # a second, different answer
    assert "Not saved" in page[STATUS] and "answers are final" in page[STATUS]
    assert page[PAIR_COLUMN].visible is True and page[SLOT] == slot
    assert [a for a in service(studio).view(token)["answered"].values()] == ["A"]   # nothing lost or changed


def test_a_page_left_behind_by_another_window_moves_on(studio):
    h, token, slot, pair = _started(studio)
    for q in QUESTIONS:                                               # the other window answers the pair
        service(studio).answer(token, slot, pair, q, "A", "192.0.2.1")
    page = h.ui_answer("like", "B", token, slot, pair, Req())
    assert "answers are final" in page[STATUS]
    assert page[SLOT] == slot + 1 and f"Pair {slot + 2} of" in page[HEADER]
    assert page[6] is not None and page[7] is not None               # the next pair's pictures


def test_a_survey_closed_under_a_participant_says_so(studio):
    h, token, slot, pair = _started(studio)
    h.ui_answer("like", "A", token, slot, pair, Req())
    service(studio).set_state("db", "closed")
    page = h.ui_answer("shot", "A", token, slot, pair, Req())
    assert "closed" in page[STATUS] and page[PAIR_COLUMN].visible is False
    assert page[END].visible is True and "This survey is closed" in page[END].value
    assert "0 pair" not in page[END].value                           # no pair was complete yet
    reloaded = h.ui_load(token, Req())                               # a reload: no live buttons on a closed survey
    assert reloaded[PAIR_COLUMN].visible is False and "This survey is closed" in reloaded[END].value


def test_start_with_nothing_open_is_a_message_not_an_error(studio):
    page = SurveyHandlers(studio).ui_start("", "", Req())
    assert "No survey is open right now" in page[STATUS]
    assert page[PAIR_COLUMN].visible is False


def test_images_of_a_negative_slot_are_refused(studio):
    h, token, slot, pair = _started(studio)
    with pytest.raises(InvalidInput, match="not one of this participant's pairs"):
        service(studio).images(token, -1)


def test_a_link_to_one_of_several_open_surveys_starts_that_one(studio):
    """README: "With several surveys open a chooser appears, or link participants to ?survey=NAME".
    The link's survey is chosen (its intro shown, no chooser), so Start joins it, not the first."""
    ready_survey(studio, name="first")
    ready_survey(studio, name="second")

    class Linked(Req):
        query_params = {"survey": "second"}

    h = SurveyHandlers(studio)
    page = h.ui_load("", Linked())
    chooser = page[-1]
    assert (chooser.value, chooser.visible) == ("second", False) and page[2].value == "hello"
    started = h.ui_start(chooser.value, "", Linked())
    assert service(studio).view(started[0])["survey"] == "second"
    plain = h.ui_load("", Req())                                      # no link: choose
    assert plain[-1].visible is True and "Choose a survey" in plain[2].value
