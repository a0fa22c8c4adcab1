"""Fault drills (DESIGN 10): with a score job running on hm-dev listings, kill -9 the gpu worker, then
the default worker, then restart PostgreSQL, then redis-server; each time the component comes back at
once. Measured: the seconds from the component's return to the job's end, and after each drill that
every listing has exactly one embedding for the version, the job counted every listing once, and the
reviewer decision and labels made before the drills are all there.

The workers run as `manage.py stack` runs them (one `gpu` process; a `default` worker with beat, so the
reaper of `services.recovery` runs every REAPER_INTERVAL_S).

usage: .venv/bin/python benchmarks/fault_drill.py [N_LISTINGS] [HM_DEV_DIR]
Own database (catalog_review_fault_drill), media dir and redis db; prints a JSON line per drill.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time

from benchmarks.harness import ROOT, catalogue_arguments, connect, imported_catalogue, manage

DB = "catalog_review_fault_drill"
REDIS_DB = 4
JOB_TIMEOUT_S = 900


def main() -> None:
    args = catalogue_arguments(__doc__)
    n, hm_dev = args.listings, args.eval_dir
    import psycopg

    from catalog_review import runtime

    work, env = imported_catalogue(
        DB,
        hm_dev,
        n,
        redis_db=REDIS_DB,
        SCORE_CHUNK_LISTINGS="50",
        REAPER_INTERVAL_S="10",
        REAPER_GRACE_S="20",
        DATABASE_CONN_MAX_AGE="0",
    )

    def query(sql: str, *args):
        """One query on a fresh connection (the server may have been restarted meanwhile)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with connect(DB, connect_timeout=5) as conn:
                    return conn.execute(sql, args).fetchall()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    from catalog_review.management.commands.stack import worker_command

    log_dir = work / "logs"
    log_dir.mkdir()

    def start(queue: str) -> subprocess.Popen:
        return subprocess.Popen(
            worker_command(
                concurrency=1 if queue == "gpu" else 2,
                queues=queue,
                hostname=f"drill-{queue}-{time.monotonic_ns()}@%h",
                beat=queue == "default",
            ),
            cwd=ROOT,
            env=os.environ | env,
            stdout=open(log_dir / f"{queue}.log", "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    workers = {"gpu": start("gpu"), "default": start("default")}
    try:
        time.sleep(10)
        # a first score (creates the zero-shot version), then a reviewer decision and its labels
        manage("score", "--wait", "--no-progress", env=env)
        manage("create_demo_users", env=env)
        decided = _decide_one(env)
        labels_before = query("SELECT count(*) FROM catalog_review_labelledpair")[0][0]

        def kill(queue: str):
            os.killpg(workers[queue].pid, signal.SIGKILL)
            workers[queue].wait(10)
            workers[queue] = start(queue)

        drills = [
            ("kill -9 gpu worker", "embed", lambda: kill("gpu")),
            ("kill -9 default worker", "flag", lambda: kill("default")),
            ("restart PostgreSQL", "embed", lambda: (runtime.stop_postgres(), runtime.ensure_postgres())),
            ("restart redis-server", "embed", lambda: (runtime.stop_redis(), runtime.ensure_redis())),
        ]
        for name, stage, fault in drills:
            before = query("SELECT coalesce(max(id), 0) FROM catalog_review_job")[0][0]
            scorer = subprocess.Popen(
                [sys.executable, "manage.py", "score", "--no-progress"],
                cwd=ROOT,
                env=os.environ | env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            scorer.wait(120)
            job_id = query("SELECT max(id) FROM catalog_review_job WHERE kind = 'score' AND id > %s", before)
            job_id = job_id[0][0]
            _wait(
                lambda j=job_id, st=stage: _chunks_done(query, j, st) > 0,
                JOB_TIMEOUT_S,
                f"a first {stage} chunk",
            )
            fault()
            back = time.monotonic()
            status = _wait(lambda j=job_id: _finished(query, j), JOB_TIMEOUT_S, f"job {job_id} to finish")
            recovered_s = time.monotonic() - back
            (total, done, error) = query(
                "SELECT total, done, error FROM catalog_review_job WHERE id = %s", job_id
            )[0]
            version = query("SELECT id FROM catalog_review_modelversion WHERE is_active")[0][0]
            products = query("SELECT count(*) FROM catalog_review_product")[0][0]
            embeddings, distinct = query(
                "SELECT count(*), count(DISTINCT product_id) FROM catalog_review_productembedding "
                "WHERE model_version_id = %s",
                version,
            )[0]
            undone = query(
                "SELECT count(*) FROM catalog_review_jobchunk WHERE job_id = %s AND done_at IS NULL", job_id
            )[0][0]
            decision_kept = bool(query("SELECT 1 FROM catalog_review_reviewdecision WHERE id = %s", decided))
            labels = query("SELECT count(*) FROM catalog_review_labelledpair")[0][0]
            print(
                json.dumps(
                    {
                        "bench": "fault drill",
                        "fault": name,
                        "during": f"{stage} stage",
                        "listings": products,
                        "status": status,
                        "error": error[:200],
                        "recovered_s": round(recovered_s, 1),
                        "job_done_of_total": f"{done}/{total}",
                        "one_embedding_per_listing": embeddings == distinct == products,
                        "undone_chunks": undone,
                        "decision_and_labels_kept": decision_kept and labels == labels_before,
                        "machine": f"{platform.machine()} cores={os.cpu_count()}",
                        "date": time.strftime("%Y-%m-%d"),
                    }
                ),
                flush=True,
            )
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers.values():
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)


def _chunks_done(query, job_id: int, stage: str) -> int:
    return query(
        "SELECT count(*) FROM catalog_review_jobchunk "
        "WHERE job_id = %s AND stage = %s AND done_at IS NOT NULL",
        job_id,
        stage,
    )[0][0]


def _finished(query, job_id: int) -> str | None:
    status = query("SELECT status FROM catalog_review_job WHERE id = %s", job_id)[0][0]
    return status if status in ("succeeded", "failed", "cancelled") else None


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def _decide_one(env: dict) -> int:
    """Confirm the top open flag as the demo reviewer (through the service, as the page does)."""
    code = (
        "from catalog_review.models import Flag; from django.contrib.auth import get_user_model;"
        "from catalog_review.services import review;"
        "f = Flag.objects.filter(status='open').order_by('-score').first();"
        "u = get_user_model().objects.get(username='reviewer');"
        "print(review.decide(flag_id=f.pk, user=u, decision='confirm').decision.pk)"
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=os.environ | env,
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
