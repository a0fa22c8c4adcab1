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
