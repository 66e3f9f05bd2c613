"""The Survey tab served for real on 127.0.0.1: the participant API through gradio_client (a crowd of
50 concurrent participants; stored == sent, nothing duplicated), the admin endpoints, the tab
handlers without a server, and a survey-only server that needs no login."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from dreamshot import schema
from dreamshot.survey.service import QUESTIONS, service
from tests.survey_helpers import answers, open_survey, ready_survey, small_spec, survey_server  # noqa: F401
from tests.survey_helpers import gen_studio, lora_files  # noqa: F401

CROWD = 50


def _participant(client, seen: list) -> tuple[str, int]:
    """Join, answer every pair (each answer sent twice: a replay), return (token, answers sent)."""
    view = client.predict("pilot", "", api_name="/survey_join")
    token, sent = view["token"], 0
    while not view["finished"]:
        for i, q in enumerate(QUESTIONS):
            choice = "ABN"[(view["pair_id"] + i) % 3]
            for _ in range(2 if q == "like" else 1):   # the first answer of each pair is replayed
                ack = client.predict(token, view["slot"], view["pair_id"], q, choice, api_name="/survey_answer")
                seen.append((token, view["pair_id"], q, choice, ack["duplicate"]))
            sent += 1
        assert ack["slot_done"] and ack["lora_side"] in ("A", "B")
        view = client.predict(token, api_name="/survey_view")
    return token, sent


def test_crowd_of_50_concurrent_participants(studio):
    """The survey-only server runs in its own process, as in production (in this process 50 client
    sessions and the server would share one interpreter lock)."""
    ready_survey(studio, "pilot", pairs=4, per_participant=1)   # pictures made up: no generation here
    open_survey = studio
    svc = service(open_survey)
    caps = {"DREAMSHOT_SURVEY_MAX_NEW_PER_HOUR": "1000", "DREAMSHOT_SURVEY_MAX_ANSWERS_PER_MIN": "100000"}
    with survey_server(studio.settings.data_dir, **caps) as url:
        _crowd(url, open_survey, svc)


def _crowd(url, open_survey, svc):
    from gradio_client import Client

    client = Client(url, verbose=False, httpx_kwargs={"timeout": 300})   # a loaded CI box is slow, not wrong
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/survey_join", "/survey_view", "/survey_answer", "/survey_images"} <= set(api)
    # One session per participant, as browsers have (a gradio_client Client is not safe to share
    # between threads with events in flight); the sessions are opened before the crowd starts.
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda _: Client(url, verbose=False, httpx_kwargs={"timeout": 300}), range(CROWD)))
    t1 = time.perf_counter()
    seen: list = []
    with ThreadPoolExecutor(CROWD) as pool:
        done = list(pool.map(lambda c: _participant(c, seen), clients))
    print(f"sessions opened in {t1 - t0:.1f}s, crowd answered in {time.perf_counter() - t1:.1f}s")
    assert len({t for t, _ in done}) == CROWD
    sent = sum(n for _, n in done)
    stored = answers(open_survey)
    assert sent == CROWD * 2 * len(QUESTIONS) == len(stored)
    assert len(set((p, pair, rnd, q) for p, pair, rnd, q, _ in stored)) == len(stored)
    assert sum(1 for *_, dup in seen if not dup) == sent     # each replay acknowledged as a duplicate
    PT = schema.survey_participants
    with open_survey.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(PT).where(PT.c.finished_at.is_not(None))).scalar_one() == CROWD
    spoofer = Client(url, verbose=False, headers={"X-Forwarded-For": "6.6.6.6"})
    token = spoofer.predict("pilot", "", api_name="/survey_join")["token"]
    with open_survey.db.read() as conn:
        ip_hash = conn.execute(sa.select(PT.c.ip_hash).where(PT.c.token == token)).scalar_one()
    assert ip_hash == svc.ip_key("127.0.0.1") != svc.ip_key("6.6.6.6")   # the header did not count
    a, b = client.predict(done[0][0], 0, api_name="/survey_images")   # files of the pictures
    assert a and b and a != b
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Unknown participant"):
        client.predict("forged-token-forged-token", 0, 1, "like", "A", api_name="/survey_answer")


def test_handlers_without_a_server(open_survey):
    from dreamshot.survey.tab import SurveyHandlers

    class Req:
        client = type("C", (), {"host": "192.0.2.1"})()
        headers = {"x-forwarded-for": "10.9.9.9"}
        query_params = {}
        username = None

    h = SurveyHandlers(open_survey)
    first = h.ui_load("", Req())
    assert first[3].visible is True              # the start button; no pair yet
    assert first[-1].visible is False            # one open survey: nothing to choose
    page = h.ui_start("", "", Req())
    token, slot, pair = page[0], page[-3], page[-2]
    assert page[4].visible is True and page[6] is not None and page[7] is not None
    page = h.ui_answer("like", "B", token, slot, pair, Req())
    assert page[8 + 1].variant == "primary" and page[8 + 1].interactive is False   # like-B chosen
    assert h.ui_load(token, Req())[-3] == slot       # a reload resumes at the same pair
    PT = schema.survey_participants
    with open_survey.db.read() as conn:
        ip_hash = conn.execute(sa.select(PT.c.ip_hash).where(PT.c.token == token)).scalar_one()
    assert ip_hash == service(open_survey).ip_key("192.0.2.1")  # the spoofed header was ignored


def test_admin_endpoints_build_and_results(gen_studio, serve, one_torch_thread, tmp_path):
    from gradio_client import Client

    client = Client(serve(gen_studio), verbose=False)
    text = client.predict("api", ["close", "medium"], 2, 1, 1.0, "pasted prompts", "a cat\na dog", "",
                          "Hello", 2, 64, api_name="/survey_build")
    assert "2/2 pairs ready" in text
    svc = service(gen_studio)
    svc.set_state("api", "open")
    token = svc.join("api", "", "198.51.100.3")
    while not (view := svc.view(token))["finished"]:
        for q in QUESTIONS:
            svc.answer(token, view["slot"], view["pair_id"], q, "A", "198.51.100.3")
    table, chart, people = client.predict("api", api_name="/survey_results")
    assert "| like |" in table and "sign test" in table and len(people["data"]) == 1
    csv_file, json_file = client.predict("api", api_name="/survey_export")
    assert open(csv_file).read().count("\n") == 1 + 2 * len(QUESTIONS)


def test_survey_only_server_needs_no_login(make_studio, lora_files, serve, one_torch_thread):
    from gradio_client import Client

    from dreamshot.generate.loras import LoraLibrary

    admin = make_studio(admin_password="s3cret-pass")
    lib = LoraLibrary(admin)
    lib.register(lora_files["close"], name="close", shot="close", origin="trained")
    lib.register(lora_files["medium"], name="medium", shot="medium", origin="trained")
    service(admin).build(small_spec(name="solo"))
    service(admin).set_state("solo", "open")
    participant = make_studio(data_dir=admin.settings.data_dir, admin_password="s3cret-pass", survey_only=True)
    client = Client(serve(participant), verbose=False)
    view = client.predict("", "", api_name="/survey_join")     # the only open survey, no login
    assert view["survey"] == "solo" and view["total"] == 3
    with pytest.raises(ValueError, match="Cannot find a function"):     # no admin endpoint is served
        client.predict("solo", api_name="/survey_results")
    from dreamshot.errors import AccessDenied
    from dreamshot.survey.tab_admin import SurveyAdminHandlers

    class Anonymous:
        username = None

    for studio in (admin, participant):                 # the handlers check the caller themselves
        with pytest.raises(AccessDenied):
            SurveyAdminHandlers(studio).results("solo", Anonymous())
        with pytest.raises(AccessDenied):
            SurveyAdminHandlers(studio).exclude("solo", view["token"], "x", True, Anonymous())
