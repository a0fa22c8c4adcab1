"""Shared fixtures. Everything real: the embedded PostgreSQL+pgvector (pytest-django creates the test
database on it), the embedded redis-server, a real Celery worker process, headless Chromium."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from PIL import Image

from catalog_review import runtime
from catalog_review.celery import app as celery_app
from catalog_review.management.commands.stack import worker_command
from tests.factories import UserFactory

ARTIFACTS = runtime.PROJECT_ROOT / "test-artifacts"
TEST_REDIS_DB = 1  # keeps test messages apart from a demo running on the same embedded redis


@pytest.fixture(scope="session", autouse=True)
def media_root(tmp_path_factory) -> Path:
    """One media directory per test session, shared with the worker process."""
    root = tmp_path_factory.mktemp("media")
    settings.MEDIA_ROOT = root
    settings.MODEL_DIR = root.parent / "models"
    settings.MODEL_STORE_DIR = root.parent / "model-store"
    settings.STORAGES["models"]["OPTIONS"]["location"] = str(settings.MODEL_STORE_DIR)  # before first use
    settings.FEATURE_CACHE_DIR = root.parent / "feature-cache"
    # a confirmed wrong variant publishes a re-score task: only tests with a worker (and its broker)
    # switch it on, so no test without one leaves tasks behind
    settings.RESCORE_FAMILY_ON_CONFIRM = False
    return root


@pytest.fixture
def reviewer(db):
    return UserFactory(username="reviewer")


@pytest.fixture
def admin_user(db):
    return UserFactory(username="admin", is_staff=True, is_superuser=True)


@pytest.fixture
def outsider(db):
    """Not logged in: the anonymous client."""
    return None


@pytest.fixture
def reviewer_client(client, reviewer):
    client.force_login(reviewer)
    return client


def jpeg_bytes(size=(64, 48), colour=(200, 30, 30), quality=90) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(size=(32, 32), colour=(10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def broker_url() -> str:
    if settings.EMBEDDED_REDIS:
        runtime.ensure_redis()
        url = runtime.redis_url(TEST_REDIS_DB)
    else:
        url = settings.CELERY_BROKER_URL
    celery_app.conf.broker_url = url
    return url


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, broker_url, media_root) -> dict:
    """The environment of the tests' worker processes: the test database, media, broker."""
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    return os.environ | {
        "DATABASE_NAME": database,
        "MEDIA_ROOT": str(media_root),
        "MODEL_DIR": str(settings.MODEL_DIR),
        "MODEL_STORE_DIR": str(settings.MODEL_STORE_DIR),
        "FEATURE_CACHE_DIR": str(settings.FEATURE_CACHE_DIR),
        "CELERY_BROKER_URL": broker_url,
        "IMAGE_FETCH_TIMEOUT_S": "3",
        "IMAGE_FETCH_ALLOWED_HOSTS": "127.0.0.1",  # the tests' image server
        "IMAGE_FETCH_MAX_RETRIES": "1",
        "IMAGE_MAX_BYTES": str(200_000),
        "DATABASE_CONN_MAX_AGE": "0",
        "TRAIN_STEPS": "2",  # a train job that does not say how many steps (from scratch / warm)
        "TRAIN_WARM_STEPS": "1",
    }


def start_worker(env: dict, name: str, log_path, *, concurrency: int = 2) -> tuple[subprocess.Popen, str]:
    """A `celery worker` process (both queues) named `name`@host; returns it once it answers a ping,
    with its full node name."""
    log = open(log_path, "w")
    process = subprocess.Popen(
        worker_command(concurrency=concurrency, hostname=f"{name}@%h"),
        cwd=runtime.PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a test can kill it and its pool at once
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"celery worker exited with {process.returncode}: see {log.name}")
        replies = celery_app.control.ping(timeout=1.0) or []
        names = [node for reply in replies for node in reply if node.startswith(f"{name}@")]
        if names:
            return process, names[0]
    process.kill()
    raise RuntimeError(f"celery worker did not answer a ping within 60 s: see {log.name}")


@pytest.fixture(scope="session")
def celery_worker(worker_env, media_root):
    """A real `celery worker` process over real Redis, using the test database."""
    celery_app.control.purge()
    process, node = start_worker(worker_env, f"test-{os.getpid()}", media_root.parent / "worker.log")
    process.node = node
    yield process
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for(predicate, *, timeout: float = 30, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
