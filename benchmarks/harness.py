"""What the benchmarks share: a database of their own on the embedded PostgreSQL, the app served by
gunicorn, an HTTP client that reads the server's own timing, and percentiles."""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def connect(dbname: str = "postgres", **kwargs):
    """A psycopg connection to the embedded PostgreSQL (started if it is not running)."""
    import psycopg

    from catalog_review import runtime

    params = runtime.ensure_postgres()
    return psycopg.connect(
        host=params.socket_dir, port=params.port, user=params.user, dbname=dbname, **kwargs
    )


def admin_sql(sql: str) -> None:
    with connect(autocommit=True) as conn:
        conn.execute(sql)


def fresh_database(name: str, *, migrate: bool = True, env: dict | None = None) -> None:
    """Drop and create database `name`; with `migrate`, bring it to the project's schema."""
    admin_sql(f"DROP DATABASE IF EXISTS {name}")
    admin_sql(f"CREATE DATABASE {name}")
    if migrate:
        manage("migrate", "-v0", env={"DATABASE_NAME": name} | (env or {}))


def drop_database(name: str) -> None:
    admin_sql(f"DROP DATABASE IF EXISTS {name}")


def manage(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`manage.py ARGS` in a process of its own (settings are read once per process), its output
    captured (text)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=os.environ | (env or {}),
        check=check,
        capture_output=True,
        text=True,
    )


def catalogue_slice(eval_dir: Path, n: int, work: Path) -> Path:
    """The first `n` listings of a catalogue as work/catalogue.jsonl, image paths made absolute (import
    it with --images-root /)."""
    rows = [json.loads(line) for line in open(eval_dir / "catalogue.jsonl")][:n]
    catalogue = work / "catalogue.jsonl"
    with open(catalogue, "w") as fh:
        for row in rows:
            image = str(eval_dir / row["image"]) if row.get("image") else None
            fh.write(json.dumps(row | {"image": image}) + "\n")
    return catalogue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(env: dict, *, workers: int = 4):
    """The app under gunicorn (`workers` processes, preloaded) on a free port: yields (base URL, the
    gunicorn master's Popen) once /login/ answers; stopped on the way out."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "catalog_review.wsgi", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--preload", "--log-level", "warning"],
        cwd=ROOT,
        env=os.environ | env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/login/", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"gunicorn exited with {server.returncode}") from None
                time.sleep(0.3)
        yield base, server
    finally:
        server.terminate()
        server.wait(30)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the redirect surfaces as an HTTPError carrying its Location


class Client:
    """One reviewer's browser session (cookies, CSRF; logged in as `username`), or an API caller with a
    bearer `token`. Redirects are answered, not followed: `location` holds the last one."""

    def __init__(self, base: str, username: str | None = None, password: str = "", token: str | None = None):
        self.base, self.token, self.location = base, token, None
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())
        if username:
            _status, page, _ = self.request("/login/")
            status, _, _ = self.request(
                "/login/", {"username": username, "password": password, "csrfmiddlewaretoken": csrf(page)}
            )
            if status != 302:
                raise RuntimeError(f"could not log in as {username} (HTTP {status})")

    def request(
        self, path: str, data: dict | None = None, htmx: bool = False
    ) -> tuple[int, str, float | None]:
        """(status, body, the server's own milliseconds from its Server-Timing header); `data` POSTs a
        form; `htmx` sends it as the review page does (the answer is the next flag's panel)."""
        headers = {"Referer": self.base + path}
        if htmx:
            headers |= {"HX-Request": "true", "HX-Target": "flag-panel"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(self.base + path, data=body, headers=headers)
        try:
            with self.opener.open(request, timeout=60) as r:
                self.location = r.headers.get("Location")
                return r.status, r.read().decode(), server_ms(r.headers)
        except urllib.error.HTTPError as e:  # a redirect too
            self.location = e.headers.get("Location")
            return e.code, e.read().decode(errors="replace"), server_ms(e.headers)


def server_ms(headers) -> float | None:
    """The app's milliseconds from a response's Server-Timing header (catalog_review.middleware)."""
    m = re.search(r"app;dur=([\d.]+)", headers.get("Server-Timing") or "")
    return float(m[1]) if m else None


def csrf(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def percentiles(ms, digits: int = 1) -> dict:
    """{"p50_ms", "p95_ms"} of a list of milliseconds (None for an empty one)."""
    if not len(ms):
        return {"p50_ms": None, "p95_ms": None}
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), digits) for q in (50, 95)}


def imported_catalogue(
    db: str, eval_dir: Path, n: int, *, redis_db: int, **settings: str
) -> tuple[Path, dict]:
    """A stack of its own for a benchmark: database `db` migrated, the first `n` listings of
    `eval_dir` imported (no score job), a work folder for media and models, the broker on the embedded
    redis's database `redis_db`. Returns (work folder, the environment its processes need, `settings`
    included)."""
    import tempfile

    from catalog_review import runtime

    runtime.ensure_redis()
    fresh_database(db, migrate=False)
    work = Path(tempfile.mkdtemp(prefix=f"{db}-"))
    env = {
        "DATABASE_NAME": db,
        "MEDIA_ROOT": str(work / "media"),
        "MODEL_DIR": str(work / "models"),
        "CELERY_BROKER_URL": runtime.redis_url(redis_db),
        "SCORE_ON_IMPORT": "false",
        **settings,
    }
    manage("migrate", env=env)
    catalogue = catalogue_slice(eval_dir, n, work)
    manage("import_catalogue", str(catalogue), "--images-root", "/", "--no-progress", env=env)
    return work, env


def catalogue_arguments(doc: str, *, listings: int = 1000):
    """`N [EVAL_DIR]` (listings, the catalogue: hm-dev by default) with the script's docstring as --help."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("listings", type=int, nargs="?", default=listings, help=f"default {listings}")
    ap.add_argument("eval_dir", type=Path, nargs="?", default=ROOT.parent / "shared" / "data" / "hm-dev")
    return ap.parse_args()
