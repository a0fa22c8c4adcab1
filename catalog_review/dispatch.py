"""Enqueueing work. A service names the task it wants run and this module sends it (Celery routes it
to its queue by name, settings.CELERY_TASK_ROUTES); the task modules (tasks.py, gpu_tasks.py) import
the services they run, never the other way round, so no import has to hide inside a function.

Enqueue after the transaction that made the work commits (`transaction.on_commit`): a worker must find
the rows the message names."""

from __future__ import annotations

from catalog_review.celery import app

FIT_SCORER_CHUNK = "catalog_review.gpu_tasks.fit_scorer_chunk"
EMBED_CHUNK = "catalog_review.gpu_tasks.embed_chunk"
TRAIN_VERSION = "catalog_review.gpu_tasks.train_version"
FLAG_CHUNK = "catalog_review.tasks.flag_chunk"
FETCH_PRODUCT_IMAGE = "catalog_review.tasks.fetch_product_image"
RESCORE_FAMILY = "catalog_review.tasks.rescore_family"

# the task of each stage of a score job (JobChunk.Stage)
CHUNK_TASKS = {"fit": FIT_SCORER_CHUNK, "embed": EMBED_CHUNK, "flag": FLAG_CHUNK}


def enqueue(task: str, **kwargs) -> None:
    """Send `task` (one of the names above) with these keyword arguments."""
    app.send_task(task, kwargs=kwargs)


def enqueue_chunks(stage: str, chunk_ids) -> None:
    """One message per chunk of a score job's stage."""
    for chunk_id in chunk_ids:
        enqueue(CHUNK_TASKS[stage], chunk_id=chunk_id)
