"""Scale: every reviewer page, search, the dashboard and the API at a million listings and 100k open
flags, pgvector kNN at that size, and the flag stage's duplicate candidates.

Builds its own database (catalog_review_bench_scale) on the embedded PostgreSQL with bulk COPY:
listings with realistic titles, descriptions and attributes in variation families (sizes 1-8, one in
500 of 20), a 3-level category tree (8 x 6 x 8), the fused, image and title vectors of one model version
(256-d, layered as real embeddings are: listing near its family, family near its product type, type
near its group; no raw descriptors, no images), open flags (2/3
wrong variant, 1/3 duplicate; scores spread over 0.1-1), as many decided flags with their decisions
and labelled pairs, finished jobs, 32 reviewers and an admin with an API token. The HNSW indexes are
dropped for the load and built again with the migration's own definition (timed, sized).

Then, with gunicorn (`--workers`) serving it, `--clients` reviewers work at an open-loop rate (each
decides a flag every 2-4 s: queue page -> next flag -> flag page -> think -> decision, and one other
page or API call per round, in rotation) for `--seconds`; then the same clients without think time
(closed loop) for `--saturation-seconds`, reporting requests per second and where the cores went
(gunicorn, PostgreSQL, this load generator). Latency is read server-side from each response's
`Server-Timing` header (catalog_review.middleware), so the load generator's own share of the two
cores does not count; client-side figures are printed beside it.

kNN: the product page's "More like this" query (selectors.similar_products: HNSW over the active
version's image vectors) for `--knn-queries` listings, p50/p95 and recall@10 against exact search, at
each `--ef-search` value (hnsw.ef_search). Flag stage: services.scoring.knn_candidates (each listing's
neighbours by the fused, image and title vectors, as a score job's flag chunks ask) for a few chunks
of SCORE_CHUNK_LISTINGS: listings per second on one process, and the projected time for the catalogue.

usage: .venv/bin/python benchmarks/scale_bench.py [--listings 1000000] [--flags 100000] [--clients 32]
         [--seconds 120] [--saturation-seconds 30] [--workers 4] [--json OUT] [--keep-db] [--reuse-db]
         [--build-only] [--skip-load]
Prints one table and, with --json, writes {"listings", "flags", "clients", "pages": {NAME: {"p50_ms",
"p95_ms", "errors", ...}}, "knn": {...}, ...}.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT, Client, csrf, drop_database, fresh_database, manage, percentiles, served

DB = "catalog_review_bench_scale"
DIM = 256
PASSWORD = "bench-pw"
GROUPS = ["Ladieswear", "Menswear", "Kids", "Sport", "Home", "Beauty", "Accessories", "Shoes"]
PRODUCT_GROUPS = ["Tops", "Bottoms", "Outerwear", "Basics", "Occasion", "Essentials"]
TYPES = ["Dress", "Shirt", "Sweater", "Trousers", "Jacket", "Skirt", "Top", "Coat"]
ADJECTIVES = ["Relaxed", "Slim", "Oversized", "Classic", "Ribbed", "Cropped", "Linen", "Wool", "Soft",
              "Printed", "Striped", "Denim", "Jersey", "Pleated", "Quilted", "Knitted"]  # fmt: skip
NAMES = ["Ava", "Boris", "Clara", "Dahlia", "Eiffel", "Frida", "Greta", "Hamilton", "Ivy", "Juno", "Kaiser",
         "Lola", "Mona", "Nala", "Oz", "Peacock", "Ruccola", "Tiana", "Ursa", "Zulu"]  # fmt: skip
COLOURS = ["Black", "White", "Dark Blue", "Light Pink", "Beige", "Red", "Greenish Khaki", "Grey", "Off White"]
SIZES = ["XS", "S", "M", "L", "XL"]
WORDS = ["organic", "cotton", "jersey", "buttons", "pockets", "collar", "sleeves", "hem", "waist", "zip",
         "lined", "stretch", "recycled", "viscose", "seam", "cuffs", "hood", "print"]  # fmt: skip
SEARCHES = ["relaxed shirt", "wool coat", "striped", "denim jacket", "linen trousers", "ribbed top"]
MEANINGS = ["a warm winter coat", "summer dress with flowers", "trousers for the office"]


# --- building the database ------------------------------------------------------------------------


def family_sizes(listings: int, rng: random.Random) -> list[int]:
    sizes, total, n = [], 0, 0
    while total < listings:
        size = 20 if n % 500 == 499 else rng.choice([1, 1, 2, 2, 3, 4, 4, 5, 6, 8])
        size = min(size, listings - total)
        sizes.append(size)
        total += size
        n += 1
    return sizes


def copy_rows(cursor, table: str, columns: list[str], rows, types: list[str] | None = None) -> None:
    """Bulk COPY (binary when `types` are given: vectors)."""
    fmt = " WITH (FORMAT BINARY)" if types else ""
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN{fmt}") as copy:
        if types:
            copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def build(args) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone
    from pgvector.psycopg import register_vector
    from psycopg.types.json import Jsonb

    from catalog_review.api import create_token
    from catalog_review.models import Category, Job, ProductEmbedding
    from catalog_review.services.model_versions import zero_shot_version

    rng, nrng = random.Random(0), np.random.default_rng(0)
    timings = {}
    t0 = time.perf_counter()
    root_ids = {}
    leaves = []
    for g in GROUPS:
        top = Category.objects.create(name=g, path=g, depth=1)
        for pg in PRODUCT_GROUPS:
            mid = Category.objects.create(name=pg, path=f"{g} > {pg}", depth=2, parent=top)
            for t in TYPES:
                leaves.append(
                    (Category.objects.create(name=t, path=f"{g} > {pg} > {t}", depth=3, parent=mid), t)
                )
        root_ids[g] = top.pk
    version = zero_shot_version()
    version.is_active = True
    version.activated_at = timezone.now()
    version.save()
    user_model = get_user_model()
    reviewers = [
        user_model.objects.create_user(f"rev{n}", password=PASSWORD) for n in range(max(args.clients, 32))
    ]
    admin = user_model.objects.create_user("admin", password=PASSWORD, is_staff=True, is_superuser=True)
    token = create_token(admin, name="scale bench")
    now = timezone.now()

    sizes = family_sizes(args.listings, rng)
    raw = connection.connection  # the psycopg connection under Django's
    register_vector(raw)
    with connection.cursor() as cursor:
        copy_rows(
            cursor,
            "catalog_review_variationfamily",
            ["id", "code", "created_at"],
            ((f + 1, f"F{f:07d}", now) for f in range(len(sizes))),
        )
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('catalog_review_variationfamily', 'id'), %s)", [len(sizes)]
        )

        family_of, rows = [], []
        for f, size in enumerate(sizes):
            leaf, kind = leaves[f % len(leaves)]
            name, adjective = NAMES[f % len(NAMES)], ADJECTIVES[(f // len(NAMES)) % len(ADJECTIVES)]
            title = f"{name} {adjective} {kind.lower()} {f % 997}"
            description = " ".join(rng.choices(WORDS, k=12)).capitalize() + "."
            for m in range(size):
                family_of.append(f)
                attributes = {"colour": COLOURS[m % len(COLOURS)], "size": SIZES[(m // len(COLOURS)) % 5],
                              "pattern": "Solid" if f % 3 else "Stripe"}  # fmt: skip
                rows.append((title, description, attributes, f + 1, leaf.pk))

        def products():
            for i, (title, description, attributes, family_id, category_id) in enumerate(rows):
                yield (
                    i + 1, f"SKU{i:08d}", title, description, Jsonb(attributes), family_id, category_id,
                    "", "", "", "none", "", now, now,
                )  # fmt: skip

        copy_rows(
            cursor,
            "catalog_review_product",
            ["id", "sku", "title", "description", "attributes", "family_id", "category_id", "image",
             "image_sha256", "image_source", "image_status", "image_error", "created_at", "updated_at"],
            products(),
        )  # fmt: skip
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('catalog_review_product', 'id'), %s)", [len(rows)]
        )
        timings["products_s"] = time.perf_counter() - t0

        # the vectors: one centre per family, each listing near it (fused, image and title views)
        t = time.perf_counter()
        hnsw = [ix for ix in ProductEmbedding._meta.indexes if ix.name.endswith("_hnsw_cosine")]
        for ix in hnsw:
            cursor.execute(f"DROP INDEX IF EXISTS {ix.name}")
        n = len(rows)
        batch = 50_000
        centres_rng = np.random.default_rng(1)
        family_arr = np.array(family_of)
        # real embeddings are layered: a family sits near the other families of its product type, which
        # sit near the other types of their group; so exact neighbours beyond the family are graded, not
        # ties, and recall@10 means something
        leaf_of_family = np.arange(len(sizes)) % len(leaves)
        group_centres = centres_rng.standard_normal((len(GROUPS) * len(PRODUCT_GROUPS), DIM)).astype(
            np.float32
        )
        leaf_centres = group_centres[
            np.arange(len(leaves)) // len(TYPES)
        ] + 0.8 * centres_rng.standard_normal((len(leaves), DIM)).astype(np.float32)
        centres = np.empty((len(sizes), DIM), dtype=np.float32)
        for start in range(0, len(sizes), batch):
            block = np.arange(start, min(start + batch, len(sizes)))
            centres[block] = leaf_centres[leaf_of_family[block]] + 0.7 * centres_rng.standard_normal(
                (len(block), DIM)
            ).astype(np.float32)

        def view(ids, scale):
            x = centres[family_arr[ids]] + scale * nrng.standard_normal((len(ids), DIM)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        def embeddings():
            for start in range(0, n, batch):
                ids = np.arange(start, min(start + batch, n))
                fused, image, title = view(ids, 0.35), view(ids, 0.5), view(ids, 0.3)
                for k, i in enumerate(ids.tolist()):
                    yield (i + 1, version.pk, fused[k], image[k], title[k], Jsonb([]), "", "",
                           rng.random() * 0.05, rng.random() * 0.05, Jsonb({}), now, now)  # fmt: skip

        copy_rows(
            cursor,
            "catalog_review_productembedding",
            ["product_id", "model_version_id", "vector", "image_vector", "title_vector", "attention",
             "title_sha256", "image_sha256", "wrong_variant_score", "duplicate_score", "evidence",
             "created_at", "scored_at"],
            embeddings(),
            types=["int8", "int8", "vector", "vector", "vector", "jsonb", "text", "text", "float8", "float8",
                   "jsonb", "timestamptz", "timestamptz"],
        )  # fmt: skip
        timings["vectors_s"] = time.perf_counter() - t

        # flags: open ones and as many decided, with their decisions and labelled pairs
        t = time.perf_counter()
        members = collections.defaultdict(list)
        for i, f in enumerate(family_of):
            members[f].append(i + 1)
        in_families = [i + 1 for i, f in enumerate(family_of) if sizes[f] > 1]
        big = [p for p in in_families if sizes[family_of[p - 1]] == 20]
        chosen = rng.sample(in_families, min(len(in_families), 2 * args.flags))
        chosen = big[: max(1, len(big) // 4)] + [p for p in chosen if p not in set(big)]
        open_ids, decided_ids = chosen[: args.flags], chosen[args.flags : 2 * args.flags]

        def flag_rows():
            fid = 0
            for status_ids, status in ((open_ids, "open"), (decided_ids, None)):
                for k, p in enumerate(status_ids):
                    fid += 1
                    sibs = [s for s in members[family_of[p - 1]] if s != p]
                    if k % 3 == 2:  # a duplicate: another listing of another family
                        other = rng.randrange(1, n + 1)
                        while family_of[other - 1] == family_of[p - 1]:
                            other = rng.randrange(1, n + 1)
                        kind, counterpart, evidence = "duplicate", other, {"channels": {"title_words": 0.9}}
                    else:
                        kind, counterpart = "wrong_variant", None
                        evidence = {
                            "family_size": len(sibs) + 1,
                            "family_agreement": [
                                {"sku": f"SKU{s - 1:08d}", "p_same_family": round(rng.random(), 2)}
                                for s in sibs
                            ],
                            "lines": [{"channel": "image_unlike_siblings", "strength": 1.2,
                                       "text": f"image unlike its {len(sibs)} siblings' (0.41)"}],
                        }  # fmt: skip
                    yield (fid, kind, p, counterpart, round(rng.uniform(0.1, 1.0), 4), version.pk,
                           status or rng.choice(["confirmed", "rejected"]), Jsonb(evidence), "", "", now,
                           now)  # fmt: skip

        copy_rows(
            cursor,
            "catalog_review_flag",
            ["id", "kind", "product_id", "counterpart_id", "score", "model_version_id", "status", "evidence",
             "heatmap", "fingerprint", "created_at", "updated_at"],
            flag_rows(),
        )  # fmt: skip
        total_flags = len(open_ids) + len(decided_ids)
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('catalog_review_flag', 'id'), %s)", [total_flags]
        )
        copy_rows(
            cursor,
            "catalog_review_reviewdecision",
            ["id", "flag_id", "reviewer_id", "decision", "note", "created_at", "belongs_to_no_family"],
            (
                (k + 1, len(open_ids) + k + 1, reviewers[k % len(reviewers)].pk,
                 rng.choice(["confirm", "reject"]), "", now, False)
                for k in range(len(decided_ids))
            ),
        )  # fmt: skip
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('catalog_review_reviewdecision', 'id'), %s)",
            [max(1, len(decided_ids))],
        )

        def pairs():
            for k, p in enumerate(decided_ids):
                for s in [s for s in members[family_of[p - 1]] if s != p][:2]:
                    yield (p, s, rng.choice(["same_family", "different"]), "review", k + 1, now)

        copy_rows(
            cursor,
            "catalog_review_labelledpair",
            ["a_id", "b_id", "relation", "source", "decision_id", "created_at"],
            pairs(),
        )
        timings["flags_s"] = time.perf_counter() - t

    Job.objects.bulk_create(
        Job(kind=rng.choice(["score", "train"]), status="succeeded", total=100, done=100, counts={})
        for _ in range(200)
    )
    t = time.perf_counter()
    index_report = {}
    from django.db import connection as conn

    with conn.cursor() as cursor:
        # the graph built in memory, by this backend and one helper (two cores): pgvector writes it
        # to disk tuple by tuple, many times slower, once it outgrows maintenance_work_mem (~1.3 GB
        # an index at 1M listings); an operator rebuilding these indexes sets the same
        cursor.execute(f"SET maintenance_work_mem = '{int(args.index_memory_mb)}MB'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")
    with conn.schema_editor() as editor:
        for ix in hnsw:
            started = time.perf_counter()
            editor.add_index(ProductEmbedding, ix)
            index_report[ix.name] = {"build_s": round(time.perf_counter() - started, 1)}
    with conn.cursor() as cursor:
        for name in index_report:
            cursor.execute("SELECT pg_relation_size(%s)", [name])
            index_report[name]["size_mb"] = round(cursor.fetchone()[0] / 2**20, 1)
        cursor.execute("ANALYZE")
    timings["indexes_s"] = time.perf_counter() - t
    return {
        "token": token,
        "open_flags": len(open_ids),
        "decided_flags": len(decided_ids),
        "families": len(sizes),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "indexes": index_report,
    }


# --- the load ---------------------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.server = collections.defaultdict(list)
        self.client = collections.defaultdict(list)
        self.errors = collections.defaultdict(list)
        self.requests = 0

    def timed(self, name: str, call, ok=(200,)):
        started = time.perf_counter()
        try:
            status, body, ms = call()
        except Exception as exc:  # counted and reported
            with self.lock:
                self.errors[name].append(repr(exc)[:100])
                self.requests += 1
            return None, ""
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            self.requests += 1
            self.client[name].append(elapsed)
            if ms is not None:
                self.server[name].append(ms)
            if status not in ok:
                self.errors[name].append(status)
        return status, body

    def table(self) -> dict:
        out = {}
        for name in sorted(set(self.client) | set(self.errors)):
            server, client = np.array(self.server[name]), np.array(self.client[name])
            out[name] = {
                "n": len(client),
                **percentiles(server),
                "client_p95_ms": percentiles(client)["p95_ms"],
                "errors": len(self.errors[name]),
                "error_samples": sorted({str(e) for e in self.errors[name]})[:3],
            }
        return out


def other_pages(setup: dict) -> list[tuple[str, str, bool]]:
    """(name, path, needs the admin) of what a reviewer or admin opens beside the queue, in rotation."""
    q = urllib.parse.quote
    pages = [
        ("flag page (wrong variant, family of 20)", f"/flags/{setup['flag_family_20']}/", False),
        ("flag page (duplicate)", f"/flags/{setup['flag_duplicate']}/", False),
        ("product page + more like this", f"/products/{q(setup['sku'])}/", False),
        ("family page", f"/families/{q(setup['family'])}/", False),
        ("catalogue word search", f"/?q={q(random.choice(SEARCHES))}", False),
        ("catalogue meaning search", f"/?q={q(random.choice(MEANINGS))}&match=meaning", False),
        ("catalogue category filter", f"/?category={setup['category_id']}", False),
        ("dashboard", "/manage/", True),
        ("jobs", "/manage/jobs/", True),
        ("models", "/manage/models/", True),
    ]
    return pages


QUEUE_VARIANTS = [
    ("queue", "/review/"),
    ("queue (wrong variants)", "/review/?kind=wrong_variant"),
    ("queue (duplicates)", "/review/?kind=duplicate"),
    ("queue (most uncertain first)", "/review/?order=uncertain"),
    ("queue (category)", "/review/?category={category_id}"),
    ("queue (family)", "/review/?family={family}"),
    ("queue (score 0.4-0.6)", "/review/?min_score=0.4&max_score=0.6"),
    ("queue (page 200, as Next reaches it)", "/review/?after={deep_cursor}&page=200"),
]


def reviewer_round(client, admin, api, setup, rec: Recorder, rng: random.Random, k: int, think: bool) -> None:
    """One decision: next flag -> flag page -> (think) -> decision. Every 4th round also a queue page (its
    filters and orderings in rotation), every 4th (offset 2) another page (`other_pages`), every 8th an
    API listing at a deep cursor (an integration paging through)."""
    if k % 4 == 0:
        name, path = QUEUE_VARIANTS[(k // 4) % len(QUEUE_VARIANTS)]
        rec.timed(name, lambda: client.request(path.format(**setup)))
    status, _ = rec.timed("next flag", lambda: client.request("/review/next/"), ok=(302,))
    flag_path = urllib.parse.urlparse(client.location or "").path
    if status == 302 and flag_path.startswith("/flags/"):
        status, page = rec.timed("flag page", lambda: client.request(flag_path))
        if think:
            time.sleep(rng.uniform(2.0, 4.0))
        if status == 200 and 'name="csrfmiddlewaretoken"' in page:
            rec.timed(
                "decision",
                lambda: client.request(
                    flag_path + "decide/",
                    {"decision": rng.choice(["confirm", "reject"]), "csrfmiddlewaretoken": csrf(page)},
                    htmx=True,
                ),
            )
    elif think:
        time.sleep(rng.uniform(2.0, 4.0))  # the queue is empty (or the redirect failed: counted)
    if k % 4 == 2:
        pages = other_pages(setup)
        name, path, needs_admin = pages[(k // 4) % len(pages)]
        rec.timed(name, lambda: (admin if needs_admin else client).request(path))
    if k % 8 == 1:
        rec.timed(
            "GET /api/flags (deep cursor)",
            lambda: api.request(f"/api/flags?limit=50&cursor={setup['flags_cursor']}"),
        )
    elif k % 8 == 5:
        rec.timed(
            "GET /api/labels (deep cursor)",
            lambda: api.request(f"/api/labels?limit=100&since={setup['labels_cursor']}"),
        )


def run_clients(base, setup, clients: int, seconds: float, think: bool) -> Recorder:
    rec = Recorder()
    stop = time.monotonic() + seconds

    def worker(n: int) -> None:
        rng = random.Random(n)
        client = Client(base, f"rev{n}", PASSWORD)
        admin = Client(base, "admin", PASSWORD)
        api = Client(base, token=setup["token"])
        k = 4 * n  # each client starts its rotations elsewhere: every page is sampled early
        if think:
            time.sleep(rng.uniform(0, 3.0))  # the reviewers do not start in step
        while time.monotonic() < stop:
            reviewer_round(client, admin, api, setup, rec, rng, k, think)
            k += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rec


def walk(api: Client, path: str, key: str, param: str, steps: int) -> str:
    """The cursor `steps` pages into an API listing (as a client paging that deep holds it)."""
    cursor = ""
    for _ in range(steps):
        status, body, _ = api.request(path + (f"&{param}={cursor}" if cursor else ""))
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body[:200]}")
        data = json.loads(body)
        if not data.get(key):
            break
        cursor = data[key]
    return cursor


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def load_report(args, env: dict, setup: dict, report: dict) -> None:
    """The HTTP phases: reviewers with think time (open loop), then without (closed loop)."""
    with served(env, workers=args.workers) as (base, server):
        api = Client(base, token=setup["token"])
        setup["flags_cursor"] = walk(api, "/api/flags?limit=500", "next_cursor", "cursor", args.flags // 1000)
        setup["labels_cursor"] = walk(
            api, "/api/labels?limit=500", "next_cursor", "since", args.flags // 1000
        )

        # each gunicorn worker loads the title encoder on its first meaning search (a second or two, once
        # per process): concurrent warm-up requests, so that every worker has done it before the clock
        def warm_up() -> None:
            warm = Client(base, "admin", PASSWORD)
            for _ in range(4):
                warm.request("/?q=coat&match=meaning")

        warmers = [threading.Thread(target=warm_up) for _ in range(2 * args.workers)]
        for t in warmers:
            t.start()
        for t in warmers:
            t.join()

        open_loop = run_clients(base, setup, args.clients, args.seconds, think=True)
        report["pages"] = open_loop.table()
        report["open_loop_requests_per_s"] = round(open_loop.requests / args.seconds, 1)

        import psutil

        def busy_seconds() -> float:
            t = psutil.cpu_times()
            return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

        # PostgreSQL's share is the machine's busy time less gunicorn's and this process's: its parallel
        # workers come and go within the phase, so their own counters cannot be summed
        before = {"gunicorn": cpu_seconds([server.pid]), "machine": busy_seconds()}
        me0, wall0 = time.process_time(), time.perf_counter()
        closed = run_clients(base, setup, args.clients, args.saturation_seconds, think=False)
        wall = time.perf_counter() - wall0
        gunicorn = (cpu_seconds([server.pid]) - before["gunicorn"]) / wall
        me = (time.process_time() - me0) / wall
        machine = (busy_seconds() - before["machine"]) / wall
        report["closed_loop"] = {
            "requests_per_s": round(closed.requests / wall, 1),
            "decisions_per_s": round(len(closed.client["decision"]) / wall, 1),
            "errors": sum(len(v) for v in closed.errors.values()),
            "cores_used": {
                "machine": round(machine, 2),
                "gunicorn": round(gunicorn, 2),
                "load_generator": round(me, 2),
                "postgres_and_rest": round(machine - gunicorn - me, 2),
            },
            "pages_p95_ms": {k: v["p95_ms"] for k, v in closed.table().items()},
        }


def knn_report(args, version_id: int) -> dict:
    """The product page's "More like this" (similar_products) against exact search, per ef_search."""
    from django.db import connection, transaction

    from catalog_review.models import Product
    from catalog_review.selectors import similar_products

    rng = random.Random(5)
    ids = rng.sample(range(1, args.listings + 1), args.knn_queries)
    products = {p.pk: p for p in Product.objects.filter(pk__in=ids)}
    exact = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")
        for pid in ids:
            cursor.execute(
                "SELECT e2.product_id FROM catalog_review_productembedding e1, "
                "catalog_review_productembedding e2 "
                "WHERE e1.product_id = %s AND e1.model_version_id = %s AND e2.model_version_id = %s "
                "AND e2.product_id <> %s ORDER BY e2.image_vector <=> e1.image_vector LIMIT 10",
                [pid, version_id, version_id, pid],
            )
            exact[pid] = {r[0] for r in cursor.fetchall()}
    for pid in ids:  # once untimed: the index pages in memory, as on a server that has been serving
        similar_products(product=products[pid], by="image", limit=10)
    # every ef_search value in turn for each query, `--knn-repeats` times: no value is favoured by a
    # cache the one before it warmed
    times = {ef: [] for ef in args.ef_search}
    hits = dict.fromkeys(args.ef_search, 0)
    for round_ in range(args.knn_repeats):
        for pid in ids:
            for ef in args.ef_search:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute("SET LOCAL hnsw.ef_search = %s", [ef])
                    started = time.perf_counter()
                    found = similar_products(product=products[pid], by="image", limit=10)
                    times[ef].append((time.perf_counter() - started) * 1000)
                if round_ == 0:
                    hits[ef] += len({p.pk for p in found} & exact[pid])
    return {
        str(ef): {**percentiles(times[ef]), "recall_at_10": round(hits[ef] / (10 * len(ids)), 4)}
        for ef in args.ef_search
    }


def flag_stage_report(args, version_id: int) -> dict:
    """services.scoring.knn_candidates over chunks of SCORE_CHUNK_LISTINGS: listings per second."""
    from django.conf import settings
    from django.db import transaction

    from catalog_review.services.scoring import knn_candidates

    size = settings.SCORE_CHUNK_LISTINGS
    rng = random.Random(6)
    times = []
    for _ in range(args.flag_chunks):
        start = rng.randrange(1, max(2, args.listings - size))
        ids = list(range(start, start + size))
        started = time.perf_counter()
        with transaction.atomic():
            knn_candidates(version_id, ids, settings.DUPLICATE_NEIGHBOURS)
        times.append(time.perf_counter() - started)
    per_s = size * len(times) / sum(times)
    return {
        "chunk_listings": size,
        "chunks": len(times),
        "listings_per_s": round(per_s, 1),
        "projected_catalogue_min": round(args.listings / per_s / 60, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listings", type=int, default=1_000_000)
    ap.add_argument("--flags", type=int, default=100_000, help="open flags (as many decided ones)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=120, help="the open-loop phase (reviewers thinking)")
    ap.add_argument("--saturation-seconds", type=float, default=30, help="the closed-loop phase")
    ap.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    ap.add_argument("--knn-queries", type=int, default=50)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[40, 100, 200])
    ap.add_argument("--knn-repeats", type=int, default=3, help="timings per query and ef_search value")
    ap.add_argument("--skip-load", action="store_true", help="only kNN and the flag stage (no HTTP phases)")
    ap.add_argument("--flag-chunks", type=int, default=4)
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--keep-db", action="store_true", help="leave the database (for EXPLAIN, or --reuse-db)")
    ap.add_argument("--reuse-db", action="store_true", help="measure the database a --keep-db run left")
    ap.add_argument("--build-only", action="store_true", help="build the database, keep it, measure nothing")
    ap.add_argument(
        "--index-memory-mb", type=int, default=4096, help="maintenance_work_mem for the HNSW builds"
    )
    args = ap.parse_args()

    env = {
        "DATABASE_NAME": DB,
        "SCORE_ON_IMPORT": "false",
        "RESCORE_FAMILY_ON_CONFIRM": "false",  # no workers here: nothing left in the broker
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOGIN_FAILURE_LIMIT": "100000",
    }
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_review.settings")
    started = time.perf_counter()
    if args.reuse_db:
        manage("migrate", "-v0")  # the code may have moved on since the database was built
    else:
        fresh_database(DB)
    import django

    django.setup()
    from django.conf import settings

    from catalog_review.models import Flag, ModelVersion, Product
    from catalog_review.pagination import flag_cursor

    if args.reuse_db:
        built = json.loads((ROOT / "var" / f"{DB}.json").read_text())
    else:
        built = build(args)
        (ROOT / "var" / f"{DB}.json").write_text(json.dumps(built))
        if args.build_only:
            print(f"built {DB}: {json.dumps(built)}")
            return
    build_s = time.perf_counter() - started
    version = ModelVersion.objects.get(is_active=True)
    big_family = Flag.objects.filter(status="open", kind="wrong_variant", evidence__family_size=20).first()
    setup = {
        "token": built["token"],
        "flag_family_20": big_family.pk,
        "flag_duplicate": Flag.objects.filter(status="open", kind="duplicate").first().pk,
        "sku": Product.objects.get(pk=args.listings // 2).sku,
        "family": Product.objects.get(pk=args.listings // 2).family.code,
        "category_id": Product.objects.get(pk=args.listings // 3).category.parent_id,
        # the cursor the queue's Next link carries on page 199 (the last flag of that page)
        "deep_cursor": flag_cursor(
            Flag.objects.filter(status="open").order_by("-score", "id")[199 * settings.REVIEW_PAGE_SIZE - 1],
            "-score",
        ),
    }
    report = {
        "bench": "scale",
        "listings": args.listings,
        "flags": built["open_flags"],
        "decided_flags": built["decided_flags"],
        "families": built["families"],
        "clients": args.clients,
        "gunicorn_workers": args.workers,
        "build": {"total_s": round(build_s, 1), **built["timings"], "indexes": built["indexes"]},
        "machine": f"{platform.machine()} cores={os.cpu_count()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    if not args.skip_load:
        load_report(args, env, setup, report)
    report["knn"] = knn_report(args, version.pk)
    report["flag_stage"] = flag_stage_report(args, version.pk)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if not args.keep_db:
        from django.db import connections

        connections.close_all()
        drop_database(DB)


def print_table(report: dict) -> None:
    if "pages" not in report:  # --skip-load
        print(f"knn (product page, by image): {json.dumps(report['knn'])}")
        print(f"flag stage candidates: {json.dumps(report['flag_stage'])}")
        return
    print(f"scale bench: {report['listings']:,} listings, {report['flags']:,} open flags, "
          f"{report['clients']} "
          f"reviewers, {report['machine']}, {report['date']}")  # fmt: skip
    print(f"build: {json.dumps(report['build'])}")
    print(f"{'page':44} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'client p95':>11} {'errors':>7}")
    for name, row in report["pages"].items():
        print(f"{name:44} {row['n']:6d} {row['p50_ms']!s:>8} {row['p95_ms']!s:>8} "
              f"{row['client_p95_ms']!s:>11} {row['errors']:7d}")  # fmt: skip
    print(f"open loop: {report['open_loop_requests_per_s']} requests/s")
    print(f"closed loop: {json.dumps(report['closed_loop'])}")
    print(f"knn (product page, by image): {json.dumps(report['knn'])}")
    print(f"flag stage candidates: {json.dumps(report['flag_stage'])}")


if __name__ == "__main__":
    main()
