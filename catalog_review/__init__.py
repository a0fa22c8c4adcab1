"""Catalog Review: the Django project and app (settings, models, services, views, API, Celery app)."""

from catalog_review.celery import app as celery_app

__all__ = ["celery_app"]
