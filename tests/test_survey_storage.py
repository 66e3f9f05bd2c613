"""Survey storage: the migrations from the placeholder tables give the same tables as a fresh
database, and concurrent identical or conflicting answers are stored once - on SQLite and on
PostgreSQL (where the unique constraint, not a lock, decides)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from dreamshot import storage
from dreamshot.errors import InvalidInput
from dreamshot.storage import open_database
from dreamshot.survey.service import service
from tests.survey_helpers import answers, ready_survey

SURVEY_TABLES = ["surveys", "survey_pairs", "survey_participants", "survey_answers"]


def _describe(conn, tables):
    insp = sa.inspect(conn)
    return {t: (sorted((c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)),
                sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
                sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
                sorted((tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(t)))
            for t in tables}


def test_survey_step_turns_placeholders_into_the_current_tables(tmp_path):
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    fresh = open_database(f"sqlite:///{tmp_path / 'fresh.db'}")
    old = open_database(f"sqlite:///{tmp_path / 'old.db'}")
    with old.engine.begin() as conn:   # back to the placeholder tables of schema version 1
        for t in reversed(SURVEY_TABLES):
            conn.exec_driver_sql(f"DROP TABLE {t}")
        conn.exec_driver_sql("CREATE TABLE survey_pairs (id INTEGER PRIMARY KEY AUTOINCREMENT, prompt TEXT NOT NULL, "
                             "shot VARCHAR(64) NOT NULL, seed BIGINT NOT NULL, alpha FLOAT NOT NULL, lora_name VARCHAR(128), "
                             "base_image TEXT NOT NULL, lora_image TEXT NOT NULL, meta JSON NOT NULL, created_at FLOAT NOT NULL)")
        conn.exec_driver_sql("CREATE TABLE votes (id INTEGER PRIMARY KEY AUTOINCREMENT, pair_id INTEGER NOT NULL "
                             "REFERENCES survey_pairs (id) ON DELETE CASCADE, participant VARCHAR(128) NOT NULL, "
                             "lora_side VARCHAR(1) NOT NULL, answer_like VARCHAR(8) NOT NULL, answer_shot VARCHAR(8) NOT NULL, "
                             "answer_prompt VARCHAR(8) NOT NULL, created_at FLOAT NOT NULL)")
        conn.exec_driver_sql("CREATE INDEX ix_votes_pair ON votes (pair_id)")
        op = Operations(MigrationContext.configure(conn))
        storage._step_surveys(op)
        storage._survey_participants_preview(op)     # the later step that changes a survey table
    with old.read() as a, fresh.read() as b:
        assert "votes" not in sa.inspect(a).get_table_names()
        assert _describe(a, SURVEY_TABLES) == _describe(b, SURVEY_TABLES)
    assert storage._step_surveys in storage.STEPS
    old.dispose()
    fresh.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_studio(request, make_studio):
    if request.param == "sqlite":
        return make_studio()
    return make_studio(db_url=request.getfixturevalue("pg_url"))


def test_concurrent_replays_and_conflicts_store_one_answer(db_studio):
    ready_survey(db_studio)
    svc = service(db_studio)
    token = svc.join("db", "", "198.51.100.1")
    view = svc.view(token)
    outcomes, lock = [], threading.Lock()
    barrier = threading.Barrier(16)

    def send(question, value):
        barrier.wait()
        try:
            ack = svc.answer(token, view["slot"], view["pair_id"], question, value, "198.51.100.1")
            result = "dup" if ack["duplicate"] else "stored"
        except InvalidInput as exc:
            result = "refused" if "final" in str(exc) else str(exc)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=send, args=("like", "A")) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["dup"] * 15 + ["stored"]
    outcomes.clear()
    threads = [threading.Thread(target=send, args=("shot", "AB"[i % 2])) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("stored") == 1 and set(outcomes) <= {"stored", "dup", "refused"}
    assert outcomes.count("refused") == 8            # the other value: refused, the first one stands
    assert len(answers(db_studio)) == 2
