"""python manage.py list_api_tokens [--user USER]"""

from django.core.management.base import BaseCommand

from catalog_review.models import ApiToken


class Command(BaseCommand):
    help = (
        "List the HTTP API tokens (prefix, user, name, state, dates); the tokens themselves are not stored."
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", default=None, help="only this user's tokens")

    def handle(self, *args, user: str | None = None, **options):
        tokens = ApiToken.objects.select_related("user").order_by("created_at")
        if user:
            tokens = tokens.filter(user__username=user)

        def when(value):
            return f"{value:%Y-%m-%d %H:%M}" if value else "-"

        self.stdout.write("prefix    user  state  name  created  last used  expires")
        for t in tokens:
            self.stdout.write(
                f"{t.prefix}  {t.user.get_username()}  {t.state()}  {t.name or '-'}  {when(t.created_at)}  "
                f"{when(t.last_used_at)}  {when(t.expires_at)}"
            )
