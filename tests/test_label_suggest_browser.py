"""The suggestions in Chromium: the model's class and confidence over the frame, Enter accepts it
(stored as source=suggested), and the Order menu changes the queue (kept for the annotator)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dreamshot import schema
from labeling import annotate
from tests.suggest_helpers import colored_frames, model_ready, seed_labels, wait_for


@pytest.mark.browser
def test_accept_a_suggestion_with_enter_see_its_confidence_and_change_the_order(studio, serve, page, artifacts_dir):
    truth = colored_frames(studio, 10)
    studio.db.set_setting("suggest_blind_share", 0.0)
    seed_labels(studio, truth, 8)
    ann = annotate.service(studio)
    ann.view("seed")
    wait_for(model_ready(ann.suggest, len(truth)), what="the model")
    page.goto(serve(studio))
    page.wait_for_selector("#label-frame [data-frame]")
    page.get_by_label("Annotator name").fill("alice")
    page.get_by_role("button", name="Start / resume").click()
    badge = page.locator("#label-frame .lf-cur .lf-sug")
    badge.wait_for()
    root = page.locator("#label-frame .lf-root")
    first, suggested = int(root.get_attribute("data-frame")), root.get_attribute("data-suggest")
    assert suggested == truth[first] and "% confident" in badge.inner_text() and "Model suggests" in badge.inner_text()
    page.evaluate("document.activeElement && document.activeElement.blur()")

    page.keyboard.press("Enter")
    page.wait_for_function("old => { const el = document.querySelector('#label-frame [data-frame]');"
                           " return el && el.dataset.frame !== old && !el.dataset.pending; }", arg=str(first))
    with studio.db.read() as conn:
        L = schema.labels
        row = conn.execute(sa.select(L.c.frame_id, L.c.shot, L.c.source, L.c.suggestion_shown)
                           .where(L.c.annotator == "alice")).one()
    assert tuple(row) == (first, truth[first], "suggested", True)

    page.locator("#label-order input").click()
    page.get_by_role("option", name="Uncertain first").click()
    page.wait_for_function("() => document.querySelector('#label-frame').innerText.includes('order: Uncertain first')")
    assert studio.db.get_setting("label_queue:alice") == {"split": "train", "order": "uncertain"}
    assert "uncertain first" in page.locator("#label-frame .lf-cur .lf-meta").inner_text()
    page.screenshot(path=str(artifacts_dir / "label-suggestions.png"), full_page=True)
