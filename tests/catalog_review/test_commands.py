"""The `stack`, `services` and `demo` commands."""

import os
import signal
import subprocess
import sys

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection

from catalog_review.celery import app as celery_app
from catalog_review.models import Product, VariationFamily
from catalog_review.runtime import PROJECT_ROOT
from catalog_review.services.model_versions import active_version
from tests.conftest import wait_for


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_stack_runs_a_worker_and_stops_everything_it_started_on_sigterm(broker_url, media_root):
    env = os.environ | {
        "DATABASE_NAME": connection.settings_dict["NAME"],
        "CELERY_BROKER_URL": broker_url,
        "MEDIA_ROOT": str(media_root),
    }
    stack = subprocess.Popen(
        [sys.executable, "manage.py", "stack", "--no-web", "--concurrency", "1"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def stack_workers_answer():  # its own workers (gpu@ and default@), not the test session's
            names = [name for reply in celery_app.control.ping(timeout=0.5) or [] for name in reply]
            return {"gpu", "default"} <= {name.split("@")[0] for name in names}

        wait_for(stack_workers_answer, timeout=60, message="the stack's workers")
        children = psutil.Process(stack.pid).children(recursive=True)
        assert sum("celery" in " ".join(c.cmdline()) and "-Q" in c.cmdline() for c in children) >= 2
        stack.send_signal(signal.SIGTERM)
        output, _ = stack.communicate(timeout=30)
    finally:
        if stack.poll() is None:
            stack.kill()
    assert stack.returncode == 0, output
    assert "stopping" in output
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_services_status_names_both_services(capsys):
    call_command("services", "status")
    out = capsys.readouterr().out
    assert "postgres: running" in out and "redis:" in out


@pytest.mark.django_db
def test_demo_setup_creates_accounts_and_imports_the_sample_catalogue(capsys):
    call_command("demo", setup_only=True)
    out = capsys.readouterr().out
    assert "reviewer  password: review-demo" in out and "admin     password: admin-demo" in out
    users = {u.username: u for u in get_user_model().objects.all()}
    assert not users["reviewer"].is_staff and users["admin"].is_staff
    assert users["reviewer"].check_password("review-demo")
    assert Product.objects.count() == 83 and VariationFamily.objects.count() == 44
    call_command("demo", setup_only=True)  # a second run is harmless
    assert Product.objects.count() == 83


def test_the_wsgi_module_loads_the_views_so_preloaded_workers_answer_at_once():
    """gunicorn --preload imports `catalog_review.wsgi` in the master before forking: the views (and
    torch with them) must be imported there, not on each worker's first request."""
    probe = "import sys, catalog_review.wsgi; print('catalog_review.views' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip().endswith("True"), result.stderr[-2000:]


WARM_PROBE = """
import os, threading
import catalog_review.wsgi
from catalog_review.services import model_versions
from ml_worker.query import text_encoder

pid = os.fork()  # as gunicorn forks a worker from the preloaded master
if pid == 0:
    warming = [t for t in threading.enumerate() if t.name == "warm-meaning-search"]
    for t in warming:
        t.join(180)
    print("worker", len(warming), text_encoder.cache_info().currsize, len(model_versions._loaded), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("master", text_encoder.cache_info().currsize, len(model_versions._loaded), flush=True)
"""


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("warm", [True, False])
def test_each_web_worker_loads_the_search_by_meaning_as_it_starts_not_on_the_first_search(warm):
    """The title encoder and the active version, loaded in a forked worker's background thread (never
    in the master: torch used before a fork can hang the children); WEB_WARM_MEANING_SEARCH=false turns
    it off."""
    active_version()
    result = subprocess.run(
        [sys.executable, "-c", WARM_PROBE],
        cwd=PROJECT_ROOT,
        env=os.environ
        | {"DATABASE_NAME": connection.settings_dict["NAME"], "WEB_WARM_MEANING_SEARCH": str(warm).lower()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.split("\n")
    assert ("worker 1 1 1" if warm else "worker 0 0 0") in lines, result.stdout + result.stderr[-3000:]
    assert "master 0 0" in lines, "the master loads nothing"


@pytest.mark.django_db(transaction=True)
def test_a_command_on_a_database_never_migrated_says_to_migrate_in_one_line(tmp_path):
    name = f"never_migrated_{os.getpid()}"
    path = tmp_path / "c.jsonl"
    path.write_text('{"sku": "a", "title": "A"}\n')
    try:
        result = subprocess.run(
            [sys.executable, "manage.py", "import_catalogue", str(path), "--no-progress"],
            cwd=PROJECT_ROOT,
            env=os.environ | {"DATABASE_NAME": name},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
    assert result.returncode == 1
    assert "run `python manage.py migrate` first" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_services_stop_names_the_app_processes_that_would_start_them_again():
    from catalog_review.management.commands.services import _app_processes

    web = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "gunicorn", "catalog_review.wsgi"],
        cwd=PROJECT_ROOT,
    )
    try:
        assert web.pid in _app_processes()
    finally:
        web.kill()
        web.wait()
    assert web.pid not in _app_processes()
