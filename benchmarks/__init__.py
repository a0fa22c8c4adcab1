"""Measurements a maintainer reruns to check a claim in the README or BENCHMARKS.md, each documented by
its `--help`. Installed with the project (pyproject: packages), so each script runs as
`.venv/bin/python benchmarks/NAME.py ...` and imports the project, and `benchmarks.harness`, normally."""
