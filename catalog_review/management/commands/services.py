"""python manage.py services {start,stop,status}: the embedded PostgreSQL and redis-server."""

from django.conf import settings
from django.core.management.base import BaseCommand

from catalog_review import runtime


class Command(BaseCommand):
    help = "Start, stop or show the embedded PostgreSQL+pgvector and redis-server under var/."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "stop", "status"])

    def handle(self, *args, action: str, **options):
        embedded_pg, embedded_redis = settings.EMBEDDED_POSTGRES, settings.EMBEDDED_REDIS
        if action == "start":
            if embedded_pg:
                params = runtime.ensure_postgres(database=settings.DATABASES["default"]["NAME"])
                self.stdout.write(f"postgres: running (socket {params.socket_dir}, port {params.port})")
            if embedded_redis:
                self.stdout.write(f"redis: running (socket {runtime.ensure_redis()})")
        elif action == "stop":
            others = _app_processes()
            if others:
                self.stderr.write(
                    f"note: web or worker processes of this checkout are still running (pid "
                    f"{', '.join(str(p) for p in others)}): their next request or task starts the services "
                    "again. Stop them first (Ctrl-C where `make demo` or `manage.py stack` runs)."
                )
            if embedded_redis:
                self.stdout.write("redis: stopped" if runtime.stop_redis() else "redis: was not running")
            if embedded_pg:
                self.stdout.write(
                    "postgres: stopped" if runtime.stop_postgres() else "postgres: was not running"
                )
        else:
            pg = (
                "external (DATABASE_URL)"
                if not embedded_pg
                else ("running" if runtime.postgres_running() else "stopped")
            )
            rd = (
                "external (CELERY_BROKER_URL)"
                if not embedded_redis
                else ("running" if runtime.redis_running() else "stopped")
            )
            self.stdout.write(f"postgres: {pg}\nredis: {rd}")


def _app_processes() -> list[int]:
    """Web (gunicorn) and worker (celery) processes running this checkout's app."""
    import os

    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if process.info["pid"] == os.getpid() or process.info["cwd"] != str(runtime.PROJECT_ROOT):
                continue
        except (psutil.Error, TypeError):
            continue
        if "catalog_review.wsgi" in cmdline or ("celery" in cmdline and "catalog_review" in cmdline):
            found.append(process.info["pid"])
    return sorted(found)
