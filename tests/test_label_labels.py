"""Sampling without repetition per annotator, skip/undo, quotas and extras, overlap, agreement
(Cohen's and Fleiss' kappa), disagreement resolution, final labels, and resuming after a restart."""

from __future__ import annotations

import os
import threading
from collections import Counter

import pytest
import sqlalchemy as sa
from PIL import Image

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.storage import now
from labeling import annotate, labels, sampler, stats
from labeling.sampler import Sampler


def add_frames(studio, n: int, split: str = "train") -> list[int]:
    """``n`` usable frames (one small image file shared by all: enough for previews and crops)."""
    path = studio.settings.data_dir / "frames" / "none" / "frame.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 64), (200, 120, 40)).save(path)
    with studio.db.write() as conn:
        return [conn.execute(schema.frames.insert().values(
            source=f"f{i}", path="frames/none/frame.png", meta={}, status="ok", split=split, created_at=now(),
            width=96, height=64, content_hash=os.urandom(32).hex())).inserted_primary_key[0] for i in range(n)]


def label_all(studio, s: Sampler, who: str, choose=lambda fid: "close", limit=1000) -> list[int]:
    seen = []
    while (fid := s.current(who)) is not None and len(seen) < limit:
        seen.append(fid)
        labels.record(studio, who, fid, choose(fid))
        s.on_action(who, fid, "label")
    return seen


def test_order_is_seeded_per_annotator_without_repetition(studio):
    ids = add_frames(studio, 30)
    add_frames(studio, 5, split="test")  # held-out frames are never in the queue
    s = Sampler(studio)
    order_alice = s.upcoming("alice", 30)
    assert sorted(order_alice) == sorted(ids)
    assert Sampler(studio).upcoming("alice", 30) == order_alice          # reproducible
    assert s.upcoming("bob", 30) != order_alice                          # each annotator their own order
    studio.db.set_setting("label_seed", 7)
    assert Sampler(studio).upcoming("alice", 30) != order_alice          # the seed matters

    studio.db.set_setting("label_overlap", 1.0)  # let bob see alice's frames in this test
    s = Sampler(studio)
    seen = label_all(studio, s, "alice", limit=12)
    assert len(set(seen)) == len(seen) == 12
    resumed = Sampler(studio)  # a restart: state comes from the database only
    assert resumed.current("alice") not in seen
    rest = label_all(studio, resumed, "alice")
    assert sorted(seen + rest) == sorted(ids) and resumed.current("alice") is None


def test_skip_comes_back_last_and_undo_returns_to_frame(studio):
    add_frames(studio, 4)
    svc = annotate.service(studio)
    s = svc.sampler
    first = s.current("ann")
    labels.record(studio, "ann", first, "skip")
    s.on_action("ann", first, "skip")
    second = s.current("ann")
    assert second != first
    labels.record(studio, "ann", second, "medium")
    s.on_action("ann", second, "label")
    undone = labels.undo(studio, "ann")
    assert undone.frame_id == second and undone.shot == "medium"
    s.on_undo("ann", second, "label")
    assert s.current("ann") == second and labels.final_labels(studio) == {}
    rest = label_all(studio, s, "ann")
    assert rest[-1] == first and len(rest) == 4   # the skipped frame comes back at the end
    assert Sampler(studio).current("ann") is None


def test_unknown_class_rejected_and_nothing_lost(studio):
    ids = add_frames(studio, 2)
    labels.record(studio, "a", ids[0], "long")
    with pytest.raises(InvalidInput):
        labels.record(studio, "a", ids[1], "extreme-wide")
    with pytest.raises(InvalidInput):
        labels.resolve(studio, ids[0], "bogus", "lead")
    assert labels.final_labels(studio) == {ids[0]: "long"}
    again = labels.record(studio, "a", ids[0], "long")  # a double keypress writes nothing
    assert again.duplicate and again.shot == "long" and labels.final_labels(studio) == {ids[0]: "long"}
    assert len(labels.history(studio, ids[0])) == 1


def test_quotas_extras_and_all_met(studio):
    ids = add_frames(studio, 8)
    labels.set_quotas(studio, {"close": 2, "medium": 1, "long": 1})
    results = [labels.record(studio, "a", fid, "close") for fid in ids[:3]]
    assert [r.is_extra for r in results] == [False, False, True]
    assert set(labels.final_labels(studio)) == set(ids[:2])
    assert set(labels.final_labels(studio, include_extra=True)) == set(ids[:3])
    labels.record(studio, "a", ids[3], "medium")
    assert not labels.progress(studio).all_met
    labels.record(studio, "a", ids[4], "long")
    p = labels.progress(studio)
    assert p.all_met and p.counts == {"close": 2, "medium": 1, "long": 1} and p.extras == {"close": 1}

    # undoing a counted label promotes the extra one: the training set keeps its quota
    labels.record(studio, "a", ids[5], "reject")
    labels.undo(studio, "a")                    # undo the reject
    labels.undo(studio, "a")                    # undo "long" on ids[4]
    assert labels.progress(studio).counts.get("long", 0) == 0
    with studio.db.write() as conn:              # a counted close label leaves (undone by another path)
        row = conn.execute(sa.select(schema.labels.c.id).where(schema.labels.c.frame_id == ids[0])).scalar_one()
        conn.execute(schema.labels.update().where(schema.labels.c.id == row).values(undone_at=now()))
    assert set(labels.final_labels(studio)) == {ids[1], ids[2], ids[3]}  # the extra fills its place


def test_overlap_two_annotators_at_most(studio):
    ids = add_frames(studio, 10)
    s = Sampler(studio)
    assert len(label_all(studio, s, "alice")) == 10
    assert s.current("bob") is None              # no overlap: alice's frames leave bob's queue

    studio.db.set_setting("label_overlap", 1.0)
    s = Sampler(studio)
    assert len(label_all(studio, s, "bob")) == 10
    assert s.current("carol") is None            # two annotators per overlap frame, not three

    studio.db.set_setting("label_overlap", 0.5)
    share = sum(sampler.is_overlap(0, fid, 0.5) for fid in range(1, 2001)) / 2000
    assert 0.45 < share < 0.55
    fresh = add_frames(studio, 20, split="train")[0:20]
    s = Sampler(studio)
    assert sorted(label_all(studio, s, "dan")) == sorted(fresh)  # the old frames are full
    overlap = {fid for fid in fresh if sampler.is_overlap(0, fid, 0.5)}
    assert 0 < len(overlap) < len(fresh)
    assert set(label_all(studio, s, "eve")) == overlap           # a second annotator gets only those


def test_cohen_kappa_known_value():
    pairs = [("a", "a")] * 20 + [("a", "b")] * 5 + [("b", "a")] * 10 + [("b", "b")] * 15
    kappa, observed = stats.cohen_kappa(pairs, ["a", "b"])
    assert observed == pytest.approx(0.7) and kappa == pytest.approx(0.4)


def test_fleiss_kappa_known_value():
    # Fleiss (1971) worked example as given on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert stats.fleiss_kappa(table) == pytest.approx(0.210, abs=0.001)
    with pytest.raises(ValueError):
        stats.fleiss_kappa([[1, 1], [2, 1]])


def test_agreement_confusion_and_resolution(studio):
    ids = add_frames(studio, 6)
    a = ["close", "close", "medium", "long", "long", "reject"]
    b = ["close", "medium", "medium", "long", "close", "reject"]
    for fid, x, y in zip(ids, a, b):
        labels.record(studio, "ann", fid, x)
        labels.record(studio, "ben", fid, y)
    agr = stats.agreement(studio)
    assert agr.method == "cohen" and agr.items == 6 and agr.annotators == ["ann", "ben"]
    kappa, _ = stats.cohen_kappa(list(zip(a, b)), agr.categories)
    assert agr.kappa == pytest.approx(kappa) and agr.observed == pytest.approx(4 / 6)
    cats = agr.categories
    assert agr.matrix[cats.index("close")][cats.index("medium")] == 1
    assert agr.matrix[cats.index("long")][cats.index("close")] == 1
    assert sum(map(sum, agr.matrix)) == 6

    assert labels.final_labels(studio) == {ids[0]: "close", ids[2]: "medium", ids[3]: "long"}
    assert {d.frame_id for d in labels.disagreements(studio)} == {ids[1], ids[4]}
    labels.resolve(studio, ids[1], "medium", "lead")
    labels.resolve(studio, ids[4], "reject", "lead")
    assert labels.disagreements(studio) == []
    assert labels.final_labels(studio) == {ids[0]: "close", ids[1]: "medium", ids[2]: "medium", ids[3]: "long"}

    labels.record(studio, "cy", ids[0], "medium")  # a third annotator -> Fleiss' kappa on first two ratings
    assert stats.agreement(studio).method == "fleiss"


def test_reopen_studio_resumes_exactly(make_studio, tmp_path):
    data = tmp_path / "shared-data"
    first = make_studio(data_dir=data)
    ids = add_frames(first, 12)
    choose = {}
    done = label_all(first, Sampler(first), "ann", choose=lambda fid: choose.setdefault(
        fid, "reject" if len(choose) % 2 else "close"), limit=6)
    rejected = {fid for fid in done if choose[fid] == "reject"}
    assert len(rejected) == 3
    current = Sampler(first).current("ann")
    first.close()
    second = make_studio(data_dir=data)  # the server was killed: a new process on the same folder
    resumed = Sampler(second)
    assert resumed.current("ann") == current
    assert set(labels.final_labels(second)) == set(done) - rejected
    rest = label_all(second, resumed, "ann")             # the rejected frames never come back
    assert not set(rest) & set(done) and sorted(rest + done) == sorted(ids)
    assert resumed.current("ann") is None and Sampler(second).current("ann") is None


@pytest.mark.postgres
def test_same_workflow_on_postgresql(make_studio, pg_url, tmp_path):
    from labeling import export, pool
    from tests.label_helpers import make_mixed_pool

    studio = make_studio(db_url=pg_url)
    make_mixed_pool(tmp_path / "pool")
    report = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool")))
    assert report.kept == 5 and report.filtered["duplicate"] == 1
    svc = annotate.service(studio)
    first = svc.view("ann")
    after = svc.act("ann", first.frame_id, "close")
    svc.act("ann", after.frame_id, "skip")
    assert svc.undo("ann").frame_id == after.frame_id
    labels.record(studio, "ben", first.frame_id, "long")
    assert stats.agreement(studio).items == 1 and labels.final_labels(studio) == {}
    labels.resolve(studio, first.frame_id, "close", "lead")
    assert labels.final_labels(studio) == {first.frame_id: "close"}
    assert export.export_imagefolder(studio, tmp_path / "set").per_class == {"close": 1}


# ---- relabel rule (issue 13, bug 4) -----------------------------------------------------------------
def test_relabel_is_recorded_and_undo_brings_the_earlier_label_back(studio):
    ids = add_frames(studio, 3)
    first = labels.record(studio, "ann", ids[0], "close")
    assert first.relabeled_from is None and not first.duplicate
    second = labels.record(studio, "ann", ids[0], "long")           # not a silent success
    assert second.relabeled_from == "close" and second.shot == "long" and not second.duplicate
    assert labels.final_labels(studio) == {ids[0]: "long"}
    history = labels.history(studio, ids[0])
    assert [(h["shot"], h["undone_at"] is not None) for h in history] == [("close", True), ("long", False)]
    assert history[0]["undone_at"] == history[1]["created_at"]     # the relabel replaced it
    rejected = labels.record(studio, "ann", ids[0], "reject")
    assert rejected.relabeled_from == "long" and labels.final_labels(studio) == {}

    undone = labels.undo(studio, "ann")                             # undo the reject -> long again
    assert undone.restored == "long" and labels.final_labels(studio) == {ids[0]: "long"}
    assert labels.undo(studio, "ann").restored == "close"
    assert labels.final_labels(studio) == {ids[0]: "close"}
    assert labels.undo(studio, "ann").restored is None and labels.final_labels(studio) == {}

    view = annotate.service(studio).act("ann", ids[1], "medium")
    view = annotate.service(studio).act("ann", ids[1], "close")
    assert "Relabeled frame" in view.message and "medium -> close" in view.message
    view = annotate.service(studio).act("ann", ids[1], "close")
    assert "already labeled close" in view.message and view.last.duplicate


def test_ten_clients_sharing_a_name_every_acknowledged_action_is_stored(studio):
    _shared_name_clients(studio)


@pytest.mark.postgres
def test_ten_clients_sharing_a_name_on_postgresql(make_studio, pg_url):
    _shared_name_clients(make_studio(db_url=pg_url))


def _shared_name_clients(studio):
    ids = add_frames(studio, 4)
    choices = ["close", "medium", "long", "reject"]
    acks, errors = [], []

    def client(n):
        try:
            for k in range(10):
                fid, sent = ids[(n + k) % 4], choices[(n * 7 + k * 3 + k // 4) % 4]
                result = labels.record(studio, "shared", fid, sent)
                acks.append((fid, sent, result))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(acks) == 100
    assert all(r.value == sent for _, sent, r in acks)             # every reply is about what was sent
    written = Counter((fid, sent) for fid, sent, r in acks if not r.duplicate)
    with studio.db.read() as conn:
        L = schema.labels
        rows = conn.execute(sa.select(L.c.frame_id, L.c.action, L.c.shot, L.c.undone_at).where(
            L.c.annotator == "shared").order_by(L.c.id)).all()
    assert Counter((r.frame_id, r.shot or r.action) for r in rows) == written
    for fid in ids:                                                 # one active label: the last one written
        mine = [r for r in rows if r.frame_id == fid]
        assert [r for r in mine if r.undone_at is None] == mine[-1:]


# ---- quota rule (issue 13, bug 2) -------------------------------------------------------------------
def _agree(studio, p, names):
    """Stats, the quota message and the export all read the same accounting."""
    final = labels.final_labels(studio)
    assert Counter(final.values()) == Counter(p.counts)
    extras = {fid: s for fid, s in labels.final_labels(studio, include_extra=True).items() if fid not in final}
    assert Counter(extras.values()) == Counter(p.extras) and set(extras) == p.extra_frames
    text = stats.stats_text(studio)
    for name in names:
        assert f"{name:<18} {p.counts.get(name, 0):>5} / {p.quotas[name]:<5}" in text
    assert ("Every quota is met." in text) == p.all_met


def test_disputed_frames_leave_the_quota_and_extras_fill_it(studio):
    ids = add_frames(studio, 8)
    labels.set_quotas(studio, {"close": 2, "medium": 0, "long": 0})
    for fid in ids[:4]:
        labels.record(studio, "ann", fid, "close")                  # 2 counted + 2 extras
    p = labels.progress(studio)
    assert p.counts == {"close": 2} and p.extras == {"close": 2} and p.all_met
    labels.record(studio, "ben", ids[0], "long")                    # ids[0] is disputed: it leaves
    p = labels.progress(studio)
    assert p.disagreements == 1 and p.counts == {"close": 2} and p.extras == {"close": 1}
    assert set(labels.final_labels(studio)) == {ids[1], ids[2]}     # the oldest extra filled the place
    _agree(studio, p, ["close", "medium", "long"])
    labels.resolve(studio, ids[0], "close", "lead")                 # counts again, after the others
    p = labels.progress(studio)
    assert p.counts == {"close": 2} and p.extras == {"close": 2} and p.disagreements == 0
    assert set(labels.final_labels(studio)) == {ids[1], ids[2]}     # what was counted stays counted
    _agree(studio, p, ["close", "medium", "long"])
    labels.resolve(studio, ids[1], "reject", "lead")                # a counted frame leaves
    assert set(labels.final_labels(studio)) == {ids[2], ids[3]}


def test_two_annotators_overlap_half_stats_message_and_export_agree(studio):
    ids = add_frames(studio, 40)
    labels.set_quotas(studio, {"close": 3, "medium": 3, "long": 3})
    studio.db.set_setting("label_overlap", 0.5)
    svc = annotate.service(studio)
    pick = ["close", "close", "medium", "long", "close", "long", "medium", "close", "long"]
    last = None
    for who in ("ann", "ben"):
        view = svc.view(who)
        for k in range(10):
            last = view = svc.act(who, view.frame_id, pick[(k + (who == "ben")) % len(pick)])
    p = labels.progress(studio)
    assert p.disagreements >= 1
    for name in p.taxonomy.names:                                   # no class below quota with extras
        assert p.counts.get(name, 0) == p.quotas[name] or not p.extras.get(name)
    _agree(studio, p, p.taxonomy.names)
    assert ("Every quota is met" in last.message) == p.all_met


def test_held_out_labels_never_fill_the_training_quota(studio):
    """Test-split labels settled first must not push training frames out as extras, and are never
    extras themselves (the evaluation reads them with final_labels(split='test'))."""
    labels.set_quotas(studio, {"close": 2, "medium": 0, "long": 0})
    held = add_frames(studio, 3, split="test")
    for fid in held:
        labels.record(studio, "ann", fid, "close")
    train = add_frames(studio, 2, split="train")
    for fid in train:
        labels.record(studio, "ann", fid, "close")
    p = labels.progress(studio)
    assert p.counts == {"close": 2} and p.extras == {} and p.held_out == {"close": 3}
    assert set(labels.final_labels(studio, split="train")) == set(train)
    assert set(labels.final_labels(studio, split="test")) == set(held)
    assert "held-out (test split, no quota): close 3, medium 0, long 0" in stats.stats_text(studio)
