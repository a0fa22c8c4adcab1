"""python manage.py demo: everything `make demo` does after installing.

Starts the embedded services, migrates, creates the demo reviewer and admin (printing their
credentials), imports the bundled sample catalogue, queues a score job (the active model version;
zero-shot on a fresh install), then runs the workers and the web server in the foreground until
Ctrl-C.
"""

from django.core.management import call_command
from django.core.management.base import BaseCommand

from catalog_review.management.commands.stack import start_embedded_services, stop_embedded_services
from catalog_review.runtime import PROJECT_ROOT

SAMPLE_CATALOGUE = PROJECT_ROOT / "sample_data" / "grocery" / "catalogue.jsonl"


class Command(BaseCommand):
    help = "Set up the demo (users, sample catalogue) and serve it on http://127.0.0.1:8000."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default="127.0.0.1:8000")
        parser.add_argument("--setup-only", action="store_true", help="set up, but do not start the stack")

    def handle(self, *args, bind: str, setup_only: bool, **options):
        self.stdout.write("Starting services and applying migrations ...")
        started = start_embedded_services()
        try:
            call_command("migrate", interactive=False, verbosity=0)
            self.stdout.write(self.style.SUCCESS("Demo accounts (log in at the address below):"))
            call_command("create_demo_users")
            self.stdout.write(
                f"Importing the sample catalogue {SAMPLE_CATALOGUE.relative_to(PROJECT_ROOT)} ..."
            )
            call_command("import_catalogue", str(SAMPLE_CATALOGUE), no_progress=True)
            # queued now, run by the worker the stack starts: flags appear within a minute or two
            call_command("score")
            if not setup_only:
                call_command("stack", bind=bind, no_migrate=True)
        finally:
            if not setup_only:  # Ctrl-C stops everything the demo started, services included
                stop_embedded_services(started, out=self.stdout)
