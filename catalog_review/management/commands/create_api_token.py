"""python manage.py create_api_token USER"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from catalog_review.api import create_token


class Command(BaseCommand):
    help = "Create an HTTP API token for USER and print it (it is shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r} (create one with `manage.py createsuperuser`)")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        self.stdout.write(create_token(user))
        self.stderr.write(
            f"Token for {username} ({'admin' if user.is_staff else 'reviewer'}); send it as "
            "'Authorization: Bearer <token>'. It is stored hashed and cannot be shown again."
        )
