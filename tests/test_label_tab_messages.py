"""The Label tab tells a new user why nothing happened, and never shows stale state: keys pressed
before a name is typed or after the last frame say so on the page (the labeling events run without
the queue, and Gradio shows no toast for their errors), new settings and imports redraw the quota
bars and the class keys at once, a frame's shot clip stops when the frame changes, and the Import
panel stays open while no frame could be labeled."""

from __future__ import annotations

import pytest

from dreamshot.errors import InvalidInput
from labeling import labels, pool
from labeling.tab import LabelHandlers
from labeling.tab_admin import AdminHandlers
from tests.label_helpers import synthetic_frames, write_video


def test_a_refused_key_answers_with_its_message_in_the_frame_area(studio, tmp_path):
    h = LabelHandlers(studio)
    frame, bars, fid = h.slot_event(0)("", None, None)            # no name yet
    assert "Type your name first" in frame and 'id="label-keymap"' in frame and fid is None
    assert "0/200" in bars
    frame, _, _ = h.inline(h.undo)("  ", None)
    assert "Type your name first" in frame
    frame, _, fid = h.action_event("reject")("alice", None, None)  # a name, but an empty pool
    assert "No frame left to label for you" in frame and fid is None

    synthetic_frames(tmp_path / "pool", 2)
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=100))
    h.service.reset()
    frame, _, shown = h.slot_event(1)("alice", None, None)          # a name typed, Start not pressed yet
    assert "Nothing was labeled: no frame was shown yet" in frame and shown is not None
    assert f'data-frame="{shown}"' in frame and labels.progress(studio).counts.get("medium", 0) == 0
    frame, _, fid = h.nudge_event("sideways")("alice", shown, None)  # refused, the frame stays on screen
    assert "Nudge direction must be one of" in frame and fid == shown and f'data-frame="{shown}"' in frame
    with pytest.raises(InvalidInput, match="Nudge direction"):  # the JSON endpoint still answers with an error
        h.label_nudge("alice", shown, "sideways", None)


def test_refresh_redraws_the_bars_and_keys_after_new_settings(studio, tmp_path):
    synthetic_frames(tmp_path / "pool", 3)
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=100))
    h, admin = LabelHandlers(studio), AdminHandlers(studio)
    fid = h.service.view("alice").frame_id
    h.act("alice", fid, "close", None)
    admin.do_save("paper", "close=2, medium=2, long=2", "512", 0, 0, None)
    frame, bars, _ = h.refresh("alice", None)
    assert "1/2" in bars and 'data-keys="1,2,3"' in frame
    admin.do_save("framing", "", "512", 0, 0, None)
    frame, bars, _ = h.refresh("", None)                           # nobody started yet: the prompt
    keys = ",".join(c.key for c in labels.current_taxonomy(studio).classes)
    assert f'data-keys="{keys}"' in frame and len(keys.split(",")) > 3 and "Start / resume" in frame


def test_import_panel_stays_open_while_no_frame_was_kept(studio, tmp_path):
    admin = AdminHandlers(studio)
    assert admin.import_open()["open"] is True
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "notes.jpg").write_text("not an image")
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "bad")))
    assert admin.import_open()["open"] is True                       # one corrupt file: nothing to label
    synthetic_frames(tmp_path / "good", 1)
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "good"), min_side=100))
    assert admin.import_open()["open"] is False


def _frame_text(page) -> str:
    return page.locator("#label-frame").inner_text()


@pytest.mark.browser
def test_browser_keys_settings_and_clips_as_a_new_user_meets_them(studio, tmp_path, serve, page, artifacts_dir):
    video = write_video(tmp_path / "three-shots.mp4")
    assert pool.run_import(studio, pool.ImportOptions(str(video), min_side=100, near_duplicate_distance=-1)).kept == 3
    page.goto(serve(studio))
    page.wait_for_selector("#label-frame [data-frame]")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("1")                                         # before typing a name
    page.wait_for_function("document.querySelector('#label-frame').innerText.includes('Type your name first')")
    page.screenshot(path=str(artifacts_dir / "label-key-before-name.png"))

    page.get_by_label("Annotator name").fill("alice")
    page.get_by_role("button", name="Start / resume").click()
    page.wait_for_selector("#label-frame img.lf-crop")
    page.get_by_text("Project settings: taxonomy").click()
    quotas = page.get_by_label("Quotas (class=n, …)")
    # the page's own load fills the form (one of many load events: late on a loaded machine); typing before
    # it lands would be overwritten by it
    page.wait_for_function("el => el.value.includes('close=')", arg=quotas.element_handle())
    quotas.fill("close=4, medium=4, long=4")
    page.get_by_role("button", name="Save settings").click()
    page.wait_for_function("document.querySelector('#label-progress').innerText.includes('0/4')")

    page.get_by_text("Shot clip (frames imported").click()
    page.locator("#label-show-clip").click()
    page.wait_for_function("document.querySelector('#label-frame ~ * video, video')?.getAttribute('src')")
    first = page.locator("#label-frame [data-frame]").first.get_attribute("data-frame")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("1")
    page.wait_for_function("old => { const el = document.querySelector('#label-frame [data-frame]');"
                           " return el && el.dataset.frame !== old && !el.dataset.pending; }", arg=first)
    page.wait_for_function("document.querySelector('#label-progress').innerText.includes('1/4')")
    page.wait_for_function("!document.querySelector('video')?.getAttribute('src')")  # the old shot's clip is gone
    for _ in range(3):                                               # past the last frame
        page.keyboard.press("x")
        page.wait_for_timeout(400)
    page.wait_for_function("document.querySelector('#label-frame').innerText.includes('No frame left to label')")
    page.screenshot(path=str(artifacts_dir / "label-messages.png"), full_page=True)
