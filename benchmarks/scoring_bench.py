"""Embedding throughput: the whole pipeline (score job through Celery, chunks of families, features,
model, upsert into pgvector) against the bare backbone forward pass, measured in the same run.

1. bare: the same listings straight from disk: image decode + preprocessing + EfficientNet-Lite0 +
   MiniLM (ml_worker.features.extract_features, one view, no cache) and the model heads;
2. pipeline: `manage.py score --wait` with a real `gpu` worker (one process, as `stack` runs it) and a
   `default` worker; embed stage = job start to the last embed chunk's commit; flag stage after it.

usage: .venv/bin/python benchmarks/scoring_bench.py [N_LISTINGS] [HM_DEV_DIR]
Own database (catalog_review_bench_score), media dir and redis db; prints JSON lines.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time

from benchmarks.harness import ROOT, catalogue_arguments, connect, drop_database, imported_catalogue, manage

DB = "catalog_review_bench_score"


def main() -> None:
    args = catalogue_arguments(__doc__)
    n, hm_dev = args.listings, args.eval_dir
    work, env = imported_catalogue(DB, hm_dev, n, redis_db=3)
    catalogue = work / "catalogue.jsonl"

    # 1. bare forward pass, in this process (same core count as the gpu worker)
    import torch

    from ml_worker.catalogue import load_catalogue
    from ml_worker.config import MapsConfig
    from ml_worker.features import extract_features, load_backbones
    from ml_worker.zero_shot import ZeroShotModel

    listings = load_catalogue(catalogue)
    config = MapsConfig()
    load_backbones(config.image_weights, config.text_model_dir, config.max_tokens, "cpu")  # warm
    t = time.perf_counter()
    features = extract_features(listings, config, progress=False, training=False)
    with torch.no_grad():
        model = ZeroShotModel(config)
        for start in range(0, len(listings), 256):
            model(features.inputs(torch.arange(start, min(start + 256, len(listings)))))
    bare_s = time.perf_counter() - t

    # 2. the pipeline, through real workers
    from catalog_review.management.commands.stack import worker_command

    workers = [
        subprocess.Popen(
            worker_command(concurrency=c, queues=q, hostname=f"bench-{q}@%h"),
            cwd=ROOT,
            env=os.environ | env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for q, c in (("gpu", 1), ("default", 2))
    ]
    try:
        time.sleep(8)
        t = time.perf_counter()
        manage("score", "--wait", "--no-progress", env=env)
        pipeline_s = time.perf_counter() - t
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
    with connect(DB) as conn:
        job_start, embed_end, flag_end = conn.execute(
            """SELECT j.started_at, max(c.done_at) FILTER (WHERE c.stage = 'embed'),
                      max(c.done_at) FILTER (WHERE c.stage = 'flag')
               FROM catalog_review_job j JOIN catalog_review_jobchunk c ON c.job_id = j.id
               WHERE j.kind = 'score' GROUP BY j.id"""
        ).fetchone()
    embed_s = (embed_end - job_start).total_seconds()
    flag_s = (flag_end - embed_end).total_seconds()
    print(
        json.dumps(
            {
                "bench": "embedding throughput",
                "listings": len(listings),
                "bare_forward_s": round(bare_s, 1),
                "bare_listings_per_s": round(len(listings) / bare_s, 1),
                "pipeline_embed_s": round(embed_s, 1),
                "pipeline_listings_per_s": round(len(listings) / embed_s, 1),
                "pipeline_overhead": round(embed_s / bare_s - 1, 3),
                "flag_stage_s": round(flag_s, 1),
                "score_command_s": round(pipeline_s, 1),
                "torch_threads": torch.get_num_threads(),
                "machine": f"{platform.machine()} cores={os.cpu_count()}",
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    )
    drop_database(DB)


if __name__ == "__main__":
    main()
