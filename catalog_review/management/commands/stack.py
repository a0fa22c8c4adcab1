"""python manage.py stack [--no-web]: services + Celery workers (+ the web server), in the foreground.

Ctrl-C or SIGTERM stops everything this command started, embedded services included (services
that were already running when it started are left running).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from catalog_review import runtime


class Command(BaseCommand):
    help = "Run the embedded services, Celery workers (gpu queue: one process; default) and the web server."

    def add_arguments(self, parser):
        parser.add_argument("--no-web", action="store_true", help="services and worker only")
        parser.add_argument(
            "--bind", default="127.0.0.1:8000", help="web server address (default %(default)s)"
        )
        parser.add_argument("--web-workers", type=int, default=3, help="gunicorn worker processes")
        parser.add_argument(
            "--concurrency", type=int, default=2, help="Celery worker processes for the default queue"
        )
        parser.add_argument("--no-migrate", action="store_true", help="do not apply migrations first")

    def handle(
        self, *args, no_web: bool, bind: str, web_workers: int, concurrency: int, no_migrate: bool, **options
    ):
        started_services = start_embedded_services()
        if not no_migrate:
            call_command("migrate", interactive=False, verbosity=0)
        children: list[subprocess.Popen] = []
        stopping = False

        def stop(signum=None, frame=None):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            # the gpu queue gets its own single-process worker (the model and backbones use every core,
            # or the GPU); the default queue (flags, downloads, exports) runs beside it
            for queues, processes in (("gpu", 1), ("default", concurrency)):
                children.append(
                    subprocess.Popen(
                        worker_command(
                            concurrency=processes,
                            queues=queues,
                            hostname=f"{queues}@%h",
                            beat=queues == "default",
                        ),
                        env=os.environ.copy(),
                    )
                )
                self.stdout.write(
                    f"worker: celery, queue {queues}, concurrency {processes} (pid {children[-1].pid})"
                )
            if not no_web:
                children.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "gunicorn",
                            "catalog_review.wsgi",
                            "--bind",
                            bind,
                            "--workers",
                            str(web_workers),
                            "--access-logfile",
                            "-",
                            "--graceful-timeout",
                            "5",
                            # import the app (torch, scikit-learn: ~5 s) once in the master before the
                            # workers fork, not on each worker's first request
                            "--preload",
                        ],
                        env=os.environ.copy(),
                    )
                )
                self.stdout.write(self.style.SUCCESS(f"web: http://{bind}/ (pid {children[-1].pid})"))
            self.stdout.write("Press Ctrl-C to stop.")
            while not stopping:
                for child in children:
                    if child.poll() is not None:
                        self.stderr.write(
                            f"process {child.args[2:4]} exited with {child.returncode}; stopping"
                        )
                        stopping = True
                time.sleep(0.5)
        finally:
            self.stdout.write("stopping ...")
            terminate(children)
            stop_embedded_services(started_services, out=self.stdout)


def start_embedded_services() -> list[str]:
    """Start the embedded services this configuration uses; return the names of those that were not
    already running (the caller stops exactly those)."""
    started = []
    if settings.EMBEDDED_POSTGRES:
        if not runtime.postgres_running():
            started.append("postgres")
        runtime.ensure_postgres(database=settings.DATABASES["default"]["NAME"])
    if settings.EMBEDDED_REDIS:
        if not runtime.redis_running():
            started.append("redis")
        runtime.ensure_redis()
    return started


def stop_embedded_services(names: list[str], *, out) -> None:
    for name in names:
        (runtime.stop_redis if name == "redis" else runtime.stop_postgres)()
        out.write(f"{name}: stopped")


def worker_command(
    *, concurrency: int = 2, queues: str = "default,gpu", hostname: str | None = None, beat: bool = False
) -> list[str]:
    """`beat`: the worker also runs Celery beat (the reaper of stalled work, services.recovery)."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "catalog_review",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        command += ["--hostname", hostname]
    if beat:
        command += ["--beat", "--schedule", str(runtime.VAR_DIR / "celerybeat-schedule")]
    return command


def terminate(children: list[subprocess.Popen], *, grace_s: float = 10) -> None:
    """SIGTERM (warm shutdown), then SIGKILL whoever is still there after the grace period."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
