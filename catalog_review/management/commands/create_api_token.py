"""python manage.py create_api_token USER [--name TEXT] [--expires DAYS]"""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from catalog_review.api import create_token


class Command(BaseCommand):
    help = "Create an HTTP API token for USER and print it (it is shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the token is for (shown in list_api_tokens)")
        parser.add_argument(
            "--expires", type=int, default=None, metavar="DAYS", help="expire after DAYS days"
        )

    def handle(self, *args, username: str, name: str = "", expires: int | None = None, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r} (create one with `manage.py createsuperuser`)")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        if expires is not None and expires < 1:
            raise CommandError("--expires must be a number of days, at least 1")
        if len(name) > 100:
            raise CommandError("--name is at most 100 characters")
        expires_at = timezone.now() + timedelta(days=expires) if expires else None
        self.stdout.write(create_token(user, name=name, expires_at=expires_at))
        until = f", expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else ""
        self.stderr.write(
            f"Token for {username} ({'admin' if user.is_staff else 'reviewer'}{until}); send it as "
            "'Authorization: Bearer <token>'. It is stored hashed and cannot be shown again."
        )
