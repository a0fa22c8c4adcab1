"""pgvector HNSW kNN at 100k listings: latency (p50/p95) and recall@10 against exact search.

Synthetic 256-d unit vectors with cluster structure (families of look-alikes, like real
embeddings), in a table shaped like ProductEmbedding's vector column with the same index
(HNSW, m=16, ef_construction=64, vector_cosine_ops). Exact neighbours from NumPy.

usage: .venv/bin/python benchmarks/knn_bench.py [N] [QUERIES]
Uses its own database (catalog_review_bench_knn) on the embedded PostgreSQL; prints JSON lines.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

from benchmarks.harness import connect, drop_database, fresh_database, percentiles

DB = "catalog_review_bench_knn"
DIM, K = 256, 10


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 20, DIM)).astype(np.float32)
    x = centres[rng.integers(len(centres), size=n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vectors", type=int, nargs="?", default=100_000)
    ap.add_argument("queries", type=int, nargs="?", default=300)
    args = ap.parse_args()
    n, queries = args.vectors, args.queries
    from pgvector.psycopg import register_vector

    fresh_database(DB, migrate=False)
    data = vectors(n)
    with connect(DB, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
        register_vector(conn)
        conn.execute(f"CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL, v vector({DIM}))")
        t = time.perf_counter()
        with conn.cursor().copy("COPY items (id, version, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "int4", "vector"])
            for i, v in enumerate(data):
                copy.write_row([i, 1, v])
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(
            "CREATE INDEX items_hnsw ON items USING hnsw (v vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 64)"
        )
        build_s = time.perf_counter() - t
        rng = np.random.default_rng(1)
        query_ids = rng.choice(n, size=queries, replace=False)
        exact = {}
        for q in query_ids:
            sims = data @ data[q]
            sims[q] = -2
            exact[q] = set(np.argpartition(-sims, K)[:K].tolist())
        print(
            json.dumps(
                {
                    "bench": "pgvector hnsw setup",
                    "listings": n,
                    "dim": DIM,
                    "copy_s": round(load_s, 1),
                    "index_build_s": round(build_s, 1),
                    "machine": f"{platform.machine()} cores={os.cpu_count()}",
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
        )
        for ef in (40, 100, 200):
            conn.execute(f"SET hnsw.ef_search = {ef}")
            conn.execute("SET hnsw.iterative_scan = relaxed_order")
            latencies, recalls = [], []
            for q in query_ids:
                t = time.perf_counter()
                rows = conn.execute(
                    "SELECT id FROM items WHERE version = 1 AND id <> %s ORDER BY v <=> %s LIMIT %s",
                    (int(q), data[q], K),
                ).fetchall()
                latencies.append((time.perf_counter() - t) * 1000)
                recalls.append(len(exact[q] & {r[0] for r in rows}) / K)
            plan = conn.execute(
                "EXPLAIN SELECT id FROM items WHERE version = 1 ORDER BY v <=> %s LIMIT 10", (data[0],)
            ).fetchall()
            print(
                json.dumps(
                    {
                        "bench": "pgvector hnsw knn",
                        "ef_search": ef,
                        "k": K,
                        "queries": queries,
                        **percentiles(latencies, digits=2),
                        "recall_at_10": round(float(np.mean(recalls)), 4),
                        "uses_index": any("items_hnsw" in r[0] for r in plan),
                    }
                )
            )
    drop_database(DB)


if __name__ == "__main__":
    main()
