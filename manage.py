#!/usr/bin/env python
"""Django's command-line utility for Catalog Review."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_review.settings")
    from django.core.management import execute_from_command_line
    from django.db.utils import ProgrammingError

    try:
        execute_from_command_line(sys.argv)
    except ProgrammingError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != "42P01":  # undefined_table
            raise
        sys.stderr.write(
            "CommandError: the database has no tables for this version of Catalog Review: "
            "run `python manage.py migrate` first\n"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
