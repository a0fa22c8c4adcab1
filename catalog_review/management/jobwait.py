"""Shared by the commands that start background jobs: is a worker there, and --wait with a bar."""

from __future__ import annotations

import sys
import time

from django.core.management.base import CommandError
from tqdm import tqdm

from catalog_review.celery import app
from catalog_review.models import Job


def workers_on(queue: str, timeout: float = 2.0) -> list[str]:
    """Names of the Celery workers consuming `queue` (empty when none answers)."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return [name for name, queues in replies.items() if any(q["name"] == queue for q in queues)]


def require_worker(queue: str) -> None:
    if not workers_on(queue):
        raise CommandError(
            f"no Celery worker is consuming the {queue!r} queue, so the job would never run. Start one "
            "with `python manage.py stack --no-web` (or `celery -A catalog_review worker -Q default,gpu`) "
            "and run this again, or leave out --wait to just queue the job."
        )


def wait_for_job(job: Job, *, desc: str, no_progress: bool = False, poll_s: float = 0.5) -> Job:
    """Follow the job with a progress bar until it ends; raise CommandError when it failed."""
    bar = tqdm(total=max(job.total, 1), desc=desc, unit="item", disable=no_progress or None, file=sys.stderr)
    try:
        while True:
            job.refresh_from_db()
            bar.total = max(job.total, 1)
            bar.n = min(job.done + job.failed, bar.total) if not job.is_finished else bar.total
            if job.phase and not job.is_finished:
                bar.set_postfix_str(job.phase)
            bar.refresh()
            if job.is_finished:
                break
            time.sleep(poll_s)
    finally:
        bar.close()
    if job.status != Job.Status.SUCCEEDED:
        raise CommandError(f"job #{job.pk} {job.status}: {job.error or 'no error recorded'}")
    return job
