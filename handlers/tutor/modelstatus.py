"""What the operator sees of the tutor's model: the mode at start, failures, recovery.

Why: a student sees "The tutor is unavailable right now" when the model endpoint fails;
without a log line the operator learns of an outage from complaints. Why rate-limited: an
outage fails every question, and a line per question floods the log exactly when someone
reads it; one line at the first failure, then one summary per interval, then one line
when the endpoint answers again, tell the whole story. Never the API key.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from rag.llm import ChatModel, ModelUnavailable

log = logging.getLogger("handlers.tutor.model")

DEFAULT_ENDPOINT = "api.openai.com"  # what the openai client calls with no base URL


def endpoint_host(base_url: str | None) -> str:
    """Host (and port) of the endpoint: no scheme, path, user or password."""
    if not base_url:
        return DEFAULT_ENDPOINT
    parts = urlsplit(base_url if "//" in base_url else f"//{base_url}")
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def describe_mode(model: ChatModel | None, embedder_name: str) -> str:
    """One line for the start log: which tutor answers and how it retrieves."""
    if model is None:
        return f"tutor mode: offline extractive (no model configured; quotes the course material), embedder {embedder_name}"
    config = model.config
    return f"tutor mode: model {config.model} at {endpoint_host(config.base_url)}, embedder {embedder_name}"


def failure_fields(error: BaseException) -> dict[str, object]:
    """The error class and HTTP status of a model failure (from the cause the openai client
    raised, which ModelUnavailable wraps), and our reason."""
    cause = error.__cause__ if isinstance(error, ModelUnavailable) and error.__cause__ is not None else error
    status = getattr(cause, "status_code", None)
    return {
        "error_class": type(cause).__name__,
        "status": status if isinstance(status, int) else None,
        "reason": error.reason if isinstance(error, ModelUnavailable) else str(error),
    }


class ModelFailureLog:
    """Logs model failures: the first at once, later ones as one summary per `interval`."""

    def __init__(self, host: str, model: str, *, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.model = model
        self.interval = interval
        self._clock = clock
        self._failures = 0  # in the current outage
        self._suppressed = 0  # since the last line
        self._last_line: float | None = None

    def failed(self, error: BaseException) -> None:
        fields = failure_fields(error)
        self._failures += 1
        now = self._clock()
        if self._last_line is not None and now - self._last_line < self.interval:
            self._suppressed += 1
            return
        extra = {"model": self.model, "endpoint": self.host, **fields,
                 "failures": self._failures, "suppressed": self._suppressed}
        log.warning(
            "tutor model endpoint %s failed: %s (status %s): %s; %d failure(s) so far, %d not logged",
            self.host, fields["error_class"], fields["status"] or "none", fields["reason"],
            self._failures, self._suppressed, extra=extra,
        )
        self._last_line, self._suppressed = now, 0

    def succeeded(self) -> None:
        if self._failures:
            log.warning("tutor model endpoint %s answers again after %d failure(s)", self.host, self._failures,
                        extra={"model": self.model, "endpoint": self.host, "failures": self._failures})
        self._failures = self._suppressed = 0
        self._last_line = None
