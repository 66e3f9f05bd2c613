"""Survey service: building (prompts, held-out frames, resume), participants, answers and the
database's refusal of forged or replayed submissions, results, exclusions, export, mirroring."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import AccessDenied, InvalidInput, NotFound
from dreamshot.survey import results
from dreamshot.survey.build import plan_from_prompts
from dreamshot.survey.model import make_plan
from dreamshot.survey.service import QUESTIONS, service
from tests.survey_helpers import add_frames, answers, open_survey, small_spec  # noqa: F401 (fixtures)
from tests.survey_helpers import gen_studio, lora_files  # noqa: F401

IP = "203.0.113.7"


def _answer_pair(svc, token, choice="A"):
    view = svc.view(token)
    for q in QUESTIONS:
        ack = svc.answer(token, view["slot"], view["pair_id"], q, choice, IP)
    return view, ack


def test_build_generates_same_seed_pairs_with_parameters(open_survey):
    svc = service(open_survey)
    info = svc.info("pilot")
    assert (info.state, info.pool, info.ready, info.per_participant) == ("open", 4, 4, 2)
    P = schema.survey_pairs
    with open_survey.db.read() as conn:
        rows = conn.execute(sa.select(P).order_by(P.c.position)).all()
    assert sorted(r.shot for r in rows) == ["close", "close", "medium", "medium"]  # balanced
    for r in rows:
        assert r.prompt == open_survey.project.prompt(r.shot, r.caption)
        assert f"Seed: {r.seed}" in r.base_parameters and f"Seed: {r.seed}" in r.lora_parameters
        assert "<lora:" in r.lora_parameters and "<lora:" not in r.base_parameters
        assert (open_survey.settings.data_dir / r.base_image).is_file()
        assert r.base_parameters.startswith(r.prompt)


def test_build_resumes_after_a_crash(gen_studio, one_torch_thread, monkeypatch):
    from dreamshot.generate.service import GenerationService
    from dreamshot.survey import build

    svc = service(gen_studio)
    svc.create(small_spec(name="resume", pairs=3, per_participant=2))
    with pytest.raises(InvalidInput, match="not generated yet"):
        svc.set_state("resume", "open")
    monkeypatch.setattr(build, "PAIRS_PER_BATCH", 1)
    real, calls = GenerationService.compare_many, []

    def crash_on_second(self, reqs, *a, **kw):
        calls.append(len(reqs))
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return real(self, reqs, *a, **kw)

    monkeypatch.setattr(GenerationService, "compare_many", crash_on_second)
    with pytest.raises(RuntimeError):
        svc.generate("resume")
    assert svc.info("resume").ready == 1
    P = schema.survey_pairs
    with gen_studio.db.read() as conn:
        first = conn.execute(sa.select(P.c.base_image).where(P.c.status == "ready")).scalar_one()
    before = (gen_studio.settings.data_dir / first).stat().st_mtime_ns
    texts = []
    assert svc.build(small_spec(name="resume", pairs=3), progress=lambda f, t: texts.append(t)).ready == 3
    assert calls == [1, 1, 1, 1] and texts[-1] == "2 pair(s) generated"     # only the two missing pairs
    assert (gen_studio.settings.data_dir / first).stat().st_mtime_ns == before
    svc.set_state("resume", "open")


def test_prompts_are_balanced_and_shot_lines_kept():
    plan = plan_from_prompts(["a cat", "medium | a dog"], ["close", "medium", "long"], 6)
    assert [p[:2] for p in plan] == [("close", "a cat"), ("medium", "a dog"), ("long", "a cat"),
                                     ("medium", "a dog"), ("medium", "a cat"), ("medium", "a dog")]
    plain = [p[:2] for p in plan_from_prompts(["a", "b"], ["close", "medium"], 4)]
    assert sorted(plain) == [("close", "a"), ("close", "b"), ("medium", "a"), ("medium", "b")]


def test_held_out_frames_only_and_training_frames_refused_by_name(gen_studio):
    ids = add_frames(gen_studio, [("test", "close", "a rider at dawn"), ("test", "medium", "a cook"),
                                  ("test", None, "a quiet street"), ("train", "close", "seen in training")])
    svc = service(gen_studio)
    with pytest.raises(InvalidInput, match=rf"used for training.*{ids[3]}"):
        svc.create(small_spec(name="f", prompts=None, frames=[ids[0], ids[3]]))
    info = svc.create(small_spec(name="auto", prompts=None, pairs=4))
    P = schema.survey_pairs
    with gen_studio.db.read() as conn:
        rows = conn.execute(sa.select(P.c.shot, P.c.caption, P.c.frame_id).where(P.c.survey_id == info.id)).all()
    assert ids[3] not in {r.frame_id for r in rows}
    assert {(r.shot, r.frame_id) for r in rows} >= {("close", ids[0]), ("medium", ids[1])}


def test_plan_has_one_swapped_repeat():
    import random

    plan = make_plan([(i, "close" if i % 2 else "medium") for i in range(10)], 6, random.Random(1))
    firsts = [p for p in plan if p["round"] == 0]
    assert len(plan) == 7 and len({p["pair"] for p in firsts}) == 6
    repeat = next(p for p in plan if p["round"] == 1)
    original = next(p for p in firsts if p["pair"] == repeat["pair"])
    assert repeat["lora_side"] != original["lora_side"]
    assert plan.index(repeat) >= plan.index(original) + 1
    assert sum(1 for p in firsts if p["pair"] % 2) == 3    # balanced across shot types


def test_participant_flow_resume_reveal_and_finish(open_survey):
    svc = service(open_survey)
    token = svc.join("pilot", "", IP)
    assert svc.join("pilot", token, IP) == token                # a reload keeps the token
    view = svc.view(token)
    assert view["total"] == 3 and view["done"] == 0 and "lora" not in json.dumps(view).lower().replace("lora_", "")
    ack = svc.answer(token, view["slot"], view["pair_id"], "like", "a", IP)
    assert ack["lora_side"] is None and not ack["slot_done"]     # no reveal before the pair is done
    again = svc.view(token)                                      # reload mid-pair: same pair, answer kept
    assert again["slot"] == view["slot"] and again["answered"] == {"like": "A"}
    with pytest.raises(InvalidInput, match="first"):
        svc.answer(token, view["slot"] + 1, _plan(open_survey, token)[view["slot"] + 1]["pair"], "like", "A", IP)
    svc.answer(token, view["slot"], view["pair_id"], "shot", "B", IP)
    done = svc.answer(token, view["slot"], view["pair_id"], "prompt", "N", IP)
    assert done["slot_done"] and done["lora_side"] in ("A", "B") and done["done"] == 1
    assert svc.view(token)["slot"] == view["slot"] + 1
    _answer_pair(svc, token)
    _, last = _answer_pair(svc, token)
    assert last["finished"] and svc.view(token)["finished"]
    rows = answers(open_survey)
    assert len(rows) == 9 and len(set((r[1], r[2], r[3]) for r in rows)) == 9


def test_forged_and_replayed_answers(open_survey):
    svc = service(open_survey)
    token = svc.join("pilot", None, IP)
    view = svc.view(token)
    slot, pair = view["slot"], view["pair_id"]
    with pytest.raises(NotFound, match="Unknown participant"):
        svc.answer("x" * 24, slot, pair, "like", "A", IP)
    with pytest.raises(InvalidInput, match="not assigned"):
        svc.answer(token, slot, pair + 1000, "like", "A", IP)
    with pytest.raises(InvalidInput, match="A, B or N"):
        svc.answer(token, slot, pair, "like", "C", IP)
    with pytest.raises(InvalidInput, match="Unknown question"):
        svc.answer(token, slot, pair, "colour", "A", IP)
    acks = [svc.answer(token, slot, pair, "like", "B", IP) for _ in range(50)]
    assert [a["duplicate"] for a in acks].count(False) == 1
    with pytest.raises(InvalidInput, match="final"):
        svc.answer(token, slot, pair, "like", "A", IP)
    assert len(answers(open_survey)) == 1
    svc.set_state("pilot", "closed")
    with pytest.raises(AccessDenied, match="closed"):
        svc.answer(token, slot, pair, "shot", "A", IP)
    with pytest.raises(AccessDenied, match="closed"):
        svc.join("pilot", "", "198.51.100.1")
    assert len(answers(open_survey)) == 1                           # closing keeps every vote


def test_database_enforces_one_answer_per_question(open_survey):
    svc = service(open_survey)
    token = svc.join("pilot", "", IP)
    view = svc.view(token)
    svc.answer(token, view["slot"], view["pair_id"], "like", "A", IP)
    A, PT = schema.survey_answers, schema.survey_participants
    with open_survey.db.read() as conn:
        row = conn.execute(sa.select(A)).one()._asdict()
    row.pop("id")
    with pytest.raises(sa.exc.IntegrityError):
        with open_survey.db.write() as conn:
            conn.execute(A.insert().values(**row))


def test_per_ip_caps(open_survey, monkeypatch):
    svc = service(open_survey)
    svc.max_new_per_hour = 2
    svc.join("pilot", "", IP)
    svc.join("pilot", "", IP)
    with pytest.raises(AccessDenied, match="Too many new participants"):
        svc.join("pilot", "", IP)
    svc.join("pilot", "", "198.51.100.9")                            # another address is not affected
    svc.answer_limiter.limit = 1
    token = svc.join("pilot", "", "198.51.100.10")
    view = svc.view(token)
    svc.answer(token, view["slot"], view["pair_id"], "like", "A", "198.51.100.10")
    with pytest.raises(AccessDenied, match="Too many answers"):
        svc.answer(token, view["slot"], view["pair_id"], "shot", "A", "198.51.100.10")


def test_results_table5_exclusion_and_export(open_survey):
    svc = service(open_survey)
    tokens = [svc.join("pilot", "", f"198.51.100.{i}") for i in range(4)]
    for i, token in enumerate(tokens):
        while not svc.view(token)["finished"]:
            view = svc.view(token)
            pick = "N" if i == 3 else None
            for q in QUESTIONS:   # participants 0-2 always pick the fine-tuned side, 3 picks neither
                side = svc.view(token)
                lora = _lora_side(open_survey, token, side["slot"])
                svc.answer(token, view["slot"], view["pair_id"], q, pick or lora, IP)
    res = results.results(open_survey, "pilot")
    like = res.overall[0]
    assert res.participants == 4 and res.answers == 4 * 2 * 3
    assert (like.shares["lora"].count, like.shares["base"].count, like.shares["neither"].count) == (6, 0, 2)
    assert like.sign_p == pytest.approx(2 / 64)
    assert like.shares["lora"].low == pytest.approx(0.4093, abs=1e-3)   # Wilson 6/8
    assert res.consistency == 1.0
    assert "| like | 0.0% (0)" in res.markdown()
    svc.set_excluded("pilot", tokens[3][:10], True, "always neither", by="admin")
    res = results.results(open_survey, "pilot")
    assert res.excluded == 1 and res.overall[0].shares["neither"].count == 0
    quality = {q["token"]: q for q in results.participant_quality(open_survey, "pilot")}
    assert quality[tokens[3]]["excluded"] and quality[tokens[3]]["exclusion_reason"] == "always neither"
    rows = results.export_rows(open_survey, "pilot")
    assert len(rows) == 4 * 3 * 3 and sum(r["excluded"] for r in rows) == 9   # votes kept
    assert results.export_csv(rows).splitlines()[0].startswith("survey,token,pair_id")
    svc.set_excluded("pilot", tokens[3][:10], False, by="admin")
    assert results.results(open_survey, "pilot").excluded == 0


def _plan(studio, token):
    PT = schema.survey_participants
    with studio.db.read() as conn:
        return conn.execute(sa.select(PT.c.plan).where(PT.c.token == token)).scalar_one()


def _lora_side(studio, token, slot):
    return _plan(studio, token)[slot]["lora_side"]


def test_votes_mirrored_through_commit_scheduler_to_a_fake_target(open_survey, monkeypatch, tmp_path):
    from huggingface_hub import HfApi

    from dreamshot.survey.mirror import VoteMirror

    target, created = tmp_path / "fake-hub", []

    class FakeApi(HfApi):
        def create_repo(self, repo_id, **kw):
            (target / repo_id).mkdir(parents=True, exist_ok=True)
            created.append(kw)
            return SimpleNamespace(repo_id=repo_id)

        def create_commit(self, repo_id, operations, **kw):
            for op in operations:
                out = target / repo_id / op.path_in_repo
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(op.path_or_fileobj.read())
            return "ok"

    monkeypatch.setenv("DREAMSHOT_SURVEY_REPO", "me/votes")
    monkeypatch.setenv("DREAMSHOT_SURVEY_HF_TOKEN", "hf_fake")
    svc = service(open_survey)
    svc._mirror = VoteMirror.from_env(open_survey, hf_api=FakeApi(endpoint="http://127.0.0.1:9"))
    assert svc.mirror().enabled and created == [{"private": True, "repo_type": "dataset", "exist_ok": True}]
    token = svc.join("pilot", "", IP)
    _answer_pair(svc, token, "B")
    svc.mirror().push_now().result(timeout=30)
    files = list((target / "me/votes").rglob("*.jsonl"))
    lines = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert len(lines) == 3 and {x["answer"] for x in lines} == {"B"} and lines[0]["token"] == token
    assert {x["preview"] for x in lines} == {False}        # a studio member's preview would say True
    svc.mirror().scheduler.stop()


def test_no_mirror_without_settings(open_survey, monkeypatch):
    monkeypatch.delenv("DREAMSHOT_SURVEY_REPO", raising=False)
    assert not service(open_survey).mirror().enabled
