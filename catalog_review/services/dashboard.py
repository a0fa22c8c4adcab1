"""The admin dashboard's aggregates, maintained: computed in the background (the beat task
`refresh_dashboard`, every DASHBOARD_REFRESH_S) and stored with their time, so that the page reads
one row at any catalogue size. A page finding none younger than DASHBOARD_MAX_AGE_S (no beat running:
a development stack, a benchmark) computes them itself; an admin can ask for fresh figures."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from catalog_review.models import DashboardSnapshot
from catalog_review.selectors import dashboard_stats


def refresh_dashboard() -> DashboardSnapshot:
    """Compute the aggregates now and store them (the single snapshot row)."""
    started = time.perf_counter()
    stats = dashboard_stats()
    took_ms = round((time.perf_counter() - started) * 1000)
    snapshot, _ = DashboardSnapshot.objects.update_or_create(
        pk=1, defaults={"stats": stats, "computed_at": timezone.now(), "took_ms": took_ms}
    )
    return snapshot


def current_dashboard() -> DashboardSnapshot:
    """The stored aggregates, or fresh ones when there are none younger than DASHBOARD_MAX_AGE_S."""
    snapshot = DashboardSnapshot.objects.filter(pk=1).first()
    if snapshot is None or timezone.now() - snapshot.computed_at > timedelta(
        seconds=settings.DASHBOARD_MAX_AGE_S
    ):
        return refresh_dashboard()
    return snapshot
