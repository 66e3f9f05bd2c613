"""The studio's database: one SQLite file in the data folder by default, PostgreSQL when
``--db postgresql://...`` is given. Everything goes through SQLAlchemy Core.

Durability rules (labels and votes are hours of people's work):
- SQLite runs in WAL mode with ``synchronous=FULL``, foreign keys on and a busy timeout.
- Every write happens inside ``db.write()``: one transaction, opened with ``BEGIN IMMEDIATE`` on
  SQLite so two writers never deadlock half-way, committed before the call returns.
- The schema is versioned (``schema_meta.schema_version``). A new database gets the current schema
  and the latest version; an older one is upgraded step by step (``STEPS``); a newer one is refused
  and left untouched.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dreamshot import schema
from dreamshot.errors import SchemaTooNewError, SettingsError
from dreamshot.safety import redact

BUSY_TIMEOUT_MS = 15_000

# Upgrade steps. STEPS[i] takes a database from version i+1 to i+2 and receives an alembic
# ``Operations`` object (``op.add_column``, ``op.create_table``, ... ; use ``op.batch_alter_table``
# for SQLite column changes). Never edit a step that has shipped; append a new one and change
# schema.py to match.


def _step_surveys(op) -> None:
    """Surveys: the placeholder survey_pairs/votes tables (never used) become surveys, pairs,
    participants and one-row-per-answer survey_answers."""
    C, F, I, T, S = sa.Column, sa.Float, sa.Integer, sa.Text, sa.String
    op.drop_index("ix_votes_pair", table_name="votes")
    op.drop_table("votes")
    op.drop_table("survey_pairs")
    op.create_table("surveys", C("id", I, primary_key=True, autoincrement=True),
                    C("name", S(128), nullable=False, unique=True), C("state", S(16), nullable=False),
                    C("per_participant", I, nullable=False), C("intro", T, nullable=False),
                    C("settings", sa.JSON, nullable=False), C("created_by", S(128), nullable=True),
                    C("created_at", F, nullable=False), C("opened_at", F, nullable=True),
                    C("closed_at", F, nullable=True))
    op.create_table("survey_pairs", C("id", I, primary_key=True, autoincrement=True),
                    C("survey_id", I, sa.ForeignKey("surveys.id"), nullable=False),
                    C("position", I, nullable=False), C("shot", S(64), nullable=False),
                    C("caption", T, nullable=False), C("prompt", T, nullable=False),
                    C("frame_id", I, sa.ForeignKey("frames.id", ondelete="SET NULL"), nullable=True),
                    C("seed", sa.BigInteger, nullable=False), C("alpha", F, nullable=False),
                    C("lora_name", S(128), nullable=True), C("status", S(16), nullable=False),
                    C("base_image", T, nullable=True), C("lora_image", T, nullable=True),
                    C("base_parameters", T, nullable=True), C("lora_parameters", T, nullable=True),
                    C("meta", sa.JSON, nullable=False), C("created_at", F, nullable=False),
                    sa.UniqueConstraint("survey_id", "position", name="uq_survey_pairs_position"))
    op.create_table("survey_participants", C("id", I, primary_key=True, autoincrement=True),
                    C("survey_id", I, sa.ForeignKey("surveys.id"), nullable=False),
                    C("token", S(64), nullable=False, unique=True), C("ip_hash", S(64), nullable=False),
                    C("plan", sa.JSON, nullable=False), C("shown_slot", I, nullable=True),
                    C("shown_at", F, nullable=True), C("created_at", F, nullable=False),
                    C("finished_at", F, nullable=True), C("excluded_at", F, nullable=True),
                    C("excluded_by", S(128), nullable=True), C("exclusion_reason", T, nullable=True))
    op.create_index("ix_survey_participants_ip", "survey_participants", ["ip_hash", "created_at"])
    op.create_table("survey_answers", C("id", I, primary_key=True, autoincrement=True),
                    C("participant_id", I, sa.ForeignKey("survey_participants.id"), nullable=False),
                    C("pair_id", I, sa.ForeignKey("survey_pairs.id"), nullable=False),
                    C("round", I, nullable=False), C("slot", I, nullable=False),
                    C("question", S(16), nullable=False), C("answer", S(1), nullable=False),
                    C("lora_side", S(1), nullable=False), C("choice", S(8), nullable=False),
                    C("seconds", F, nullable=True), C("created_at", F, nullable=False),
                    sa.UniqueConstraint("participant_id", "pair_id", "question", "round",
                                        name="uq_survey_answers_once"))
    op.create_index("ix_survey_answers_pair", "survey_answers", ["pair_id"])


STEPS: list[Callable] = []


def _captions_edit_kind(op) -> None:
    """captions.edit_kind: hand vs bulk edits (edits saved before it existed count as hand edits)."""
    with op.batch_alter_table("captions") as batch:
        batch.add_column(sa.Column("edit_kind", sa.String(8), nullable=True))
    op.execute("UPDATE captions SET edit_kind = 'hand' WHERE edited_by IS NOT NULL")


def _loras_kind_method(op) -> None:
    """loras.kind (lora | embedding), loras.method (lora | ti | full | motion) and an embedding's token."""
    with op.batch_alter_table("loras") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="lora"))
        batch.add_column(sa.Column("method", sa.String(16), nullable=False, server_default="lora"))
        batch.add_column(sa.Column("token", sa.String(128), nullable=True))


def _survey_participants_preview(op) -> None:
    """survey_participants.preview: a studio member's try of the survey (kept, not counted). A plain
    ADD COLUMN (no table copy: the answers that reference the participants stay as they are)."""
    op.add_column("survey_participants",
                  sa.Column("preview", sa.Boolean, nullable=False, server_default=sa.false()))


def _label_suggestions(op) -> None:
    """The Label tab's shot-type model: how each label was given (source, queue order, the model's
    prediction at the time) as plain ADD COLUMNs (nullable: rows written before say nothing), the
    frames' CLIP features and the pre-labels."""
    C = sa.Column
    for column in (C("source", sa.String(16), nullable=True), C("queue_order", sa.String(80), nullable=True),
                   C("predicted", sa.String(64), nullable=True), C("confidence", sa.Float, nullable=True),
                   C("model_labels", sa.Integer, nullable=True), C("suggestion_shown", sa.Boolean, nullable=True)):
        op.add_column("labels", column)
    def frame():
        return sa.ForeignKey("frames.id", ondelete="CASCADE")

    op.create_table("frame_features", C("frame_id", sa.Integer, frame(), primary_key=True),
                    C("model", sa.String(64), primary_key=True), C("dim", sa.Integer, nullable=False),
                    C("vector", sa.LargeBinary, nullable=False), C("created_at", sa.Float, nullable=False))
    op.create_table("frame_suggestions", C("frame_id", sa.Integer, frame(), primary_key=True),
                    C("taxonomy", sa.String(64), primary_key=True), C("shot", sa.String(64), nullable=False),
                    C("confidence", sa.Float, nullable=False), C("margin", sa.Float, nullable=False),
                    C("model_labels", sa.Integer, nullable=False), C("created_at", sa.Float, nullable=False))
    op.create_index("ix_frame_suggestions_shot", "frame_suggestions", ["taxonomy", "shot"])


STEPS.append(_captions_edit_kind)
STEPS.append(_step_surveys)
STEPS.append(_loras_kind_method)
STEPS.append(_survey_participants_preview)
STEPS.append(_label_suggestions)
SCHEMA_VERSION = 1 + len(STEPS)


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (``postgres://``, ``postgresql://``) and use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def now() -> float:
    return time.time()


class Database:
    """A migrated database. Build one per process with :func:`open_database` and share it."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"

    # ---- transactions -------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed when the block ends (rolled back on error)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(dreamshot_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only connection (a consistent snapshot per statement group)."""
        with self.engine.connect() as conn:
            yield conn
            conn.rollback()

    # ---- small helpers used across features --------------------------------------------------
    def get_setting(self, key: str, default=None):
        with self.read() as conn:
            value = conn.execute(
                sa.select(schema.project_settings.c.value).where(schema.project_settings.c.key == key)
            ).scalar_one_or_none()
        return default if value is None else value

    def set_setting(self, key: str, value) -> None:
        table = schema.project_settings
        with self.write() as conn:
            updated = conn.execute(
                table.update().where(table.c.key == key).values(value=value, updated_at=now())
            ).rowcount
            if not updated:
                conn.execute(table.insert().values(key=key, value=value, updated_at=now()))

    def schema_version(self) -> int:
        with self.read() as conn:
            return _read_version(conn) or 0

    def dispose(self) -> None:
        self.engine.dispose()


def _install_sqlite_rules(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event below decide how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("dreamshot_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
            pool_pre_ping=False,
        )
        _install_sqlite_rules(engine)
        return engine
    # A server that drops packets is given 10 s, not the operating system's minutes.
    connect_args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=connect_args)


def _read_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table(schema.schema_meta.name):
        return None
    value = conn.execute(
        sa.select(schema.schema_meta.c.value).where(schema.schema_meta.c.key == "schema_version")
    ).scalar_one_or_none()
    return int(value) if value is not None else None


def _write_version(conn: Connection, version: int) -> None:
    table = schema.schema_meta
    conn.execute(table.delete().where(table.c.key == "schema_version"))
    conn.execute(table.insert().values(key="schema_version", value=str(version)))


def migrate(db: Database) -> int:
    """Bring the schema to SCHEMA_VERSION; refuse (untouched) a database from a newer DreamShot."""
    with db.write() as conn:
        version = _read_version(conn)
        if version is None:
            existing = sa.inspect(conn).get_table_names()
            if existing:
                raise SchemaTooNewError(
                    "This database has tables but no DreamShot schema version; it was not made by "
                    "DreamShot studio. Point --db or --data somewhere else."
                )
            schema.metadata.create_all(conn)
            _write_version(conn, SCHEMA_VERSION)
            return SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"This database uses schema version {version}, but this DreamShot only knows up to "
                f"{SCHEMA_VERSION}. Upgrade DreamShot studio; the database was not modified."
            )
        if version < SCHEMA_VERSION:
            from alembic.migration import MigrationContext
            from alembic.operations import Operations

            op = Operations(MigrationContext.configure(conn))
            for step in STEPS[version - 1:]:
                step(op)
            _write_version(conn, SCHEMA_VERSION)
        return SCHEMA_VERSION


def open_database(url: str) -> Database:
    """Connect, apply the durability rules and migrate. Raises SettingsError or SchemaTooNewError."""
    try:
        db = Database(create_engine(url))
        migrate(db)
    except SchemaTooNewError:
        raise
    except sa.exc.SQLAlchemyError as exc:
        parsed = sa.engine.make_url(normalize_url(url))
        safe_url = parsed.render_as_string(hide_password=True)
        # The driver's first line says what is wrong ("password authentication failed for user …",
        # "database … does not exist", "Connection refused"); the password itself is masked.
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        if parsed.password:
            reason = reason.replace(str(parsed.password), "***")
        raise SettingsError(f"Cannot open the database {safe_url}: {exc.__class__.__name__}"
                            + (f" ({redact(reason)})" if reason else "")) from None
    return db


def store_blob(data_dir: Path, folder: str, digest: str, suffix: str, data: bytes) -> str:
    """Write ``data`` once under ``<data>/<folder>/<digest[:2]>/<digest><suffix>`` (content-addressed:
    a file already there is kept; a new one appears whole, via a ``.part`` file and a rename) and
    return its path relative to the data folder, as the database stores it."""
    rel = Path(folder) / digest[:2] / f"{digest}{suffix}"
    target = Path(data_dir) / rel
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(target)
    return rel.as_posix()
