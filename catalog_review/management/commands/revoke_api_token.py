"""python manage.py revoke_api_token PREFIX | --user USER"""

from django.core.management.base import BaseCommand, CommandError

from catalog_review.api import revoke_tokens
from catalog_review.models import ApiToken


class Command(BaseCommand):
    help = "Revoke an HTTP API token by its prefix (list_api_tokens shows it), or every token of a user."

    def add_arguments(self, parser):
        parser.add_argument("prefix", nargs="?", default=None)
        parser.add_argument("--user", default=None, help="revoke every token of this user")

    def handle(self, *args, prefix: str | None = None, user: str | None = None, **options):
        if bool(prefix) == bool(user):
            raise CommandError("give a token prefix or --user USER (one of them)")
        tokens = (
            ApiToken.objects.filter(prefix=prefix) if prefix else ApiToken.objects.filter(user__username=user)
        )
        if not tokens.exists():
            raise CommandError(
                f"no token {'with prefix ' + repr(prefix) if prefix else 'of user ' + repr(user)}"
            )
        if prefix and tokens.count() > 1:
            raise CommandError(f"{tokens.count()} tokens share the prefix {prefix!r}: revoke with --user")
        revoked = revoke_tokens(tokens)
        self.stdout.write(f"{revoked} token(s) revoked" + ("" if revoked else " (already revoked)"))
