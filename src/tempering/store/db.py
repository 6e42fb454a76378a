"""Database engine, sessions and migrations.

SQLite (a file under ``TEMPERING_HOME``) by default, PostgreSQL by URL. SQLite is opened in WAL mode
(readers never block the writer) with a busy timeout, across the server and the worker processes. A job
claim is a single ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) … RETURNING`` (see
``jobs.queue``), atomic on both. Alembic migrations run once at start-up, forward only.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x7E4E_0001  # the advisory lock that serialises migrations on PostgreSQL (any fixed bigint)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = url.split(":///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is deferred)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection):
            # A deferred transaction that reads and then writes fails at once ("database is locked") if
            # another process committed in between (WAL snapshots cannot be upgraded); a session that will
            # write asks for the write lock up front instead, and waits for it.
            immediate = connection.get_execution_options().get("sqlite_immediate", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # A server and its workers starting together would all find no ``alembic_version`` and all
            # create the tables (one wins, the others fail). DDL is transactional on PostgreSQL: whoever
            # waits here finds the schema current once the lock is granted, and does nothing.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    """An engine and its session factory; ``session()`` is a unit of work that commits on success."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def session(self, *, write: bool = True):
        """A unit of work that commits on success. ``write`` (the default) takes SQLite's write lock when
        the transaction begins; read-only work passes ``write=False`` and never blocks writers."""
        with self._sessions() as session, session.begin():
            if write and self.url.startswith("sqlite"):
                session.connection(execution_options={"sqlite_immediate": True})
            yield session

    def new_session(self) -> Session:
        return self._sessions()

    def dispose(self) -> None:
        self.engine.dispose()
