"""Recovering the work of a worker that died (DESIGN 10: a worker killed mid-task: its work is redone
within minutes, never twice).

Score-job chunks and train jobs are claimed by the worker running them (its Celery node name, in
`JobChunk.claimed_by` / `Job.claimed_by`). A worker killed outright (`kill -9`, a lost machine) leaves
its task unacknowledged at the broker until the visibility timeout (an hour): too long. The reaper, a
beat task every REAPER_INTERVAL_S, asks the workers to answer (a broadcast ping) and re-publishes the
chunks and train jobs held by one that did not, once their claim is REAPER_GRACE_S old (a train job:
its heartbeat, which a live training renews every step). Releasing a claim is a compare-and-set on the
claim the reaper saw, so two reapers release once; a chunk redone is idempotent (marked done with its
results), and a train job is claimed again by exactly one delivery (`services.jobs.job_claim_run`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from catalog_review import dispatch
from catalog_review.celery import app
from catalog_review.models import Job, JobChunk

log = logging.getLogger(__name__)


def live_workers() -> set[str] | None:
    """Node names of the workers that answer a ping now; None when the broker cannot be asked."""

    try:
        replies = app.control.ping(timeout=settings.REAPER_PING_TIMEOUT_S) or []
    except Exception as exc:  # the broker is down: nothing can be re-published anyway
        log.warning("reaper: cannot ping the workers: %s", exc)
        return None
    return {name for reply in replies for name in reply}


def _publish_chunk(chunk: JobChunk) -> None:
    dispatch.enqueue_chunks(chunk.stage, [chunk.pk])


STAGE_ORDER = (JobChunk.Stage.FIT, JobChunk.Stage.EMBED, JobChunk.Stage.FLAG)


def _current_stage(job_id: int) -> list[JobChunk]:
    """The undone chunks of the job's earliest unfinished stage (a later stage's chunks wait for it)."""
    undone = list(
        JobChunk.objects.filter(job_id=job_id, done_at__isnull=True).only("pk", "stage", "claimed_by")
    )
    for stage in STAGE_ORDER:
        chunks = [c for c in undone if c.stage == stage]
        if chunks:
            return chunks
    return []


def reap_stalled_work(*, live: set[str] | None = None) -> dict[str, int]:
    """Re-publish the work held by workers that no longer answer. `live`: the node names that answer
    (default: ask them). Returns how many chunks and train jobs were re-published."""
    grace = timezone.now() - timedelta(seconds=settings.REAPER_GRACE_S)
    chunks = list(
        JobChunk.objects.filter(done_at__isnull=True, job__status=Job.Status.RUNNING, claimed_at__lt=grace)
        .exclude(claimed_by="")
        .only("pk", "stage", "claimed_by", "claimed_at")
    )
    trains = list(
        Job.objects.filter(kind=Job.Kind.TRAIN, status=Job.Status.RUNNING)
        .exclude(claimed_by="")
        .filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=grace))
        .only("pk", "claimed_by", "heartbeat_at")
    )
    # a dead worker also held messages it had not started (prefetched, unacknowledged): their chunks are
    # unclaimed, and the job stops making progress. Re-publishing an unclaimed chunk is harmless (a
    # delivery of a chunk done, or claimed, or of a stage not reached yet does nothing), once per grace
    # period of a job without progress.
    stalled = list(
        Job.objects.filter(kind=Job.Kind.SCORE, status=Job.Status.RUNNING)
        .filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=grace))
        .values_list("pk", "heartbeat_at")
    )
    reaped = {"chunks": 0, "train_jobs": 0, "unclaimed_chunks": 0}
    for job_id, heartbeat in stalled:
        if not Job.objects.filter(pk=job_id, heartbeat_at=heartbeat).update(heartbeat_at=timezone.now()):
            continue  # progress meanwhile, or another reaper
        for chunk in _current_stage(job_id):
            if not chunk.claimed_by:
                _publish_chunk(chunk)
                reaped["unclaimed_chunks"] += 1
    if not chunks and not trains:
        return reaped
    live = live_workers() if live is None else live
    if live is None:
        return reaped
    for chunk in chunks:
        if chunk.claimed_by in live:
            continue
        released = JobChunk.objects.filter(
            pk=chunk.pk, done_at__isnull=True, claimed_by=chunk.claimed_by, claimed_at=chunk.claimed_at
        ).update(claimed_by="", claimed_at=None)
        if released:
            log.warning(
                "reaper: %s was held by %s, which does not answer: re-published", chunk, chunk.claimed_by
            )
            _publish_chunk(chunk)
            reaped["chunks"] += 1
    for job in trains:
        if job.claimed_by in live:
            continue
        released = Job.objects.filter(
            pk=job.pk, status=Job.Status.RUNNING, claimed_by=job.claimed_by, heartbeat_at=job.heartbeat_at
        ).update(claimed_by="", heartbeat_at=None)
        if released:
            log.warning(
                "reaper: train job %s was held by %s, which does not answer: re-published",
                job.pk,
                job.claimed_by,
            )
            dispatch.enqueue(dispatch.TRAIN_VERSION, job_id=job.pk)
            reaped["train_jobs"] += 1
    return reaped
