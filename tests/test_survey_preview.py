"""A studio member who tries the survey on the full studio (the participant page at the top of their
own Survey tab) joins as a *preview*: every answer is stored as one row like anyone's, but Table 5,
the agreement, the participants table and the counts leave it out; it is counted on its own line,
listed with ``participants --previews`` and marked in the export. A participant of a survey-only
server is never a preview. Plus the schema step that adds the flag to a database with votes in it."""

from __future__ import annotations

import sqlalchemy as sa

from dreamshot import schema, storage
from dreamshot.__main__ import main
from dreamshot.storage import open_database
from dreamshot.survey import results
from dreamshot.survey.service import QUESTIONS, service
from dreamshot.survey.tab import SurveyHandlers
from tests.survey_helpers import answers, ready_survey


class Req:
    """A gradio.Request as the handlers read it."""
    client = type("C", (), {"host": "192.0.2.7"})()
    headers: dict = {}
    query_params: dict = {}

    def __init__(self, username=None):
        self.username = username


def _answer_all(h: SurveyHandlers, request, choice="A") -> str:
    view = h.join("db", "", request)
    while not view["finished"]:
        for q in QUESTIONS:
            h.answer(view["token"], view["slot"], view["pair_id"], q, choice, request)
        view = h.view(view["token"])
    return view["token"]


def test_a_studio_members_answers_are_a_preview_kept_but_not_counted(make_studio, capsys):
    admin = make_studio(admin_password="s3cret-pass")
    ready_survey(admin, "db", pairs=4, per_participant=2)
    participant = make_studio(data_dir=admin.settings.data_dir, admin_password="s3cret-pass", survey_only=True)
    mine = _answer_all(SurveyHandlers(admin), Req("ann"), "B")          # logged in to the studio
    assert SurveyHandlers(admin).view(mine)["preview"] is True
    page = SurveyHandlers(admin).page(SurveyHandlers(admin).join("db", "", Req("bob")))
    assert "Preview: you are a studio member" in page[5]
    theirs = _answer_all(SurveyHandlers(participant), Req(None), "A")   # the survey-only server
    assert SurveyHandlers(participant).view(theirs)["preview"] is False

    per_person = 3 * len(QUESTIONS)                                     # 2 pairs + the repeat
    assert len(answers(admin)) == 2 * per_person                        # every vote is a row
    res = results.results(admin, "db")
    assert (res.participants, res.answers, res.previews, res.preview_answers) == (1, 2 * 3, 2, per_person)
    assert res.overall[0].shares["base"].count + res.overall[0].shares["lora"].count == 2   # the participant's
    assert "Not counted: 2 preview(s) by studio members" in res.markdown()
    assert [q["token"] for q in results.participant_quality(admin, "db")] == [theirs]
    assert [q["token"] for q in results.participant_quality(admin, "db", previews=True)][0] == mine
    exported = results.export_rows(admin, "db")
    assert len(exported) == 2 * per_person
    assert {r["token"] for r in exported if r["preview"]} == {mine}     # bob answered nothing
    assert {r["token"] for r in exported if not r["preview"]} == {theirs}
    assert "preview" in results.export_csv(exported).splitlines()[0].split(",")
    info = service(admin).info("db")
    assert (info.participants, info.answers, info.previews) == (1, per_person, 2)
    assert "+2 preview(s) by studio members, not counted" in info.line()

    common = ["--data", str(admin.settings.data_dir), "--model", "demo"]
    assert main(["survey", "participants", "db", *common]) == 0
    listed = capsys.readouterr().out
    assert theirs in listed and mine not in listed
    assert main(["survey", "participants", "db", "--previews", *common]) == 0
    listed = capsys.readouterr().out
    assert mine in listed and theirs not in listed


def test_without_a_password_everyone_on_the_full_studio_is_a_member(studio):
    """A studio opened without --admin-password treats every visitor as a studio member: its page
    is for trying the survey; participants take it on a survey-only server."""
    ready_survey(studio, "db")
    token = SurveyHandlers(studio).join("db", "", Req(None))["token"]
    assert service(studio).view(token)["preview"] is True
    assert service(studio).view(service(studio).join("db", "", "198.51.100.9"))["preview"] is False  # scripts


def test_the_preview_step_keeps_every_vote_and_marks_none(db_url, monkeypatch):
    """A database of the version before the flag, with a participant and their answer, upgrades
    in place: the rows are all there and none of them is a preview."""
    upto = storage.STEPS.index(storage._survey_participants_preview) + 1   # later steps are tested on their own
    monkeypatch.setattr(storage, "STEPS", storage.STEPS[:upto])
    monkeypatch.setattr(storage, "SCHEMA_VERSION", 1 + upto)
    db = open_database(db_url)
    PT, A = schema.survey_participants, schema.survey_answers
    with db.write() as conn:
        sid = conn.execute(schema.surveys.insert().values(name="old", state="open", per_participant=1, intro="",
                                                          settings={}, created_at=1.0)).inserted_primary_key[0]
        pair = conn.execute(schema.survey_pairs.insert().values(
            survey_id=sid, position=0, shot="close", caption="c", prompt="p", seed=1, alpha=1.0, status="ready",
            meta={}, created_at=1.0)).inserted_primary_key[0]
        person = conn.execute(PT.insert().values(survey_id=sid, token="t" * 20, ip_hash="h", plan=[],
                                                 created_at=1.0)).inserted_primary_key[0]
        conn.execute(A.insert().values(participant_id=person, pair_id=pair, round=0, slot=0, question="like",
                                       answer="A", lora_side="B", choice="base", created_at=2.0))
        conn.exec_driver_sql("ALTER TABLE survey_participants DROP COLUMN preview")
        storage._write_version(conn, storage.SCHEMA_VERSION - 1)
    db.dispose()
    assert storage.STEPS[-1] is storage._survey_participants_preview

    db = open_database(db_url)                                          # upgraded here
    assert db.schema_version() == storage.SCHEMA_VERSION
    with db.read() as conn:
        assert conn.execute(sa.select(PT.c.token, PT.c.preview)).all() == [("t" * 20, False)]
        assert conn.execute(sa.select(A.c.answer, A.c.choice)).all() == [("A", "base")]
        column = next(c for c in sa.inspect(conn).get_columns("survey_participants") if c["name"] == "preview")
        assert column["nullable"] is False
    with db.write() as conn:                                            # a row written without the flag: not a preview
        conn.exec_driver_sql("INSERT INTO survey_participants (survey_id, token, ip_hash, plan, created_at) "
                             f"VALUES ({int(sid)}, '{'u' * 20}', 'h', '[]', 3.0)")
    with db.read() as conn:
        assert conn.execute(sa.select(PT.c.preview).where(PT.c.token == "u" * 20)).scalar_one() is False
    db.dispose()
