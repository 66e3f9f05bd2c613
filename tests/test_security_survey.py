"""The survey against a hostile client, without a server: participant caps counted in the database
(a restart or a second server on the same database does not reset them), tokens usable on the
command line, and values of the wrong type from the JSON API."""

from __future__ import annotations

import pytest

from dreamshot.errors import AccessDenied, InvalidInput
from dreamshot.survey.service import service
from tests.survey_helpers import ready_survey

IP = "203.0.113.40"


def _caps_across_servers(make_studio, **db):
    first = make_studio(survey_only=True, **db)
    ready_survey(first, "db")
    data = {"data_dir": first.settings.data_dir} if not db else {}
    second = make_studio(survey_only=True, **data, **db)                # a second server on the same database
    for svc in (service(first), service(second)):
        svc.max_new_per_hour = 3
    service(first).join("db", "", IP)
    service(second).join("db", "", IP)
    service(first).join("db", "", IP)
    with pytest.raises(AccessDenied, match="Too many new participants"):
        service(second).join("db", "", IP)
    first.close()
    restarted = make_studio(survey_only=True, **data, **db)               # a restart forgets nothing
    service(restarted).max_new_per_hour = 3
    with pytest.raises(AccessDenied, match="Too many new participants"):
        service(restarted).join("db", "", IP)
    assert service(restarted).join("db", "", "203.0.113.41")            # another address is not affected
    token = service(restarted).join("db", "", IP, preview=True)          # a studio member's preview: not capped
    assert service(restarted).view(token)["preview"]


def test_participant_caps_hold_across_servers_and_restarts_sqlite(make_studio):
    _caps_across_servers(make_studio)


@pytest.mark.postgres
def test_participant_caps_hold_across_servers_and_restarts_postgres(make_studio, pg_url):
    _caps_across_servers(make_studio, db_url=pg_url)


def test_new_tokens_never_start_with_a_dash(monkeypatch):
    from dreamshot.survey import service as survey_service

    drawn = iter(["-starts-with-a-dash-xyz", "-another-dash-token-abc", "fine-token-0123456789ab"])
    monkeypatch.setattr(survey_service.secrets, "token_urlsafe", lambda n: next(drawn))
    assert survey_service.new_token() == "fine-token-0123456789ab"


def test_a_token_starting_with_a_dash_works_on_the_command_line(make_studio, capsys):
    """Tokens of surveys from before the fix may start with '-' (1 in 64): after '--' it is the token."""
    import sqlalchemy as sa

    from dreamshot import schema
    from dreamshot.__main__ import main

    studio = make_studio()
    ready_survey(studio, "db")
    token = service(studio).join("db", "", IP)
    dashed = "-" + token[1:]
    PT = schema.survey_participants
    with studio.db.write() as conn:
        conn.execute(PT.update().where(PT.c.token == token).values(token=dashed))
    common = ["--data", str(studio.settings.data_dir), "--model", "demo"]
    with pytest.raises(SystemExit):                                      # read as a flag: the error says what to do
        main(["survey", "exclude", "db", dashed[:8], *common])
    assert "after '--'" in capsys.readouterr().err
    assert main(["survey", "exclude", "db", *common, "--reason", "bot", "--", dashed[:8]]) == 0
    assert capsys.readouterr().out.strip() == f"excluded {dashed[:8]}"
    with studio.db.read() as conn:
        assert conn.execute(sa.select(PT.c.exclusion_reason).where(PT.c.token == dashed)).scalar_one() == "bot"
    assert main(["survey", "include", *common, "db", "--", dashed]) == 0
    with studio.db.read() as conn:
        assert conn.execute(sa.select(PT.c.excluded_at).where(PT.c.token == dashed)).scalar_one() is None


def test_answers_of_the_wrong_type_are_refused_with_a_message(make_studio):
    studio = make_studio()
    ready_survey(studio, "db")
    svc = service(studio)
    view = svc.view(svc.join("db", "", IP))
    for question, answer, message in ((5, "A", "The question must be text .got a number"),
                                      ("like", True, "The answer must be text .got true/false"),
                                      ("like", ["A"], "The answer must be text .got a list")):
        with pytest.raises(InvalidInput, match=message):
            svc.answer(view["token"], view["slot"], view["pair_id"], question, answer, IP)
    with pytest.raises(InvalidInput, match="slot must be a whole number"):
        svc.answer(view["token"], float("inf"), view["pair_id"], "like", "A", IP)
    with pytest.raises(InvalidInput, match="The token must be text"):
        svc.view(12345)
