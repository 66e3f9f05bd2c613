"""The caption editor never shows stale text: the training prompt and its token count follow
deletions too (Gradio 6 sends no input event for Backspace), and a captioning run that just ended
shows its caption in the open, untouched editor."""

from __future__ import annotations

import pytest

from labeling.captions import jobs as caption_jobs
from labeling.captions import service as captions
from labeling.captions.tab import CaptionsHandlers

from .captions_helpers import add_frames


def test_a_finished_run_fills_the_open_untouched_editor(studio, monkeypatch):
    ids = add_frames(studio, 2)
    ui = CaptionsHandlers(studio)
    opened = ui.first("train", "all", False, "", False)
    assert opened[2] == ids[0] and opened[4] == ""
    captions.save_machine_caption(studio, ids[0], "a man in a hat", model="tiny")  # what the run wrote
    worker = type(caption_jobs.service(studio))
    monkeypatch.setattr(worker, "just_finished", lambda self, within_s=5: False)
    assert all(isinstance(v, dict) for v in ui.editor_if_finished(ids[0], "", None))   # still running: skip
    monkeypatch.setattr(worker, "just_finished", lambda self, within_s=5: True)
    out = ui.editor_if_finished(ids[0], "", None)
    assert out[2] == ids[0] and out[4] == "a man in a hat" and "picture of a man in a hat" in out[5]
    assert "a man in a hat" in out[1]  # the machine caption line
    typed = ui.editor_if_finished(ids[0], "my own words", None)     # someone typed: left alone
    assert all(isinstance(v, dict) for v in typed)


@pytest.mark.browser
def test_prompt_preview_follows_deletions(studio, serve, page, artifacts_dir):
    (fid,) = add_frames(studio, 1)
    captions.save_machine_caption(studio, fid, "a man reading a newspaper", model="tiny")
    page.goto(serve(studio))
    page.get_by_role("tab", name="Captions").click()
    page.wait_for_function("document.querySelector('#caption-prompt')?.innerText.includes('reading a newspaper')")
    box = page.locator("#caption-box textarea")
    box.click()
    box.press("End")
    for _ in range(len(" a newspaper")):
        box.press("Backspace")
    page.wait_for_function("() => { const t = document.querySelector('#caption-prompt').innerText;"
                           " return t.includes('picture of a man reading') && !t.includes('newspaper'); }")
    box.press("Control+a")
    box.press("Delete")
    page.wait_for_function("document.querySelector('#caption-prompt').innerText.includes('No training prompt yet')")
    page.screenshot(path=str(artifacts_dir / "captions-prompt-after-delete.png"))
    assert captions.get_caption(studio, fid).caption == "a man reading a newspaper"  # nothing saved


def test_the_end_of_a_run_refreshes_the_page_on_a_slow_server(studio, monkeypatch):
    """The poll that sees a run ended may be served seconds later on a busy server (a 5 s window
    missed it under load): the list and the editor still refresh."""
    ids = add_frames(studio, 2)
    captions.save_machine_caption(studio, ids[0], "a man in a hat", model="tiny")
    worker = caption_jobs.service(studio)
    with worker._lock:
        worker._progress = caption_jobs.CaptionProgress(state="done", finished_at=1000.0)
    monkeypatch.setattr(caption_jobs.time, "time", lambda: 1000.0 + 20)  # seen 20 s after the end
    ui = CaptionsHandlers(studio)
    listed = ui.list_if_finished("train", "all", False, "", False, 1)
    assert "2 captions match" in listed[3]
    assert ui.editor_if_finished(ids[0], "", None)[4] == "a man in a hat"
    monkeypatch.setattr(caption_jobs.time, "time", lambda: 1000.0 + 3600)  # an old run: nothing to do
    assert all(isinstance(v, dict) for v in ui.list_if_finished("train", "all", False, "", False, 1))
