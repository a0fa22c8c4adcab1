"""The Celery app. Queues: `gpu` (embedding, attention maps, training) and `default` (import, flagging,
export). Tasks are routed by module (settings.CELERY_TASK_ROUTES)."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_review.settings")

app = Celery("catalog_review")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("gpu"))
app.autodiscover_tasks(["catalog_review"])
app.autodiscover_tasks(["catalog_review"], related_name="gpu_tasks")


@app.on_after_configure.connect
def _start_embedded_redis(sender, **kwargs):
    """With no CELERY_BROKER_URL the embedded redis-server is the broker: start it on first use."""
    from django.conf import settings

    if settings.EMBEDDED_REDIS:
        from catalog_review import runtime

        runtime.ensure_redis()
