"""Caption service: edits, review, edit rate, the race with machine captions, bulk operations with
preview, shot-word strip, template and CLIP token count - on a real SQLite file, no captioner."""

from __future__ import annotations

import pytest

from dreamshot.errors import InvalidInput, NotFound
from labeling.captions import bulk
from labeling.captions import service as captions
from labeling.captions.service import CaptionFilter, EditRequest
from labeling.captions.tokens import token_counts

from .captions_helpers import add_frames


@pytest.fixture
def drafted(studio):
    """Six labeled train frames with machine captions, one unlabeled test frame."""
    ids = add_frames(studio, 6)
    texts = ["a close-up of a man with a beard", "a woman in a red dress", "a wide shot of a city street",
             "two men talking in a bar", "a man in close-up, smiling", "a car on a road"]
    for fid, text in zip(ids, texts):
        assert captions.save_machine_caption(studio, fid, text, model="tiny") == "new"
    return studio, ids


def test_list_shows_labeled_frames_with_prompt_and_tokens(drafted):
    studio, ids = drafted
    add_frames(studio, 2, labeled=False)  # unlabeled train frames are not captioned
    views = captions.list_captions(studio)
    assert [v.frame_id for v in views] == ids
    v = views[1]
    assert v.shot == "medium" and v.caption == "a woman in a red dress"
    assert v.prompt == "a high-quality medium shot picture of a woman in a red dress"
    assert v.tokens == 16 and not v.too_long and not v.reviewed


def test_edit_keeps_machine_caption_who_and_when(drafted):
    studio, ids = drafted
    before = captions.get_caption(studio, ids[0])
    after = captions.edit_caption(studio, EditRequest(ids[0], "  a man   with a beard ", "alice", before.version))
    assert after.caption == "a man with a beard"
    assert after.caption_original == "a close-up of a man with a beard"
    assert after.edited_by == "alice" and after.edited_at and after.reviewed
    assert after.version == before.version + 1
    # committed at once: a second connection (a fresh studio on the same file) sees it
    from dreamshot.studio import Studio

    other = Studio.open(studio.settings)
    try:
        assert captions.get_caption(other, ids[0]).caption == "a man with a beard"
    finally:
        other.close()


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_caption_refused_and_nothing_lost(drafted, text):
    studio, ids = drafted
    with pytest.raises(InvalidInput, match="empty"):
        captions.edit_caption(studio, EditRequest(ids[1], text, "alice"))
    assert captions.get_caption(studio, ids[1]).caption == "a woman in a red dress"


def test_control_characters_are_removed(drafted):
    studio, ids = drafted
    v = captions.edit_caption(studio, EditRequest(ids[1], "a woman\x00 in\ta\u200b red dress", "alice"))
    assert v.caption == "a woman in a red dress"


def test_edit_of_unknown_frame(drafted):
    studio, _ = drafted
    with pytest.raises(NotFound):
        captions.edit_caption(studio, EditRequest(9999, "a cat", "alice"))


def test_machine_caption_never_overwrites_a_human_edit(drafted):
    studio, ids = drafted
    seen = captions.get_caption(studio, ids[2])
    captions.edit_caption(studio, EditRequest(ids[2], "a city street at night", "bob", seen.version))
    # an auto-caption run (redo) lands after the edit: the human caption stays
    assert captions.save_machine_caption(studio, ids[2], "a street with cars", model="tiny") == "kept"
    v = captions.get_caption(studio, ids[2])
    assert v.caption == "a city street at night" and v.caption_original == "a street with cars"
    assert v.edited_by == "bob"


def test_human_edit_wins_over_a_newer_machine_caption_but_not_over_another_person(drafted):
    studio, ids = drafted
    seen = captions.get_caption(studio, ids[3])
    captions.save_machine_caption(studio, ids[3], "two men at a bar counter", model="tiny")  # redo meanwhile
    v = captions.edit_caption(studio, EditRequest(ids[3], "two men drinking", "alice", seen.version))
    assert v.caption == "two men drinking"
    with pytest.raises(InvalidInput, match="alice saved this caption"):
        captions.edit_caption(studio, EditRequest(ids[3], "two old men", "bob", seen.version))
    assert captions.get_caption(studio, ids[3]).caption == "two men drinking"


def test_race_between_edits_and_machine_captions_in_threads(drafted):
    """Many interleaved machine writes and one human edit per frame: every human edit survives."""
    import threading

    studio, ids = drafted
    barrier = threading.Barrier(2)

    def machine():
        barrier.wait()
        for round_ in range(5):
            for fid in ids:
                captions.save_machine_caption(studio, fid, f"machine {round_}", model="tiny")

    def human():
        barrier.wait()
        for fid in ids:
            captions.edit_caption(studio, EditRequest(fid, f"human {fid}", "alice"))

    threads = [threading.Thread(target=machine), threading.Thread(target=human)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for fid in ids:
        v = captions.get_caption(studio, fid)
        assert v.caption == f"human {fid}" and v.edited_by == "alice"
        assert v.caption_original.startswith("machine")


def test_human_caption_for_an_uncaptioned_frame_then_machine_fills_original(studio):
    [fid] = add_frames(studio, 1)
    v = captions.edit_caption(studio, EditRequest(fid, "a horse", "alice"))
    assert v.caption == "a horse" and v.caption_original is None
    assert captions.save_machine_caption(studio, fid, "a brown horse", model="tiny") == "kept"
    v = captions.get_caption(studio, fid)
    assert (v.caption, v.caption_original) == ("a horse", "a brown horse")


def test_edit_rate_and_review_filters(drafted):
    studio, ids = drafted
    s = captions.stats(studio)
    assert (s.frames, s.captioned, s.machine, s.reviewed, s.changed) == (6, 6, 6, 0, 0)
    assert s.edit_rate == 0
    captions.edit_caption(studio, EditRequest(ids[0], "a man with a beard", "alice"))           # changed
    captions.edit_caption(studio, EditRequest(ids[1], "a woman in a red dress", "alice"))       # accepted as is
    s = captions.stats(studio)
    assert (s.reviewed, s.changed) == (2, 1)
    assert s.edit_rate == pytest.approx(1 / 6)
    assert "edit rate **17%**" in s.markdown()
    unreviewed = captions.list_captions(studio, CaptionFilter(unreviewed=True))
    assert [v.frame_id for v in unreviewed] == ids[2:]
    assert [v.frame_id for v in captions.list_captions(studio, CaptionFilter(shot="close"))] == [ids[0], ids[3]]
    assert [v.frame_id for v in captions.list_captions(studio, CaptionFilter(search="MAN"))] == [ids[0], ids[1], ids[4]]
    # revert: back to the machine caption, not reviewed, no longer counted as changed
    v = captions.revert_caption(studio, ids[0])
    assert v.caption == v.caption_original and not v.reviewed and v.edited_by is None
    assert captions.stats(studio).changed == 0


def test_bulk_edits_do_not_count_as_hand_edits(studio):
    """Issue 13, bug 8: a find/replace over every caption took the edit rate from 50% to 100%."""
    ids = add_frames(studio, 4)
    for fid in ids:
        captions.save_machine_caption(studio, fid, f"a man standing {fid}", model="tiny")
    captions.edit_caption(studio, EditRequest(ids[0], "a man sitting", "alice"))
    captions.edit_caption(studio, EditRequest(ids[1], "an old man standing", "alice"))
    assert captions.stats(studio).edit_rate == pytest.approx(0.5)

    result = bulk.apply_changes(studio, bulk.preview_replace(studio, "man", "person"), "alice")
    assert result.applied == 4
    s = captions.stats(studio)
    assert s.edit_rate == pytest.approx(0.5)                  # hand edits only
    assert (s.changed, s.hand_changed, s.bulk_changed) == (4, 2, 2)
    assert "edit rate **50%** (2 of 4 machine captions changed by hand) · bulk edits 50% (2 changed only by find/replace or strip)" in s.markdown()
    v = captions.get_caption(studio, ids[2])
    assert (v.caption, v.edit_kind, v.changed_by_bulk) == (f"a person standing {ids[2]}", "bulk", True)
    assert captions.get_caption(studio, ids[0]).edit_kind == "hand"  # a hand edit stays one

    # accepting a bulk-edited caption as it is keeps it a bulk edit; changing it makes it a hand edit
    captions.edit_caption(studio, EditRequest(ids[2], v.caption, "bob"))
    assert captions.get_caption(studio, ids[2]).edit_kind == "bulk" and captions.stats(studio).hand_changed == 2
    captions.edit_caption(studio, EditRequest(ids[3], "a person kneeling", "bob"))
    assert captions.stats(studio).hand_changed == 3
    # revert: the machine caption again, no kind
    assert captions.revert_caption(studio, ids[2]).edit_kind is None


def test_regex_bulk_edit_is_time_limited_and_changes_nothing(drafted, monkeypatch):
    """Issue 13, bug 9: a backtracking pattern ran for seconds per caption with no limit."""
    from labeling.captions.tab import CaptionsHandlers

    studio, ids = drafted
    # the last caption: no later one trips the shared budget, the timeout itself must stop it
    captions.edit_caption(studio, EditRequest(ids[-1], "a" * 30 + "!", "alice"))
    before = [v.caption for v in captions.list_captions(studio)]
    monkeypatch.setattr(bulk, "REGEX_TIME_LIMIT_S", 0.2)
    with pytest.raises(InvalidInput, match=r"took longer than 0.2 s over 6 captions.*Nothing was changed"):
        bulk.preview_replace(studio, r"(a|aa)+$", "x", regex=True)
    ui = CaptionsHandlers(studio)  # the same through the tab's handler (what /caption_replace_preview runs)
    with pytest.raises(InvalidInput, match="took longer than"):
        ui.replace_preview(r"(a|aa)+$", "x", True, "", "train", "all", False, "", False, None)
    with pytest.raises(InvalidInput, match="took longer than"):
        ui.replace_apply(r"(a|aa)+$", "x", True, "", "train", "all", False, "", False, None, None)
    assert [v.caption for v in captions.list_captions(studio)] == before
    # the catastrophic pattern of the report (slow on Python's re) is fine within the limit
    assert [c.after for c in bulk.preview_replace(studio, r"(a+)+!$", "b", regex=True)] == ["b"]


def test_bad_frame_ids_and_broken_text_get_clear_messages(drafted):
    """Issue 13, bug 6: frame id 1e20 and a lone-surrogate caption gave "Internal error"."""
    from labeling.captions.tab import CaptionsHandlers

    studio, ids = drafted
    ui = CaptionsHandlers(studio)
    with pytest.raises(NotFound, match="Frame 100000000000000000000 does not exist"):
        ui.save(1e20, "a cat", None, "train", None)
    for bad in (float("nan"), float("inf"), 2.5, "abc"):
        with pytest.raises(InvalidInput, match="whole number"):
            ui.save(bad, "a cat", None, "train", None)
    with pytest.raises(InvalidInput, match="Open a caption first"):
        ui.save(None, "a cat", None, "train", None)
    with pytest.raises(NotFound):
        ui.open_frame(-3, None)
    with pytest.raises(InvalidInput, match="broken character"):
        ui.save(ids[1], "a woman \ud800 in red", None, "train", None)
    assert captions.get_caption(studio, ids[1]).caption == "a woman in a red dress"
    assert "broken character" in ui.prompt_preview(ids[1], "a woman \ud800", None)
    assert "picture of a woman in blue" in ui.prompt_preview(ids[1], "a woman in blue", None)


def test_find_replace_preview_then_apply(drafted):
    studio, ids = drafted
    changes = bulk.preview_replace(studio, "man", "person")
    # plain text, case-insensitive, substring (as editors do): "woman" changes too
    assert {c.frame_id for c in changes} == {ids[0], ids[1], ids[4]}
    assert captions.get_caption(studio, ids[0]).caption == "a close-up of a man with a beard"  # preview only
    result = bulk.apply_changes(studio, changes, "alice")
    assert result.applied == 3 and not result.conflicts
    v = captions.get_caption(studio, ids[0])
    assert v.caption == "a close-up of a person with a beard" and v.edited_by == "alice"
    assert v.caption_original == "a close-up of a man with a beard"
    # regex with word boundary
    changes = bulk.preview_replace(studio, r"\bpersons?\b", "man", regex=True)
    assert {c.frame_id for c in changes} == {ids[0], ids[4]}
    with pytest.raises(InvalidInput, match="regular expression"):
        bulk.preview_replace(studio, "(", "x", regex=True)
    with pytest.raises(InvalidInput):
        bulk.preview_replace(studio, "", "x")


def test_bulk_apply_leaves_captions_changed_since_the_preview(drafted):
    studio, ids = drafted
    changes = bulk.preview_replace(studio, "a car", "a red car")
    captions.edit_caption(studio, EditRequest(ids[5], "a truck on a road", "bob"))
    result = bulk.apply_changes(studio, changes, "alice")
    assert result.applied == 0 and result.conflicts == [ids[5]]
    assert captions.get_caption(studio, ids[5]).caption == "a truck on a road"


def test_bulk_leaves_captions_without_a_match_as_they_are(drafted):
    studio, ids = drafted
    captions.save_machine_caption(studio, ids[5], "a car on a road ,at night", model="tiny")
    assert [c.frame_id for c in bulk.preview_replace(studio, "dress", "gown")] == [ids[1]]
    assert ids[5] not in [c.frame_id for c in bulk.preview_strip(studio)]


def test_replace_never_empties_a_caption(drafted):
    studio, ids = drafted
    changes = bulk.preview_replace(studio, "a car on a road", "")
    assert changes == []


@pytest.mark.parametrize("before, after", [
    ("a close-up of a man with a beard", "a man with a beard"),
    ("a man in close-up, smiling", "a man, smiling"),
    ("a wide shot of a city street", "a city street"),
    ("Extreme Close Up of an eye", "an eye"),
    ("a medium shot of two women", "two women"),
    ("a long shot showing a house", "a house"),
    ("a woman in a red dress", "a woman in a red dress"),
    ("a man closing up a shop", "a man closing up a shop"),
])
def test_strip_shot_words(before, after):
    assert bulk.strip_shot_words(before) == after


def test_strip_preview_and_apply(drafted):
    studio, ids = drafted
    changes = bulk.preview_strip(studio)
    assert {(c.frame_id, c.after) for c in changes} == {
        (ids[0], "a man with a beard"), (ids[2], "a city street"), (ids[4], "a man, smiling")}
    bulk.apply_changes(studio, changes, "alice")
    assert bulk.preview_strip(studio) == []
    # custom terms, with their article and a following "of"
    captions.edit_caption(studio, EditRequest(ids[1], "a portrait of a woman in a red dress", "alice"))
    assert [c.after for c in bulk.preview_strip(studio, terms=["portrait"])] == ["a woman in a red dress"]


def test_template_is_a_project_setting_and_drives_prompts(drafted):
    studio, ids = drafted
    with pytest.raises(InvalidInput, match="caption"):
        studio.project.set_template("a {shot} picture")
    with pytest.raises(InvalidInput, match="shot"):
        studio.project.set_template("a picture of {caption}")
    with pytest.raises(InvalidInput, match="placeholders"):
        studio.project.set_template("{shot} of {caption} by {artist}")
    studio.project.set_template("a film still, {shot}, {caption}")
    assert studio.db.get_setting("prompt_template") == "a film still, {shot}, {caption}"
    assert captions.get_caption(studio, ids[1]).prompt == "a film still, medium shot, a woman in a red dress"


def test_token_warning_over_77(drafted):
    studio, ids = drafted
    long_caption = " ".join(["a tall man in a long dark coat walks slowly"] * 7)
    v = captions.edit_caption(studio, EditRequest(ids[0], long_caption, "alice"))
    assert v.tokens > 77 and v.too_long
    assert v.tokens == token_counts([v.prompt])[0]
    assert [x.frame_id for x in captions.list_captions(studio, CaptionFilter(too_long=True))] == [ids[0]]
    assert "1 prompts over 77 tokens" in captions.stats(studio).markdown()
    # SD 1.5's tokenizer: start + 10 words + end (checked against the real CLIP vocabulary)
    assert token_counts(["a high-quality close shot picture of a woman"]) == [12]


def test_test_split_includes_unlabeled_held_out_frames(studio):
    train = add_frames(studio, 2)
    test = add_frames(studio, 3, split="test", labeled=False)
    assert list(captions.list_captions(studio, CaptionFilter(split="test"))) and \
        [v.frame_id for v in captions.list_captions(studio, CaptionFilter(split="test"))] == test
    v = captions.list_captions(studio, CaptionFilter(split="test"))[0]
    assert v.shot is None and v.prompt is None
    assert [v.frame_id for v in captions.list_captions(studio)] == train


def test_export_reads_edited_and_machine_captions(drafted, tmp_path):
    import json

    from labeling.export import export_imagefolder

    studio, ids = drafted
    captions.edit_caption(studio, EditRequest(ids[0], "a man with a beard", "alice"))
    report = export_imagefolder(studio, tmp_path / "out")
    rows = {json.loads(line)["caption_original"]: json.loads(line)
            for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()
            if line.strip()}
    row = rows["a close-up of a man with a beard"]
    assert row["caption"] == "a man with a beard"
    assert row["text"] == "a high-quality close shot picture of a man with a beard"
    assert report.count == 6


@pytest.mark.postgres
def test_same_rules_on_postgresql(make_studio, pg_url):
    import threading

    studio = make_studio(db_url=pg_url)
    ids = add_frames(studio, 12)
    assert captions.save_machine_caption(studio, ids[0], "a close-up of a man", model="tiny") == "new"
    captions.edit_caption(studio, EditRequest(ids[0], "a man", "alice", 1))
    assert captions.save_machine_caption(studio, ids[0], "a man in a hat", model="tiny") == "kept"

    def machine():
        for fid in ids[1:]:
            captions.save_machine_caption(studio, fid, "machine", model="tiny")

    def human():
        for fid in ids[1:]:
            captions.edit_caption(studio, EditRequest(fid, f"human {fid}", "bob"))

    threads = [threading.Thread(target=machine), threading.Thread(target=human)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [v.caption for v in captions.list_captions(studio)] == ["a man"] + [f"human {f}" for f in ids[1:]]
    changes = bulk.preview_replace(studio, "human", "person")
    assert bulk.apply_changes(studio, changes, "carol").applied == 11
    s = captions.stats(studio)
    assert (s.captioned, s.reviewed) == (12, 12)


def test_counting_tokens_loads_neither_torch_nor_diffusers():
    """caption-stats and caption-replace count tokens only: a fresh process must not pay for torch
    and diffusers (≈7 s on a small machine) to do it."""
    import subprocess
    import sys

    code = ("import sys; from labeling.captions.tokens import token_counts; "
            "print(token_counts(['a high-quality close-up picture of a man'])[0], "
            "sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split(maxsplit=1) == ["13", "[]\n"]   # start + 11 tokens + end
