"""Storage on a real SQLite file and on PostgreSQL on loopback: durability rules, schema versioning,
migrations, refusal of newer or foreign databases."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from dreamshot import schema, storage
from dreamshot.errors import SchemaTooNewError, SettingsError
from dreamshot.storage import open_database


def _insert_frame(conn, source="a.png"):
    return conn.execute(schema.frames.insert().values(
        source=source, path=source, meta={}, status="ok", split="train", created_at=storage.now(),
    )).inserted_primary_key[0]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'studio.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    database = open_database(url)
    yield database
    database.dispose()


def test_fresh_database_gets_current_schema_and_version(db):
    assert db.schema_version() == storage.SCHEMA_VERSION
    with db.read() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert set(schema.metadata.tables) <= tables


def test_write_commits_and_read_sees_it(db):
    with db.write() as conn:
        frame_id = _insert_frame(conn)
        conn.execute(schema.labels.insert().values(
            frame_id=frame_id, annotator="ann", taxonomy="paper", action="label", shot="close",
            is_extra=False, created_at=storage.now()))
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.labels)).scalar_one() == 1


def test_failed_write_rolls_back_whole_transaction(db):
    with pytest.raises(RuntimeError):
        with db.write() as conn:
            _insert_frame(conn)
            raise RuntimeError("boom")
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.frames)).scalar_one() == 0


def test_foreign_keys_are_enforced(db):
    with pytest.raises(sa.exc.IntegrityError):
        with db.write() as conn:
            conn.execute(schema.labels.insert().values(
                frame_id=12345, annotator="ann", taxonomy="paper", action="label", shot="close",
                is_extra=False, created_at=storage.now()))


def test_project_settings_roundtrip(db):
    assert db.get_setting("quotas", {"close": 200}) == {"close": 200}
    db.set_setting("quotas", {"close": 5, "long": 7})
    db.set_setting("quotas", {"close": 6})
    assert db.get_setting("quotas") == {"close": 6}


def test_newer_schema_is_refused_and_left_untouched(db, tmp_path):
    with db.write() as conn:
        storage._write_version(conn, storage.SCHEMA_VERSION + 5)
    url = db.engine.url.render_as_string(hide_password=False)
    if db.is_sqlite:
        db.dispose()
        path = db.engine.url.database
        before = hashlib.sha256(open(path, "rb").read()).hexdigest()
    with pytest.raises(SchemaTooNewError, match="newer|only knows"):
        open_database(url)
    if db.is_sqlite:
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() == before


def test_database_not_made_by_dreamshot_is_refused(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    with pytest.raises(SchemaTooNewError, match="not made by DreamShot"):
        open_database(f"sqlite:///{path}")


def test_upgrade_steps_run_in_order(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    open_database(url).dispose()  # a database at the current version

    def add_notes_table(op):
        op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))

    def add_text_column(op):
        with op.batch_alter_table("notes") as batch:
            batch.add_column(sa.Column("text", sa.Text, nullable=True))

    steps = [*storage.STEPS, add_notes_table, add_text_column]
    monkeypatch.setattr(storage, "STEPS", steps)
    monkeypatch.setattr(storage, "SCHEMA_VERSION", 1 + len(steps))
    db = open_database(url)
    assert db.schema_version() == 1 + len(steps)
    with db.read() as conn:
        assert [c["name"] for c in sa.inspect(conn).get_columns("notes")] == ["id", "text"]
    db.dispose()


def test_sqlite_durability_pragmas(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'studio.db'}")
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == storage.BUSY_TIMEOUT_MS
    db.dispose()


def test_sqlite_writes_begin_immediate(tmp_path):
    """Inside db.write() the write lock is already held, before any statement ran."""
    path = tmp_path / "studio.db"
    db = open_database(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    with db.write():
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again after commit
    other.execute("ROLLBACK")
    other.close()
    db.dispose()


def test_acknowledged_write_survives_sigkill(tmp_path):
    """A process killed right after a write returned loses nothing."""
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from dreamshot import schema, storage
        db = storage.open_database({url!r})
        with db.write() as conn:
            conn.execute(schema.frames.insert().values(source="k.png", meta={{}}, status="ok",
                         split="train", created_at=storage.now()))
        print("ack", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ack" and proc.returncode == -9
    db = open_database(url)
    with db.read() as conn:
        assert conn.execute(sa.select(schema.frames.c.source)).scalars().all() == ["k.png"]
    db.dispose()


def test_unreachable_database_gives_clear_error():
    with pytest.raises(SettingsError, match="Cannot open the database") as info:
        open_database("postgresql://nobody:secret-pw@127.0.0.1:1/none")
    assert "secret-pw" not in str(info.value) and "Connection refused" in str(info.value)


@pytest.mark.postgres
def test_a_database_refusal_says_why_without_the_password(pg_server_url):
    """The driver's reason is named (a bare "OperationalError" left people guessing), never the password."""
    url = sa.engine.make_url(storage.normalize_url(pg_server_url))
    wrong = url.set(password="wrong-pw-123").render_as_string(hide_password=False)
    with pytest.raises(SettingsError, match="password authentication failed") as info:
        open_database(wrong)
    assert "wrong-pw-123" not in str(info.value)
    missing = url.set(database="no_such_db_for_this_test").render_as_string(hide_password=False)
    with pytest.raises(SettingsError, match='database "no_such_db_for_this_test" does not exist'):
        open_database(missing)


def test_postgres_url_forms_use_psycopg3():
    assert storage.normalize_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert storage.normalize_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert storage.normalize_url("sqlite:///x.db") == "sqlite:///x.db"
