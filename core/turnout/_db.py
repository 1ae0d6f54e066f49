"""Engines, transactions and schema checks for the registry database.

SQLite (the default) runs in WAL mode with a busy timeout, and every write transaction starts
with ``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of failing with
"database is locked" when one upgrades a read lock. PostgreSQL runs through psycopg 3. Errors
from the driver are translated here into :mod:`turnout.errors`, never leaked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

from turnout import _settings
from turnout.errors import (
    DatabaseNotMigratedError,
    RegistryNotFoundError,
    RegistryUnavailableError,
    UsageError,
)

DEFAULT_DATABASE_URL = "sqlite:///registry.db"
DATABASE_URL_ENV = "TURNOUT_DATABASE_URL"

SCHEMA_HEAD = "0010"
"""The newest migration this code needs; a test keeps it equal to Alembic's head."""

log = logging.getLogger("turnout.db")

SQLITE_BUSY_TIMEOUT_MS = 30_000
WAL_LIMIT_ENV = "TURNOUT_SQLITE_WAL_LIMIT_MB"
DEFAULT_WAL_LIMIT_MB = 16
"""Past this size a SQLite registry's WAL file is checkpointed and truncated (see _WalLimit)."""
WAL_LOOK_EVERY = 32
"""Transactions (connections given back to the pool) between two looks at the WAL's size:
busy writers write the WAL at tens of MB a second, so a look every few milliseconds."""
READ_ONLY = {"turnout_read_only": True}
"""Execution options for a connection that only reads: on SQLite it begins DEFERRED."""


def database_url(value: str | None = None) -> URL:
    """Turn ``--db`` / ``TURNOUT_DATABASE_URL`` into a SQLAlchemy URL.

    A value with ``://`` is a URL (``postgresql://`` means psycopg 3); anything else is the path
    of a SQLite file. ``None`` falls back to the environment variable, then ``registry.db``.
    """
    text = value or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        url = make_url(text)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise UsageError(f"cannot read the database URL {text!r}; {_URLS}") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(f"turnout keeps its registry in SQLite or PostgreSQL; {_URLS}")
    return url


_URLS = "give a SQLite file path, sqlite:///PATH or postgresql://USER@HOST/DATABASE"


def display_url(url: URL) -> str:
    """The URL with any password hidden, for messages and logs."""
    return url.render_as_string(hide_password=True)


def create_engine(url: URL) -> Engine:
    """Create an engine with turnout's settings for the URL's database."""
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    if url.database and not url.database.startswith("file:") and url.database != ":memory:":
        limit = _settings.number(WAL_LIMIT_ENV, DEFAULT_WAL_LIMIT_MB, unit="MB")
        event.listen(engine, "checkin", _WalLimit(f"{url.database}-wal", int(limit * (1 << 20))))
    return engine


class _WalLimit:
    """Keep a SQLite registry's WAL file bounded while processes use it without a pause.

    SQLite's automatic checkpoint copies the WAL into the database after each 1,000 pages,
    but it starts the WAL over only at a moment when no reader is using it. Two runners and a
    replay that never pause leave no such moment, and the WAL grows without end (by tens of
    MB a minute). So every :data:`WAL_LOOK_EVERY`-th connection given back to the pool looks at
    the WAL's size and, past ``TURNOUT_SQLITE_WAL_LIMIT_MB`` (default 16), runs a ``TRUNCATE``
    checkpoint: it waits (within the busy timeout) for the readers of the WAL to finish,
    holding new writers back meanwhile, copies the rest and empties the file.
    """

    def __init__(self, wal: str, limit: int) -> None:
        self._wal = wal
        self._limit = limit
        self._given_back = 0

    def __call__(self, dbapi_connection: Any, _record: Any) -> None:
        self._given_back += 1
        if self._given_back % WAL_LOOK_EVERY or dbapi_connection is None:
            return
        try:
            size = os.stat(self._wal).st_size
        except OSError:
            return
        if size <= self._limit:
            return
        try:
            busy, frames, copied = dbapi_connection.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)"
            ).fetchone()
        except sqlite3.Error:  # the next look tries again; nothing is lost
            log.warning("checkpoint of %s failed; trying again later", self._wal, exc_info=True)
            return
        log.info(
            "checkpointed %s at %d MB: %s",
            self._wal,
            size >> 20,
            "busy, trying again later" if busy else f"{copied} of {frames} pages copied",
        )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event instead of pysqlite's own
    # implicit BEGIN, which is always DEFERRED.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable against a crash of the process in WAL mode; only a power loss
        # can drop the last commits, and releasers are idempotent per key by contract.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    read_only = conn.get_execution_options().get("turnout_read_only", False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@contextlib.contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Turn driver errors into turnout errors that say which database failed and why."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        message = str(exc.orig) if exc.orig is not None else str(exc)
        if "no such table" in message or "does not exist" in message:
            raise DatabaseNotMigratedError(display_url(url), None, SCHEMA_HEAD) from exc
        raise RegistryUnavailableError(
            f"registry {display_url(url)} is unavailable: {message.strip()}{_hint(message)}"
        ) from exc
    except sa.exc.ProgrammingError as exc:
        message = str(exc.orig) if exc.orig is not None else str(exc)
        if "does not exist" in message:
            raise DatabaseNotMigratedError(display_url(url), None, SCHEMA_HEAD) from exc
        raise RegistryUnavailableError(
            f"registry {display_url(url)} refused a query: {message.strip()}"
        ) from exc
    except sa.exc.DBAPIError as exc:
        message = str(exc.orig).strip()
        if "file is not a database" in message:
            raise RegistryNotFoundError(
                display_url(url), "the file is not a SQLite database; point --db at the registry"
            ) from exc
        raise RegistryUnavailableError(
            f"registry {display_url(url)} failed: {message}{_hint(message)}"
        ) from exc


_HINTS = (
    (
        "readonly database",
        "make the database file, its folder and its -wal and -shm files writable for this user",
    ),
    ("disk is full", "free space on the disk that holds the database and its -wal file"),
    (
        "read-only transaction",
        "the server takes no writes (a standby, or default_transaction_read_only is on): "
        "point the URL at the primary",
    ),
    ("No space left on device", "free space on the database server's disk"),
)
"""What to do about a driver error that says the database cannot be written."""


def _hint(message: str) -> str:
    return next((f" ({fix})" for known, fix in _HINTS if known in message), "")


@contextlib.contextmanager
def reader(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only (on SQLite its transactions begin DEFERRED)."""
    with translate_errors(engine.url), engine.connect() as conn:
        yield conn.execution_options(**READ_ONLY)


_A_FOLDER = "it is a folder; point --db at the registry's file in it (e.g. registry.db)"


def _sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite registry given by path (not ``:memory:`` or a ``file:`` URI)."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else Path(database)


def current_revision(conn: Connection) -> str | None:
    """The Alembic revision the database is at, or ``None`` when it was never migrated."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def check_schema(engine: Engine) -> None:
    """Refuse to work on a database that is not at :data:`SCHEMA_HEAD`.

    Raises:
        RegistryNotFoundError: A SQLite path holds no registry (it is not created here).
        DatabaseNotMigratedError: The database lags (or is ahead of) the code.
    """
    path = _sqlite_file(engine.url)
    if path is not None and not path.is_file():
        # Connecting would create an empty file, and the next command would find it.
        raise RegistryNotFoundError(
            str(path),
            _A_FOLDER
            if path.is_dir()
            else f"no such file; create it with: turnout --db {path} db upgrade",
        )
    with reader(engine) as conn:
        current = current_revision(conn)
    if current != SCHEMA_HEAD:
        raise DatabaseNotMigratedError(display_url(engine.url), current, SCHEMA_HEAD)


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "turnout:migrations")
    config.attributes["connection"] = conn
    return config


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply the migrations shipped in the package; return the revisions before and after."""
    from alembic import command

    path = _sqlite_file(engine.url)
    if path is not None:
        if path.is_dir():
            raise RegistryNotFoundError(str(path), _A_FOLDER)
        path.parent.mkdir(parents=True, exist_ok=True)
    with translate_errors(engine.url), engine.begin() as conn:
        before = current_revision(conn)
        command.upgrade(_alembic_config(conn), revision)
        after = current_revision(conn)
    return before, after


def alembic_head() -> str:
    """Alembic's head revision for the shipped migrations (imports Alembic: not for hot paths)."""
    from alembic.script import ScriptDirectory

    config = _alembic_config(None)  # type: ignore[arg-type]
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None  # noqa: S101 - the package always ships migrations
    return head
