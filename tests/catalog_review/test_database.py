"""The embedded PostgreSQL + pgvector: extensions, schema, the HNSW index, service reuse."""

import os
import random

import pytest
from django.db import connection
from pgvector.django import CosineDistance

from catalog_review import runtime
from catalog_review.models import EMBEDDING_DIM, ModelVersion, ProductEmbedding
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def test_server_is_postgres_18_with_pgvector():
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version_num")
        assert int(cursor.fetchone()[0]) >= 180000
        cursor.execute("SELECT extname FROM pg_extension ORDER BY extname")
        assert {"vector", "pg_trgm"} <= {row[0] for row in cursor.fetchall()}


def test_hnsw_index_serves_knn_queries():
    version = ModelVersion.objects.create(name="zero-shot", is_active=True)
    rng = random.Random(0)
    ProductEmbedding.objects.bulk_create(
        ProductEmbedding(
            product=ProductFactory(),
            model_version=version,
            vector=[rng.gauss(0, 1) for _ in range(EMBEDDING_DIM)],
        )
        for _ in range(30)
    )
    query_vector = [rng.gauss(0, 1) for _ in range(EMBEDDING_DIM)]
    knn = ProductEmbedding.objects.order_by(CosineDistance("vector", query_vector))[:5]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # tiny table: make the planner show its index choice
        sql, params = knn.query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "Index Scan using embedding_vector_hnsw_cosine" in plan, plan
        knn = list(knn)  # run it with the same planner settings
    exact = sorted(
        ProductEmbedding.objects.annotate(d=CosineDistance("vector", query_vector)),
        key=lambda e: e.d,
    )[:5]
    assert [e.pk for e in knn] == [e.pk for e in exact]


def test_services_are_reused_not_started_twice():
    first = runtime.ensure_postgres()
    pid = runtime._running_postmaster().pid
    assert runtime.ensure_postgres() == first and runtime._running_postmaster().pid == pid
    runtime.ensure_redis()
    redis_pid = (runtime.REDIS_DIR / "redis.pid").read_text().strip()
    runtime.ensure_redis()
    assert (runtime.REDIS_DIR / "redis.pid").read_text().strip() == redis_pid


def test_one_active_model_version_at_a_time():
    from django.db import IntegrityError, transaction

    ModelVersion.objects.create(name="v1", is_active=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(name="v2", is_active=True)


def test_a_half_written_pid_file_reads_as_starting_not_a_crash(tmp_path):
    """Another process's server is starting: its postmaster.pid holds only its first lines yet."""
    assert runtime._postmaster(tmp_path) == (None, "absent")
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n")
    info, state = runtime._postmaster(tmp_path)
    assert state == "starting"
    (tmp_path / "postmaster.pid").write_text("")
    assert runtime._postmaster(tmp_path)[1] in ("starting", "absent")
    info, state = runtime._postmaster(runtime.PGDATA)  # the test session's own server
    assert state == "ready" and info.port


def _plan(queryset, *off: str) -> str:
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        for scan in ("seqscan", *off):  # a tiny table: make the planner show the index it can use
            cursor.execute(f"SET LOCAL enable_{scan} = off")
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_the_queue_and_search_queries_match_their_indexes():
    """The pages' expressions and the indexes' must stay one and the same (benchmarks/scale_bench.py: at
    200k listings the uncertain ordering 36 -> 4 ms, a search's count 135 -> 26 ms)."""
    from catalog_review.models import Category, Flag, Product
    from catalog_review.selectors import flag_queue

    version = ModelVersion.objects.create(name="v")
    for k in range(20):
        Flag.objects.create(
            kind="wrong_variant", product=ProductFactory(), score=k / 20, model_version=version
        )
    assert "flag_open_uncertainty" in _plan(flag_queue(order="uncertain")[:50])
    search = _plan(Product.objects.search("Relaxed shirt"), "indexscan")  # (as at scale: a BitmapOr)
    assert "product_sku_upper" in search and "product_title_trgm" in search
    shop = Category.objects.create(name="Shop", path="Shop", depth=1)
    Category.objects.create(name="Tops", path="Shop > Tops", depth=2, parent=shop)
    sql = str(Product.objects.in_category(shop).query)
    assert 'category_id" IN (' in sql and "path" not in sql, "the tree's ids, no join per listing"
    queue = str(flag_queue(category=shop).query)
    assert '"catalog_review_flag"."category_id" IN (' in queue and "U0" not in queue, "no listing probed"
    # the labels feed after a cursor: read in (txid, id) order from its index, never sorted
    from django.db.models import Q

    from catalog_review.models import LabelledPair

    feed = LabelledPair.objects.filter(Q(txid__gt=5) | Q(txid=5, id__gt=9)).order_by("txid", "id")[:100]
    plan = _plan(feed, "sort", "bitmapscan")
    assert "labelledpair_feed_order" in plan and "Sort" not in plan


def test_a_flag_carries_its_listings_category_and_follows_it_when_the_listing_moves():
    """Flag.category is kept by the database (migration 0012's triggers), whatever writes the rows."""
    from catalog_review.models import Category, Flag, Product

    shoes = Category.objects.create(name="Shoes", path="Shoes", depth=1)
    bags = Category.objects.create(name="Bags", path="Bags", depth=1)
    version = ModelVersion.objects.create(name="v")
    product = ProductFactory(category=shoes)
    flag = Flag.objects.create(kind="wrong_variant", product=product, score=0.9, model_version=version)
    assert Flag.objects.get(pk=flag.pk).category_id == shoes.pk  # set on insert
    product.category = bags
    product.save()
    assert Flag.objects.get(pk=flag.pk).category_id == bags.pk  # followed on save
    Product.objects.filter(pk=product.pk).update(category=None)
    assert Flag.objects.get(pk=flag.pk).category_id is None  # and on a bulk update
    Product.objects.bulk_update([Product(pk=product.pk, category=shoes)], ["category"])
    assert Flag.objects.get(pk=flag.pk).category_id == shoes.pk
    flag.score = 0.8
    flag.save()  # a full save of a stale instance does not undo it
    assert Flag.objects.get(pk=flag.pk).category_id == shoes.pk


def test_with_database_pool_max_size_each_process_draws_connections_from_a_pool():
    """DATABASE_POOL_MAX_SIZE turns on Django's psycopg pool (through the embedded server's backend
    too): a process of its own with the setting runs queries on pooled connections."""
    import subprocess
    import sys

    code = (
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "assert connection.settings_dict['CONN_MAX_AGE'] == 0\n"
        "with connection.cursor() as c: c.execute('SELECT 41 + 1'); answer = c.fetchone()[0]\n"
        "print(answer, type(connection.pool).__name__, connection.pool.max_size)\n"
    )
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "catalog_review.settings",
        "DATABASE_NAME": connection.settings_dict["NAME"],
        "DATABASE_POOL_MAX_SIZE": "3",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["42", "ConnectionPool", "3"]
