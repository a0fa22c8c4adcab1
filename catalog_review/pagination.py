"""Counts that do not scan a million rows: past ESTIMATE_COUNTS_ABOVE rows a list's size is the
PostgreSQL planner's estimate (read in a millisecond from the table statistics, which autovacuum's
ANALYZE and every finished import and score job keep current), shown as "about N"; below it, an
exact COUNT. A word search's matches are "about N" past SEARCH_ESTIMATE_COUNTS_ABOVE (1,000), as a
search engine says them."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import cached_property

from django.conf import settings
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Q, QuerySet


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


def count_of(queryset: QuerySet, estimate_above: int | None = None) -> Count:
    """The planner's estimate past `estimate_above` rows (default ESTIMATE_COUNTS_ABOVE), else the exact
    count."""
    estimate = planner_rows(queryset)
    if estimate >= (settings.ESTIMATE_COUNTS_ABOVE if estimate_above is None else estimate_above):
        return Count(estimate, exact=False)
    return Count(queryset.count())


class EstimatingPaginator(Paginator):
    """A Paginator whose count is `count_of` its queryset (a list: its length); `total` keeps whether
    it is exact, for the page to say "about". `estimate_above`: see `count_of`."""

    def __init__(self, *args, estimate_above: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.estimate_above = estimate_above

    @cached_property
    def total(self) -> Count:
        if isinstance(self.object_list, QuerySet):
            return count_of(self.object_list, self.estimate_above)
        return Count(len(self.object_list))

    @cached_property
    def count(self) -> int:
        return self.total.n


def encode_cursor(values: list) -> str:
    """An opaque cursor: the sort key of the last row served."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def decode_cursor(raw: str | None, length: int) -> list | None:
    """The values of a cursor `encode_cursor` made (None for none); ValueError for anything else."""
    if not raw:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except ValueError:
        raise ValueError("cursor is not one this server returned") from None
    numbers = isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    )
    if not numbers or len(values) != length:  # every key this server pages by is a number
        raise ValueError("cursor is not one this server returned")
    return values


# keyset pages of flags: each ordering's sort key (the last field breaks ties), and the rows strictly after
# a key; "uncertainty" is the annotation of models.flag_uncertainty (selectors.flag_queue adds it)
FLAG_ORDER_KEYS = {
    "-score": ("-score", "id"),
    "score": ("score", "id"),
    "uncertain": ("uncertainty", "id"),
    "id": ("id",),
}


def flags_after(flags: QuerySet, ordering: str, after: list) -> QuerySet:
    """`flags` (ordered by FLAG_ORDER_KEYS[ordering]) strictly after the row whose key is `after`."""
    if ordering == "id":
        return flags.filter(id__gt=after[0])
    field = FLAG_ORDER_KEYS[ordering][0].lstrip("-")
    beyond = "lt" if ordering == "-score" else "gt"
    return flags.filter(Q(**{f"{field}__{beyond}": after[0]}) | Q(**{field: after[0], "id__gt": after[1]}))


def flag_cursor(flag, ordering: str) -> str:
    """The cursor of the page that follows `flag`, the last row served."""
    values = {"-score": [flag.score, flag.pk], "score": [flag.score, flag.pk], "id": [flag.pk]}
    return encode_cursor(values.get(ordering) or [flag.uncertainty, flag.pk])
