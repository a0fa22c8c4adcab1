"""Review pages under load: p50/p95 of the queue page, the flag page and a decision POST at 100k
listings / 10k open flags with 16 concurrent reviewers (goal: p95 <= 150 ms).

Builds its own database (catalog_review_bench_review) on the embedded PostgreSQL: 100,000 listings in
25,000 families (4 each) over 50 categories, 10,000 open wrong_variant flags with evidence, 16
reviewer accounts; serves it with gunicorn (`--workers` processes, default 4); 16 client threads
(urllib, one session each) loop: queue page -> next flag (claims it; its redirect is read, not
followed, not timed) -> flag page -> decision POST (confirm or reject, with the page's CSRF token) sent
as the review page sends it, by htmx: the answer is the next flag's panel, rendered in place (the
first version of this script posted without htmx and followed the redirect to a whole next-flag
page). Prints JSON lines.

usage: .venv/bin/python benchmarks/review_bench.py [--seconds 60] [--clients 16] [--workers 4]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB = "catalog_review_bench_review"
LISTINGS, FAMILY_SIZE, FLAGS, CATEGORIES = 100_000, 4, 10_000, 50


def build(env: dict) -> None:
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_review.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from catalog_review.models import Category, Flag, ModelVersion, Product, VariationFamily

    root = Category.objects.create(name="Shop", path="Shop", depth=1)
    categories = Category.objects.bulk_create(
        Category(name=f"Aisle {i}", path=f"Shop > Aisle {i}", depth=2, parent=root) for i in range(CATEGORIES)
    )
    families = VariationFamily.objects.bulk_create(
        VariationFamily(code=f"FAM{i:06d}") for i in range(LISTINGS // FAMILY_SIZE)
    )
    rng = random.Random(0)
    Product.objects.bulk_create(
        (
            Product(
                sku=f"SKU{i:07d}",
                title=f"Product {i // FAMILY_SIZE} in colour {i % FAMILY_SIZE}",
                family=families[i // FAMILY_SIZE],
                category=categories[(i // FAMILY_SIZE) % CATEGORIES],
                attributes={"colour": f"c{i % FAMILY_SIZE}"},
            )
            for i in range(LISTINGS)
        ),
        batch_size=5000,
    )
    version = ModelVersion.objects.create(name="bench", is_active=True)
    flagged = rng.sample(range(LISTINGS), FLAGS)
    ids = dict(Product.objects.filter(sku__in=[f"SKU{i:07d}" for i in flagged]).values_list("sku", "pk"))
    Flag.objects.bulk_create(
        (
            Flag(
                kind=Flag.Kind.WRONG_VARIANT,
                product_id=ids[f"SKU{i:07d}"],
                score=rng.uniform(0.7, 1.0),
                model_version=version,
                evidence={
                    "agrees_with": 0,
                    "family_size": FAMILY_SIZE,
                    "family_agreement": [
                        {"sku": f"SKU{i // FAMILY_SIZE * FAMILY_SIZE + k:07d}", "p_same_family": 0.2}
                        for k in range(FAMILY_SIZE)
                        if i // FAMILY_SIZE * FAMILY_SIZE + k != i
                    ],
                },
            )
            for i in flagged
        ),
        batch_size=5000,
    )
    user_model = get_user_model()
    for n in range(32):
        user_model.objects.create_user(f"rev{n}", password="bench-pw")
    from django.db import connection

    with connection.cursor() as cursor:  # as the import and score jobs do when they finish
        cursor.execute("ANALYZE")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the 302 surfaces as an HTTPError carrying its Location


class Client:
    def __init__(self, base: str, username: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.no_redirect = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )
        page = self.get("/login/")
        self.post(
            "/login/", {"username": username, "password": "bench-pw", "csrfmiddlewaretoken": csrf(page)}
        )

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as r:
            return r.read().decode()

    def location(self, path: str) -> str:
        """The path a redirecting GET points at (not followed)."""
        try:
            with self.no_redirect.open(self.base + path, timeout=30) as r:
                raise RuntimeError(f"{path} answered {r.status}, not a redirect")
        except urllib.error.HTTPError as e:
            if e.code not in (301, 302, 303):
                raise
            return urllib.parse.urlparse(e.headers["Location"]).path

    def post(self, path: str, data: dict, htmx: bool = False) -> tuple[int, str]:
        headers = {"Referer": self.base + path}
        if htmx:  # as the review page posts it: the answer is the next flag's panel, in place
            headers |= {"HX-Request": "true", "HX-Target": "flag-panel"}
        request = urllib.request.Request(
            self.base + path, data=urllib.parse.urlencode(data).encode(), headers=headers
        )
        try:
            with self.opener.open(request, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def csrf(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--keep-db", action="store_true", help="leave the database for EXPLAIN afterwards")
    args = ap.parse_args()
    from catalog_review import runtime

    params = runtime.ensure_postgres()
    import psycopg

    with psycopg.connect(
        host=params.socket_dir, port=params.port, user=params.user, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    env = {
        "DATABASE_NAME": DB,
        "SCORE_ON_IMPORT": "false",
        "RESCORE_FAMILY_ON_CONFIRM": "false",  # no workers here: no re-score tasks left in the broker
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=os.environ | env, check=True
    )
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.argv=['x']; from benchmarks.review_bench import build; build({env!r})",
        ],
        cwd=ROOT,
        env=os.environ | env,
        check=True,
    )
    build_s = time.perf_counter() - t
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "catalog_review.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=os.environ | env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/login/", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        timings = {"queue": [], "flag": [], "decide": []}
        errors = []
        lock = threading.Lock()
        stop = time.monotonic() + args.seconds

        def reviewer(n: int) -> None:
            client = Client(base, f"rev{n}")
            rng = random.Random(n)
            while time.monotonic() < stop:
                try:
                    t0 = time.perf_counter()
                    client.get(f"/review/?page={rng.randint(1, 5)}")
                    t1 = time.perf_counter()
                    flag_path = client.location("/review/next/")  # claims it
                    t2 = time.perf_counter()
                    page = client.get(flag_path)
                    t3 = time.perf_counter()
                    status, _ = client.post(
                        flag_path + "decide/",
                        {"decision": rng.choice(["confirm", "reject"]), "csrfmiddlewaretoken": csrf(page)},
                        htmx=True,
                    )
                    t4 = time.perf_counter()
                    with lock:
                        timings["queue"].append(t1 - t0)
                        timings["flag"].append(t3 - t2)
                        timings["decide"].append(t4 - t3)
                        if status >= 400:
                            errors.append(status)
                except Exception as exc:  # counted, reported
                    with lock:
                        errors.append(repr(exc)[:80])

        threads = [threading.Thread(target=reviewer, args=(n,)) for n in range(args.clients)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        # the load generator shares the two cores with gunicorn and PostgreSQL: how much it took
        client_cpu_share = (time.process_time() - cpu0) / (
            (time.perf_counter() - wall0) * (os.cpu_count() or 1)
        )
    finally:
        server.terminate()
        server.wait(20)
    report = {
        "bench": "review pages under load",
        "listings": LISTINGS,
        "open_flags_at_start": FLAGS,
        "clients": args.clients,
        "gunicorn_workers": args.workers,
        "seconds": args.seconds,
        "build_s": round(build_s, 1),
        "client_cpu_share": round(client_cpu_share, 3),
        "errors": len(errors),
        "error_samples": sorted({str(e) for e in errors})[:5],
        "machine": f"{platform.machine()} cores={os.cpu_count()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    for name, values in timings.items():
        ms = np.array(values) * 1000
        report[name] = {
            "n": len(ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        }
    print(json.dumps(report))
    if args.keep_db:
        return
    with psycopg.connect(
        host=params.socket_dir, port=params.port, user=params.user, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")


if __name__ == "__main__":
    main()
