"""Template context for every page."""

from __future__ import annotations

import functools

from catalog_review.models import ModelVersion


def active_model_version(request) -> dict:
    """The active model version's name for the top bar: a callable, so pages that do not show the
    bar (anonymous ones) run no query; one indexed query where they do."""

    @functools.cache  # once per request, however often the page asks
    def name() -> str | None:
        return ModelVersion.objects.filter(is_active=True).values_list("name", flat=True).first()

    return {"active_model_version": name}
