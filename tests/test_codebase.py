"""Repository-wide checks: lint and format (ruff), migrations in step with the models."""

import subprocess
import sys
from pathlib import Path

from django.core.management import call_command

from catalog_review.runtime import PROJECT_ROOT

RUFF = Path(sys.executable).parent / "ruff"


def test_ruff_lint_and_format_are_clean():
    lint = subprocess.run([str(RUFF), "check", "."], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run(
        [str(RUFF), "format", "--check", "."], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout


def test_migrations_match_the_models(db):
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
