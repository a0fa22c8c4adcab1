"""Logging filters (settings.LOGGING)."""

from __future__ import annotations

import logging


class ClientErrorsInOneLine(logging.Filter):
    """Django logs a refused request (PermissionDenied -> 403, a bad request -> 400) with the exception's
    traceback; a refusal is the app working, and a log full of tracebacks hides the real errors. Keep
    the one-line message of 4xx responses, drop their traceback; 5xx keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is not None and 400 <= status < 500 and record.exc_info:
            record.exc_info = None
            record.exc_text = None
        return True
