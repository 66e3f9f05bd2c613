"""The Captions tab as a user meets it: the real app served on 127.0.0.1, driven by gradio_client
(named endpoints) and by Playwright in headless Chromium (the keyboard edit flow)."""

from __future__ import annotations

import time

import pytest

from labeling.captions import service as captions

from .captions_helpers import add_frames
from .test_captions_captioner import tiny_blip2  # noqa: F401  (session fixture)


def _drafted(studio, n=4):
    ids = add_frames(studio, n)
    for fid, text in zip(ids, ["a close-up of a man", "a woman in a car", "a dog on a beach", "a man reading"]):
        captions.save_machine_caption(studio, fid, text, model="tiny")
    return ids


def test_handlers_check_the_role_themselves(make_studio):
    from dreamshot.errors import AccessDenied
    from labeling.captions.tab import CaptionsHandlers

    studio = make_studio(admin_password="secret-pw")
    ids = _drafted(studio)
    ui = CaptionsHandlers(studio)
    with pytest.raises(AccessDenied):
        ui.save(ids[0], "a cat", None, "train", None)  # no logged-in user
    with pytest.raises(AccessDenied):
        ui.replace_apply("a", "b", False, "", "train", "all", False, "", False, None, None)

    class Member:
        username = "alice"

    out = ui.save(ids[0], "a cat", None, "train", Member())
    assert out[4] == "a cat" and captions.get_caption(studio, ids[0]).edited_by == "alice"


def test_skip_keeps_typed_text_and_leaves_untouched_captions_unreviewed(studio):
    from labeling.captions.tab import CaptionsHandlers

    ids = _drafted(studio)
    ui = CaptionsHandlers(studio)
    out = ui.next(ids[0], "a close-up of a man", 1, "train", "all", False, "", False, None)  # untouched
    assert out[2] == ids[1] and not captions.get_caption(studio, ids[0]).reviewed
    out = ui.next(ids[1], "a woman in a taxi", 1, "train", "all", False, "", False, None)  # typed
    assert out[2] == ids[2] and "Saved frame" in out[1]
    assert captions.get_caption(studio, ids[1]).caption == "a woman in a taxi"
    out = ui.prev(ids[0], "", 1, "train", "all", False, "", False, None)  # wraps to the last one
    assert out[2] == ids[3]


def test_endpoints_with_gradio_client(studio, serve, tiny_blip2):  # noqa: F811
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    ids = _drafted(studio)
    ids += add_frames(studio, 2)  # not captioned yet
    client = Client(serve(studio), verbose=False)

    _, _, info, _, stats = client.predict("train", "all", False, "", False, 1, api_name="/captions_list")
    assert "6 captions match" in info and "4/6 frames captioned" in stats

    out = client.predict(ids[1], "a woman driving a car", 1, "train", api_name="/caption_save")
    assert out[2] == ids[1] and out[4] == "a woman driving a car"
    assert "a high-quality medium shot picture of a woman driving a car" in out[5]
    assert "edit rate **25%**" in out[6]
    with pytest.raises(AppError, match="cannot be empty"):
        client.predict(ids[1], "   ", None, "train", api_name="/caption_save")
    assert captions.get_caption(studio, ids[1]).caption == "a woman driving a car"
    with pytest.raises(AppError, match="Frame 100000000000000000000 does not exist"):  # not "Internal error"
        client.predict(1e20, "a cat", None, "train", api_name="/caption_save")

    rows, note = client.predict("man", "person", False, "", "train", "all", False, "", False,
                                api_name="/caption_replace_preview")
    assert "3 captions would change" in note  # "woman" is a match too (plain substring)
    assert sorted(r[0] for r in rows["data"]) == [ids[0], ids[1], ids[3]]
    table, note, _ = client.predict("man", "person", False, "", "train", "all", False, "", False,
                                    api_name="/caption_replace_apply")
    assert "Applied to" in note
    assert captions.get_caption(studio, ids[3]).caption == "a person reading"

    with pytest.raises(AppError, match="cannot load captioner"):
        client.predict("Salesforce/blip2-flan-t5-xl", 2, "", 10, "train", False, api_name="/caption_start")
    status, _ = client.predict(tiny_blip2, 2, "", 5, "train", False, api_name="/caption_start")
    deadline = time.time() + 120
    while "Done" not in status and time.time() < deadline:
        time.sleep(0.5)
        status, _, stats = client.predict("train", api_name="/caption_progress")
    assert "Done: 2/2 train frames" in status and "4 already captioned, skipped" in status
    assert "6/6 frames captioned" in stats


@pytest.mark.browser
def test_keyboard_edit_flow_in_the_browser(studio, serve, page, artifacts_dir):
    ids = _drafted(studio)
    page.goto(serve(studio))
    page.get_by_role("tab", name="Captions").click()
    info = page.locator("#caption-info")
    box = page.locator("#caption-box textarea")
    prompt = page.locator("#caption-prompt")
    page.wait_for_function("document.querySelector('#caption-info')?.innerText.includes('Frame 1')")
    assert box.input_value() == "a close-up of a man"

    # type: the exact training prompt and its token count follow live
    box.click()
    box.press("Control+a")
    box.press_sequentially("a man in a hat", delay=20)
    page.wait_for_function("document.querySelector('#caption-prompt').innerText.includes('picture of a man in a hat')")
    assert "/77 CLIP tokens" in prompt.inner_text()

    # Ctrl+Enter: saved, next caption opened, cursor still in the caption box
    box.press("Control+Enter")
    page.wait_for_function(f"document.querySelector('#caption-info').innerText.includes('Frame {ids[1]}')")
    assert box.input_value() == "a woman in a car"
    page.wait_for_function("document.activeElement?.closest('#caption-box') !== null")
    v = captions.get_caption(studio, ids[0])
    assert (v.caption, v.edited_by, v.reviewed) == ("a man in a hat", "local", True)
    assert v.caption_original == "a close-up of a man"
    page.wait_for_function("document.querySelector('#captions-table').innerText.includes('a man in a hat')")

    # accept the next one unchanged with the keyboard: reviewed, not counted as changed
    page.keyboard.press("Control+Enter")
    page.wait_for_function(f"document.querySelector('#caption-info').innerText.includes('Frame {ids[2]}')")
    assert captions.get_caption(studio, ids[1]).reviewed
    # Alt+Up goes back without saving
    page.keyboard.press("Alt+ArrowUp")
    page.wait_for_function(f"document.querySelector('#caption-info').innerText.includes('Frame {ids[1]}')")
    page.wait_for_function("document.querySelector('#captions-stats').innerText.includes('edit rate 25%')")
    page.screenshot(path=str(artifacts_dir / "captions-tab.png"), full_page=True)
    # a reload shows the saved text
    page.reload()
    page.get_by_role("tab", name="Captions").click()
    page.wait_for_function("document.querySelector('#captions-table')?.innerText.includes('a man in a hat')")


@pytest.mark.browser
def test_auto_caption_from_the_browser_with_progress(studio, serve, page, tiny_blip2):  # noqa: F811
    ids = add_frames(studio, 3)
    page.goto(serve(studio))
    page.get_by_role("tab", name="Captions").click()
    page.wait_for_function("document.querySelector('#captions-table')?.innerText.includes('(no caption)')")
    page.get_by_text("Auto-caption", exact=True).first.click()
    model = page.locator("#captioner-model input")
    model.fill(tiny_blip2)
    model.press("Enter")
    page.locator("#caption-start").click()
    # the timer polls the background run; the list and the edit rate follow when it ends
    page.wait_for_function("document.querySelector('#caption-progress').innerText.includes('Done: 3/3 train frames')",
                           timeout=90_000)
    page.wait_for_function("!document.querySelector('#captions-table').innerText.includes('(no caption)')")
    page.wait_for_function("document.querySelector('#captions-stats').innerText.includes('3/3 frames captioned')")
    assert captions.frames_with_machine_caption(studio, ids) == set(ids)
    # the open (untouched) editor shows the caption the run wrote, not the empty box of before
    first = captions.get_caption(studio, ids[0])
    page.wait_for_function("t => document.querySelector('#caption-box textarea').value === t", arg=first.caption)
    assert "(none yet)" not in page.locator("#caption-info").inner_text()


@pytest.mark.browser
def test_a_refused_save_leaves_the_page_as_it_was(studio, serve, page, artifacts_dir):
    """Issue 13: after a refused empty caption every output showed a red "Error" badge and the image
    disappeared. The refusal is a toast; the editor keeps its image, text and info."""
    ids = _drafted(studio)
    page.goto(serve(studio))
    page.get_by_role("tab", name="Captions").click()
    page.wait_for_function("document.querySelector('#caption-info')?.innerText.includes('Frame')")
    page.wait_for_function("document.querySelector('#captions-editor img')?.naturalWidth > 0")
    info_before = page.locator("#caption-info").inner_text()
    box = page.locator("#caption-box textarea")
    box.fill("   ")
    page.locator("#caption-save").click()
    toast = page.locator(".toast-body").filter(has_text="A caption cannot be empty")
    toast.first.wait_for(timeout=15_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts_dir / "captions-refusal.png"), full_page=True)
    shown_badges = page.evaluate("""() => [...document.querySelectorAll(
        '#captions-editor [data-testid=status-tracker]')].filter(t => t.querySelector('.error')
        && !t.classList.contains('hide') && getComputedStyle(t).opacity !== '0').length""")
    assert shown_badges == 0   # gradio's red "Error" badge over an output
    assert page.locator("#captions-editor img").first.evaluate("im => im.naturalWidth") > 0
    assert info_before.strip() in page.locator("#caption-info").inner_text()  # (a hidden tracker adds text)
    assert captions.get_caption(studio, ids[0]).caption == "a close-up of a man"
