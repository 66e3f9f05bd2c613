"""A participant in headless Chromium on a survey-only server: start, keyboard answers (A / B / N),
a reload in the middle of a pair, the reveal after each pair, the thank-you page; screenshots at
desktop and phone width, where the survey's small (64 px) pictures are scaled up side by side and the
questions stay in view."""

from __future__ import annotations

import pytest

from dreamshot.survey.service import service
from tests.survey_helpers import answers, open_survey  # noqa: F401 (fixtures)
from tests.survey_helpers import gen_studio, lora_files  # noqa: F401

ANSWERED = "id => { const el = document.getElementById(id); const b = el && (el.tagName === 'BUTTON' ? el : el.querySelector('button')); return b && b.disabled; }"


def _press(page, key: str, question: str) -> None:
    page.keyboard.press(key)
    page.wait_for_function(ANSWERED, arg=f"survey-{question}-A")


PICTURES = """() => {
  const box = (s) => { const r = document.querySelector(s).getBoundingClientRect();
                       return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height}; };
  return {a: box('#survey-img-a img'), b: box('#survey-img-b img'), last: box('#survey-prompt-N'),
          natural: document.querySelector('#survey-img-a img').naturalWidth,
          scroll_width: document.documentElement.scrollWidth};
}"""


def _pictures_fill_and_questions_show(page, width: int, height: int, at_least: int) -> None:
    """A and B side by side, each at most half the width and at least ``at_least`` px wide (scaled
    up from their natural size, square kept), and the last answer button in view without scrolling."""
    page.wait_for_function("() => document.querySelector('#survey-img-b img')?.complete")
    got = page.evaluate(PICTURES)
    a, b = got["a"], got["b"]
    assert got["natural"] == 64                                      # the small survey's pictures
    assert abs(a["top"] - b["top"]) < 1 and a["right"] <= b["left"], got    # side by side, A first
    assert at_least <= a["width"] <= width / 2 and abs(a["width"] - b["width"]) < 1, got
    assert abs(a["width"] - a["height"]) <= 1 and abs(b["width"] - b["height"]) <= 1, got   # aspect kept
    assert got["last"]["bottom"] <= height and got["scroll_width"] <= width, got


def _pair_header(page, n: int, total: int = 3) -> None:
    page.wait_for_function("t => (document.querySelector('#survey-header')?.innerText || '').includes(t)",
                           arg=f"Pair {n} of {total}")


@pytest.mark.browser
def test_participant_keyboard_reload_and_thanks(open_survey, make_studio, serve, browser, artifacts_dir):
    participant = make_studio(data_dir=open_survey.settings.data_dir, survey_only=True)
    service(participant).max_new_per_hour = 100
    url = serve(participant)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(url)
    page.get_by_role("button", name="Start the survey").click()
    _pair_header(page, 1)
    page.wait_for_selector("#survey-img-a img")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(artifacts_dir / "survey-desktop.png"), full_page=True)
    _pictures_fill_and_questions_show(page, 1280, 900, at_least=300)
    _press(page, "a", "like")
    _press(page, "b", "shot")
    assert [r[4] for r in answers(open_survey)] == ["A", "B"]   # committed before acknowledged

    page.reload()                                   # the token is in the browser: same pair, answers kept
    _pair_header(page, 1)
    page.wait_for_function(ANSWERED, arg="survey-shot-A")
    page.keyboard.press("n")
    _pair_header(page, 2)
    status = page.locator("#survey-status").inner_text()
    assert "was the fine-tuned model" in status     # revealed only after the pair's answers are stored
    for n in (2, 3):
        for key, q in (("a", "like"), ("a", "shot"), ("b", "prompt")):
            if q == "prompt":
                page.keyboard.press(key)
            else:
                _press(page, key, q)
        if n == 2:
            _pair_header(page, 3)
    page.wait_for_selector("#survey-thanks", state="visible")
    assert "Thank you" in page.locator("#survey-thanks").inner_text()
    rows = answers(open_survey)
    assert len(rows) == 9 and len({r[0] for r in rows}) == 1
    context.close()

    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                has_touch=True)
    page = phone.new_page()
    page.goto(url)
    page.get_by_role("button", name="Start the survey").click()
    _pair_header(page, 1)
    page.wait_for_selector("#survey-img-b img")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(artifacts_dir / "survey-phone.png"), full_page=True)
    _pictures_fill_and_questions_show(page, 390, 844, at_least=140)
    page.locator("#survey-like-B").tap()            # touch answers work too
    page.wait_for_function(ANSWERED, arg="survey-like-A")
    phone.close()

    # A phone held sideways: no tab bar and a one-line title, so both pictures are whole on screen.
    sideways = browser.new_context(viewport={"width": 844, "height": 390}, is_mobile=True, has_touch=True)
    page = sideways.new_page()
    page.goto(url)
    page.get_by_role("button", name="Start the survey").click()
    page.wait_for_function("() => document.querySelector('#survey-img-b img')?.complete")
    got = page.evaluate(PICTURES)
    assert got["a"]["width"] >= 150 and got["b"]["bottom"] <= 390 and got["scroll_width"] <= 844, got
    page.screenshot(path=str(artifacts_dir / "survey-phone-sideways.png"))
    sideways.close()
