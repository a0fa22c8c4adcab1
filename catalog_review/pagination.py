"""Counts that do not scan a million rows: past ESTIMATE_COUNTS_ABOVE rows a list's size is the
PostgreSQL planner's estimate (read in a millisecond from the table statistics, which autovacuum's
ANALYZE and every finished import and score job keep current), shown as "about N"; below it, an
exact COUNT."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from django.conf import settings
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet


@dataclass(frozen=True)
class Count:
    n: int
    exact: bool = True

    def __str__(self) -> str:
        if self.exact:
            return f"{self.n:,}"
        digits = max(len(str(self.n)) - 2, 0)  # two significant figures: 66,412 -> about 66,000
        return f"about {round(self.n, -digits):,}"

    def __int__(self) -> int:
        return self.n


def planner_rows(queryset: QuerySet) -> int:
    """How many rows the planner expects `queryset` to return (no row is read)."""
    sql, params = queryset.order_by().query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def count_of(queryset: QuerySet) -> Count:
    """The planner's estimate past ESTIMATE_COUNTS_ABOVE rows, else the exact count."""
    estimate = planner_rows(queryset)
    if estimate >= settings.ESTIMATE_COUNTS_ABOVE:
        return Count(estimate, exact=False)
    return Count(queryset.count())


class EstimatingPaginator(Paginator):
    """A Paginator whose count is `count_of` its queryset (a list: its length); `total` keeps whether
    it is exact, for the page to say "about"."""

    @cached_property
    def total(self) -> Count:
        if isinstance(self.object_list, QuerySet):
            return count_of(self.object_list)
        return Count(len(self.object_list))

    @cached_property
    def count(self) -> int:
        return self.total.n
