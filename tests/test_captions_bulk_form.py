"""Bulk edit through the Captions tab's handlers: Apply applies what the preview showed, and only
while the boxes still show that edit (issue 21, item 7); the messages name the edit."""

from __future__ import annotations

import pytest

from dreamshot.errors import InvalidInput
from labeling.captions import service as captions

from .captions_helpers import add_frames

FILTERS = ("train", "all", False, "", False)   # split, shot, not yet reviewed, search, over 77 tokens


@pytest.fixture
def ui(studio):
    from labeling.captions.tab_handlers import CaptionsHandlers

    ids = add_frames(studio, 3)
    for fid, text in zip(ids, ["a man on a bridge", "a woman in a red dress", "a close-up of a dog"]):
        captions.save_machine_caption(studio, fid, text, model="tiny")
    return CaptionsHandlers(studio), ids


def test_apply_after_the_find_box_changed_is_refused_and_changes_nothing(ui):
    h, ids = ui
    rows, note, previewed = h.replace_preview("man", "person", False, "", *FILTERS)
    assert len(rows) == 2 and "replace “man” with “person”" in note
    before = [captions.get_caption(h.studio, i).caption for i in ids]
    with pytest.raises(InvalidInput, match="The Find box changed since the preview: press Preview replace again"):
        h.replace_apply("dress", "person", False, "", *FILTERS, previewed)
    with pytest.raises(InvalidInput, match="The filters above the list changed"):
        h.replace_apply("man", "person", False, "", "train", "close", False, "", False, previewed)
    assert [captions.get_caption(h.studio, i).caption for i in ids] == before

    _, note, state, _ = h.replace_apply("man", "person", False, "", *FILTERS, previewed)
    assert note.startswith("Applied to 2 captions: replace “man” with “person”") and state is None
    assert captions.get_caption(h.studio, ids[1]).caption == "a woperson in a red dress"   # what the preview showed


def test_strip_names_its_words_and_checks_them(ui):
    h, ids = ui
    _, _, previewed = h.strip_preview("", "", False, "close-up", *FILTERS)
    with pytest.raises(InvalidInput, match="The shot words changed since the preview"):
        h.strip_apply("", "", False, "close-up, wide shot", *FILTERS, previewed)
    _, note, _, _ = h.strip_apply("", "", False, "close-up", *FILTERS, previewed)
    assert note.startswith("Applied to 1 caption: strip the shot words (close-up)")
    assert captions.get_caption(h.studio, ids[2]).caption == "a dog"
