"""The model failure log's rate limit and the mode line, without a server (see
tests/test_tutor_offline.py for both from a real server)."""
from __future__ import annotations

import logging

import pytest

from handlers.tutor.modelstatus import ModelFailureLog, endpoint_host, failure_fields
from rag.llm import ModelUnavailable


class InternalServerError(Exception):
    """Shaped like the openai client's status errors (the real one: tests/test_tutor_offline.py)."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def unavailable(status: int) -> ModelUnavailable:
    try:
        raise ModelUnavailable(f"model unavailable (HTTP {status})") from InternalServerError(status)
    except ModelUnavailable as err:
        return err


def test_endpoint_host_never_shows_credentials_or_paths() -> None:
    assert endpoint_host("https://user:sk-secret@llm.example.org:8443/v1?key=sk-x") == "llm.example.org:8443"
    assert endpoint_host("http://127.0.0.1:11434/v1") == "127.0.0.1:11434"
    assert endpoint_host(None) == "api.openai.com"


def test_failure_fields_name_the_cause_and_status() -> None:
    assert failure_fields(unavailable(502)) == {"error_class": "InternalServerError", "status": 502,
                                                "reason": "model unavailable (HTTP 502)"}
    assert failure_fields(ModelUnavailable("model unavailable within 45s (timed out)"))["status"] is None


def test_one_line_per_interval_with_the_count_of_lines_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    failures = ModelFailureLog("llm.internal", "m", interval=60, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="handlers.tutor.model")
    for t in (0, 1, 2, 30, 61, 62):
        now[0] = t
        failures.failed(unavailable(503))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].endswith("1 failure(s) so far, 0 not logged")
    assert lines[1].endswith("5 failure(s) so far, 3 not logged")
    failures.succeeded()
    failures.succeeded()  # said once, not on every success
    assert [r.getMessage() for r in caplog.records][2:] == ["tutor model endpoint llm.internal answers again after 6 failure(s)"]
    now[0] = 63
    failures.failed(unavailable(500))  # a new outage is logged at once
    assert caplog.records[-1].getMessage().endswith("1 failure(s) so far, 0 not logged")
