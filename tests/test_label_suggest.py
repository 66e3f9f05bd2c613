"""The Label tab's shot-type model on the demo setup (the ``demo`` CLIP, built offline): features in
the background, suggestions that are right on separable frames, accepting them (source=suggested),
honest stats, the export's fields, orders that are deterministic and resumable, a key path that never
waits for a refit, pre-labels reviewed by class, no CLIP, and the schema step on SQLite/PostgreSQL."""

from __future__ import annotations

import json
import threading
import time

import pytest
import sqlalchemy as sa

from dreamshot import schema, storage
from dreamshot.errors import InvalidInput
from dreamshot.storage import open_database
from labeling import annotate, export, labels, stats
from labeling.sampler import QueueKey
from labeling.suggest import model as suggest_model
from labeling.tab_html import frame_html
from tests.suggest_helpers import colored_frames, model_ready, seed_labels, wait_for

L = schema.labels


def _rows(studio, who):
    with studio.db.read() as conn:
        return conn.execute(sa.select(L.c.frame_id, L.c.shot, L.c.source, L.c.queue_order, L.c.predicted,
                                      L.c.confidence, L.c.suggestion_shown)
                            .where(L.c.annotator == who, L.c.undone_at.is_(None)).order_by(L.c.id)).all()


def test_suggestions_are_right_on_separable_frames_accept_marks_them_and_stats_are_honest(studio, tmp_path):
    truth = colored_frames(studio, 12)
    studio.db.set_setting("suggest_blind_share", 0.0)
    ann = annotate.service(studio)
    assert ann.view("alice").suggestion is None
    wait_for(lambda: ann.suggest.state == "learning", what="the model to wait for labels")
    assert "once every shot type has 8 labels: close 0/8" in ann.view("alice").suggest_note
    for shot in ("close", "medium", "long"):                          # 8 typed labels of each, on the key path
        for fid in [f for f, s in truth.items() if s == shot][:8]:
            ann.act("alice", fid, shot)
    snap = wait_for(model_ready(ann.suggest, len(truth)), what="the model")
    assert snap.n_labels == 24 and snap.per_class == {"close": 8, "medium": 8, "long": 8}

    studio.db.set_setting("suggest_blind_share", 1.0)                 # a blind check: nothing shown, all stored
    view = ann.view("alice")
    assert view.suggestion is not None and view.suggestion.shown is False and "Blind check" in frame_html(view)
    ann.act("alice", view.frame_id, truth[view.frame_id])
    studio.db.set_setting("suggest_blind_share", 0.0)

    accepted = 0
    while (view := ann.view("alice")).frame_id is not None:
        s = view.suggestion
        assert s is not None and s.shot == truth[view.frame_id], (view.frame_id, s)
        if not s.shown:     # the frame after the blind check was pinned blind when it was prefetched
            ann.act("alice", view.frame_id, truth[view.frame_id])
            continue
        assert f"{100 * s.confidence:.0f}% confident" in frame_html(view)
        ann.act("alice", view.frame_id, annotate.ACCEPT)
        accepted += 1
    rows = _rows(studio, "alice")
    taken = [r for r in rows if r.source == "suggested"]
    blind = [r for r in rows if r.suggestion_shown is False]
    assert len(taken) == accepted >= 9 and len(blind) == 12 - accepted and len(rows) == 36
    assert {(r.queue_order, r.suggestion_shown) for r in taken} == {("random", True)}
    assert all(r.shot == r.predicted == truth[r.frame_id] and r.confidence > 0.5 for r in taken)
    assert {r.source for r in blind} == {"typed"} and all(r.predicted == truth[r.frame_id] for r in blind)

    text = stats.stats_text(studio)
    assert f"labels by source: suggested {accepted}, typed {36 - accepted}" in text
    assert f"accuracy on {len(blind)} blind labels" in text and "100.0%" in text
    assert f"accepted {accepted} (100%)" in text and "seconds per label with a suggestion shown" in text
    out = export.export_imagefolder(studio, tmp_path / "set")
    meta = [json.loads(line) for line in (tmp_path / "set" / "metadata.jsonl").read_text().splitlines()]
    assert out.count == 36
    assert {m["label_source"] for m in meta} == {"typed", "suggested"}
    assert {m["label_order"] for m in meta} == {"random"}


def test_uncertain_first_is_deterministic_and_resumes_after_a_restart(make_studio, tmp_path):
    a = make_studio(data_dir=tmp_path / "data")
    truth = colored_frames(a, 14)
    seed_labels(a, truth, 8)
    ann = annotate.service(a)
    ann.view("bob")
    wait_for(model_ready(ann.suggest, len(truth)), what="the model")
    view = ann.set_queue("bob", "train", "uncertain")
    snap = ann.suggest.snapshot
    key = QueueKey("train", "uncertain")
    unlabeled = [f for f in truth if f not in snap.trained_on]
    lowest = sorted(unlabeled, key=lambda f: snap.margin[snap.index[f]])[:16]
    first = ann.sampler.upcoming("bob", 18, key)
    assert view.frame_id == first[0] and set(first[:16]) == set(lowest)      # uncertain first
    from labeling.sampler import Sampler

    assert Sampler(a, ranker=ann.suggest.ranker).upcoming("bob", 18, key) == first   # reproducible
    for fid in first[:3]:
        ann.act("bob", fid, truth[fid])
    ann.suggest.refit()                       # what the worker does; a restart fits the same labels
    ann.sampler.reset()
    left = ann.sampler.upcoming("bob", 15, key)
    assert not set(left) & set(first[:3])
    a.close()

    b = make_studio(data_dir=tmp_path / "data")                       # a restart on the same data
    again = annotate.service(b)
    assert again.queue_of("bob") == key                               # the queue choice is kept
    again.view("bob")
    wait_for(model_ready(again.suggest, len(truth), 27), what="the model after the restart")
    assert again.sampler.upcoming("bob", 15, key) == left


def test_the_key_path_never_waits_for_a_refit(studio, monkeypatch):
    truth = colored_frames(studio, 10)
    ann = annotate.service(studio)
    seeded = seed_labels(studio, truth, 8)
    ann.view("carol")
    wait_for(model_ready(ann.suggest, len(truth)), what="the model")
    started, release = threading.Event(), threading.Event()
    real_fit = suggest_model.fit

    def slow_fit(*args, **kw):
        started.set()
        release.wait(60)
        return real_fit(*args, **kw)

    monkeypatch.setattr(suggest_model, "fit", slow_fit)
    studio.db.set_setting("suggest_refit_labels", 1)
    try:
        view = ann.view("carol")
        view = ann.act("carol", view.frame_id, truth[view.frame_id])     # a new label: a refit is due
        wait_for(started.is_set, what="the refit to start")
        t0 = time.perf_counter()
        for _ in range(3):                                               # labels go on while it runs
            view = ann.act("carol", view.frame_id, truth[view.frame_id])
        elapsed = time.perf_counter() - t0
        assert started.is_set() and not release.is_set()            # the refit is still running
        assert elapsed < 5 and len(_rows(studio, "carol")) == 4
    finally:
        release.set()
    assert len(seeded) == 24


def test_prelabels_are_reviewed_by_class_and_confirmed_with_one_key(studio):
    from labeling.__main__ import main

    truth = colored_frames(studio, 10)
    seeded = set(seed_labels(studio, truth, 8))
    code = main(["suggest", "--data", str(studio.settings.data_dir), "--model", "demo"])   # the CLI, in-process
    assert code == 0
    with studio.db.read() as conn:
        pre = dict(conn.execute(sa.select(schema.frame_suggestions.c.frame_id, schema.frame_suggestions.c.shot)).all())
    assert pre == {f: s for f, s in truth.items() if f not in seeded}   # every unlabeled frame, rightly
    assert labels.final_labels(studio).keys() == seeded                 # never as a label
    ann = annotate.service(studio)
    view = ann.set_queue("dan", "train", "class:long")
    shown = []
    while view.frame_id is not None:
        assert view.suggestion.origin == "pre-label" and view.suggestion.shot == "long"
        shown.append(view.frame_id)
        view = ann.act("dan", view.frame_id, annotate.ACCEPT)
    assert sorted(shown) == sorted(f for f, s in pre.items() if s == "long") and len(shown) == 2
    from labeling.suggest.tab import SuggestHandlers

    assert "Pre-labels written for 4 unlabeled frames" in SuggestHandlers(studio).prelabel(None)   # the button
    assert "that the model calls long" in view.message
    assert {(r.shot, r.source, r.queue_order) for r in _rows(studio, "dan")} == {("long", "suggested", "class:long")}


def test_held_out_frames_have_their_own_queue_outside_the_quotas(studio):
    from labeling.tab import LabelHandlers

    held = colored_frames(studio, 1, split="test", seed=1)
    ann = annotate.service(studio)
    assert "3 held-out frames wait: choose Frames -> Held-out frames" in ann.view("eve").message   # issue 21
    train = colored_frames(studio, 2)
    ann.reset()
    assert ann.view("eve").frame_id in train                          # the train queue by default
    view = ann.set_queue("eve", "test", "random")
    assert view.frame_id in held and "Held-out frame (test split): not counted in quotas" in frame_html(view)
    seen = []
    while view.frame_id is not None:
        seen.append(view.frame_id)
        view = ann.act("eve", view.frame_id, held[view.frame_id])
    assert sorted(seen) == sorted(held) and "No held-out frame left" in view.message
    p = labels.progress(studio)
    assert p.counts == {} and p.held_out == {"close": 1, "medium": 1, "long": 1}
    assert {r.queue_order for r in _rows(studio, "eve")} == {"random (held-out)"}
    api = LabelHandlers(studio).label_queue("eve", "train", "random")
    assert api["queue"] == {"frames": "train", "order": "random"} and api["frame_id"] in train


def test_without_a_clip_the_tab_says_so_and_labeling_works(studio, monkeypatch):
    monkeypatch.setenv("DREAMSHOT_CLIP_MODEL", "someone/uncached-clip")
    truth = colored_frames(studio, 9)
    seed_labels(studio, truth, 8)
    ann = annotate.service(studio)
    ann.suggest.start()                                               # what the tab's first view does
    wait_for(lambda: ann.suggest.state == "unavailable", what="the CLIP to be refused")
    view = ann.view("finn")
    assert view.suggestion is None and "Suggestions are off" in view.suggest_note
    assert "not in the local Hugging Face cache" in view.suggest_note
    after = ann.act("finn", view.frame_id, truth[view.frame_id])
    assert after.frame_id not in (None, view.frame_id) and _rows(studio, "finn")[0].predicted is None
    assert after.suggest_note == ""                                   # said once, not on every frame


def test_model_orders_keep_labeled_frames_in_their_random_places_so_overlap_still_works():
    """Frames someone labeled (the model was fit on them) keep their random-order positions: an
    overlap frame reaches a second annotator as often as in the random order."""
    import numpy as np

    from labeling.suggest import orders

    ids = list(range(40))
    keys = {fid: (fid * 7919) % 101 for fid in ids}
    trained = frozenset(range(0, 40, 5))
    probs = np.array([[0.5 + (fid % 9) / 20, 0.5 - (fid % 9) / 20] for fid in ids])
    snap = suggest_model.Snapshot(1, ["close", "long"], 8, {}, np.array(ids), probs, None, 0.0, trained_on=trained)
    random_order = sorted(ids, key=keys.__getitem__)
    for ranked in (orders.uncertain(ids, snap, keys), orders.quota(ids, snap, keys, {"close": 5, "long": 1})):
        assert sorted(ranked) == ids
        assert [i for i, f in enumerate(ranked) if f in trained] == [i for i, f in enumerate(random_order) if f in trained]
    free = [f for f in orders.uncertain(ids, snap, keys) if f not in trained]
    margins = [abs(probs[f][0] - probs[f][1]) for f in free]
    assert max(margins[:orders.RUN]) <= min(margins[orders.RUN:])      # the least sure first


def test_second_look_lists_confident_disagreements_with_settled_labels(studio):
    from labeling.provenance import Provenance
    from labeling.suggest import stats as model_stats

    truth = colored_frames(studio, 1)
    a, b, c = sorted(truth)
    labels.record(studio, "gus", a, "close", provenance=Provenance(predicted="long", confidence=0.95, model_labels=30,
                                                                    suggestion_shown=True))
    labels.record(studio, "gus", b, "close", provenance=Provenance(predicted="long", confidence=0.55, model_labels=30,
                                                                    suggestion_shown=True))
    labels.record(studio, "gus", c, "long", provenance=Provenance(predicted="long", confidence=0.9, model_labels=30,
                                                                   suggestion_shown=False))
    ms = model_stats.model_stats(studio)
    assert [(d["frame"], d["label"], d["model"]) for d in ms.second_look] == [(a, "close", "long")]
    assert ms.blind == [(30, True)] and (ms.shown, ms.accepted, ms.overridden) == (2, 0, 2)
    from labeling.suggest.tab import SuggestHandlers

    for bad in ("inf", "2.5"):                                       # a frame id typed by hand: one message
        with pytest.raises(InvalidInput, match="The frame id must be a whole number"):
            SuggestHandlers(studio).resolve(bad, "long", None)
    labels.resolve(studio, a, "long", "admin")                       # resolved the model's way: off the list
    assert model_stats.model_stats(studio).second_look == []


def test_the_suggestions_step_upgrades_a_database_in_place(db_url, tmp_path):
    from tests.test_survey_storage import _describe

    tables = ["labels", "frame_features", "frame_suggestions"]
    fresh = open_database(f"sqlite:///{tmp_path / 'fresh.db'}")
    db = open_database(db_url)
    with db.write() as conn:
        fid = conn.execute(schema.frames.insert().values(source="a.png", path="a.png", meta={}, status="ok",
                                                         split="train", created_at=1.0)).inserted_primary_key[0]
        conn.execute(L.insert().values(frame_id=fid, annotator="old", taxonomy="paper", action="label", shot="close",
                                       is_extra=False, created_at=2.0))
        for column in ("source", "queue_order", "predicted", "confidence", "model_labels", "suggestion_shown"):
            conn.exec_driver_sql(f"ALTER TABLE labels DROP COLUMN {column}")
        conn.exec_driver_sql("DROP TABLE frame_features")
        conn.exec_driver_sql("DROP TABLE frame_suggestions")
        storage._write_version(conn, storage.SCHEMA_VERSION - 1)
    db.dispose()
    assert storage.STEPS[-1] is storage._label_suggestions

    db = open_database(db_url)                                          # upgraded here
    assert db.schema_version() == storage.SCHEMA_VERSION
    with db.read() as conn:
        assert conn.execute(sa.select(L.c.annotator, L.c.shot, L.c.source)).all() == [("old", "close", None)]
        if db.is_sqlite:                                                # the same tables as a new database
            with fresh.read() as other:
                assert _describe(conn, tables) == _describe(other, tables)
        else:
            assert {"frame_features", "frame_suggestions"} <= set(sa.inspect(conn).get_table_names())
    with db.write() as conn:
        conn.execute(L.insert().values(frame_id=fid, annotator="new", taxonomy="paper", action="label", shot="long",
                                       is_extra=False, created_at=3.0, source="suggested", queue_order="uncertain",
                                       predicted="long", confidence=0.9, model_labels=24, suggestion_shown=True))
        conn.execute(schema.frame_features.insert().values(frame_id=fid, model="clip-x", dim=2, vector=b"\0" * 8,
                                                           created_at=3.0))
    with db.read() as conn:
        assert conn.execute(sa.select(L.c.source, L.c.suggestion_shown).where(L.c.annotator == "new")).one() \
            == ("suggested", True)
    db.dispose()
    fresh.dispose()
