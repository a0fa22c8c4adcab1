"""Job rows under re-delivery: a long task delivered twice runs once; a killed worker's job is taken
over; every task has a time limit."""

from datetime import timedelta

import pytest
from django.utils import timezone

from catalog_review.celery import app as celery_app
from catalog_review.models import Job, ModelVersion
from catalog_review.services.jobs import job_claim_run, job_create
from catalog_review.services.training import train_run

pytestmark = pytest.mark.django_db


def test_a_job_is_claimed_once_until_its_heartbeat_goes_stale(settings):
    settings.JOB_HEARTBEAT_STALE_S = 600
    job = job_create(kind=Job.Kind.TRAIN)
    assert job_claim_run(job_id=job.pk), "a queued job is taken"
    started = Job.objects.get(pk=job.pk).started_at
    assert not job_claim_run(job_id=job.pk), "a second delivery while the first reports progress"
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=601))
    assert job_claim_run(job_id=job.pk), "the worker went silent (killed): taken over"
    assert Job.objects.get(pk=job.pk).started_at == started
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)
    assert not job_claim_run(job_id=job.pk), "a finished job is never run again"


def test_a_train_job_delivered_twice_trains_once():
    job = job_create(kind=Job.Kind.TRAIN, status=Job.Status.RUNNING)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now())
    assert train_run(job.pk) == "running in another worker"
    assert not ModelVersion.objects.exists()
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.error == ""


def test_every_task_has_a_soft_and_a_hard_time_limit(settings):
    conf = celery_app.conf
    assert conf.task_soft_time_limit == settings.TASK_SOFT_TIME_LIMIT_S
    assert conf.task_time_limit == settings.TASK_SOFT_TIME_LIMIT_S + 60
    from catalog_review.gpu_tasks import train_version

    celery_app.finalize()
    train = celery_app.tasks[train_version.name]
    assert (train.soft_time_limit, train.time_limit) == (
        settings.TRAIN_SOFT_TIME_LIMIT_S,
        settings.TRAIN_SOFT_TIME_LIMIT_S + 60,
    )


def test_a_transient_database_error_in_a_chunk_releases_it_for_a_retry_and_fails_nothing():
    """The database (or the broker) gone for a moment: the chunk is released and retried (Celery
    `retry`, 2-30 s apart), the job is not failed."""
    from django.db import OperationalError

    from catalog_review.models import JobChunk
    from catalog_review.tasks import _run_chunk, flag_chunk

    job = job_create(kind=Job.Kind.SCORE, status=Job.Status.RUNNING)
    chunk = JobChunk.objects.create(
        job=job, stage=JobChunk.Stage.FLAG, index=0, claimed_by="", claimed_at=None
    )

    def run(chunk_id, worker=""):
        JobChunk.objects.filter(pk=chunk_id).update(claimed_by=worker, claimed_at=timezone.now())
        raise OperationalError("server closed the connection unexpectedly")

    with pytest.raises(OperationalError):  # (outside a worker Celery re-raises instead of re-queueing)
        _run_chunk(flag_chunk, run, chunk.pk)
    chunk.refresh_from_db()
    job.refresh_from_db()
    assert chunk.claimed_by == "" and chunk.claimed_at is None, "released for the retry"
    assert job.status == Job.Status.RUNNING and job.error == ""

    def broken(chunk_id, worker=""):
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        _run_chunk(flag_chunk, broken, chunk.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "ValueError: a bug" in job.error


def test_every_task_a_service_enqueues_by_name_is_registered_on_its_queue():
    """Services enqueue by name (catalog_review.dispatch) and never import the task modules: each name
    must be a task the workers know, routed to the queue of its module."""
    from catalog_review import dispatch

    celery_app.finalize()
    names = [value for key, value in vars(dispatch).items() if key.isupper() and isinstance(value, str)]
    assert len(names) == 6 and all(name in celery_app.tasks for name in names), names
    router = celery_app.amqp.router
    for name in names:
        queue = router.route({}, name)["queue"].name
        assert queue == ("gpu" if ".gpu_tasks." in name else "default"), (name, queue)
