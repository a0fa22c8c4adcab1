"""A Django database backend: PostgreSQL, started from `catalog_review.runtime` on first connection."""
