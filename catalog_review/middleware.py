"""Request middleware."""

from __future__ import annotations

import time

from django.db import connection


class ServerTiming:
    """Every response says how long the server took and how much of it went to the database
    (`Server-Timing: app;dur=12.3, db;dur=4.5;desc="3 queries"`, milliseconds): browsers' developer tools
    show it, and `benchmarks/scale_bench.py` reads server-side latency from it, apart from the load
    generator's own time."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        queries = {"n": 0, "s": 0.0}

        def timed(execute, sql, params, many, context):
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                queries["n"] += 1
                queries["s"] += time.perf_counter() - started

        started = time.perf_counter()
        with connection.execute_wrapper(timed):
            response = self.get_response(request)
        app_ms = (time.perf_counter() - started) * 1000
        response["Server-Timing"] = (
            f'app;dur={app_ms:.1f}, db;dur={queries["s"] * 1000:.1f};desc="{queries["n"]} queries"'
        )
        return response
