"""Property-based fuzzing of the live API from its own ``/openapi.json`` (schemathesis).

A real gunicorn gevent server on a Redis of its own and no worker, so fuzzed jobs only
queue up. Every operation gets a bounded number of examples (derandomized: the same
inputs every run), first valid ones, then invalid ones where there are inputs to break.
Checked on each response: no 5xx, a documented status, content type and headers, a body
that matches its schema (so every error is the JSON Error object), and invalid input
refused with a 4xx.

Nothing can hang. Job streams are fuzzed with random ids, which are unknown (404); the
fuzzer never learns a real id. ``JOBCAST_OPS_TOKEN`` is set, so the never-ending
``/ops/stream`` answers 401 to the fuzzer, which does not know it. And every call has
a read timeout, so a stream that did open would fail the run instead of stalling it.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import RedisServer, gunicorn_web

EXAMPLES = int(os.environ.get("JOBCAST_FUZZ_EXAMPLES", "50"))
CALL_TIMEOUT = 10.0  # seconds without a byte: far above any answer, below the 15 s heartbeat
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A web server of its own (its own Redis, no rate limit, ops token on, no worker)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    server = RedisServer(tmp / "redis").start()
    env = dict(os.environ)
    env.update(
        REDIS_URL=server.url,
        JOBCAST_MEDIA_DIR=str(tmp / "media"),
        JOBCAST_POST_RATE_LIMIT="",
        JOBCAST_OPS_TOKEN=secrets.token_urlsafe(16),
        PYTHONUNBUFFERED="1",
    )
    try:
        proc, base = gunicorn_web(env, tmp / "web.log")
        try:
            yield base
        finally:
            proc.stop()
    finally:
        server.stop()


def fuzz(
    operation: Any, mode: GenerationMode, base: str, say: Callable[[str], None]
) -> tuple[int, BaseException | None]:
    """Run one operation's examples in ``mode``: how many were tried, and the failure if any."""
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    tried = 0
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal tried
        tried += 1
        response = case.call_and_validate(base_url=base, checks=checks, timeout=CALL_TIMEOUT)
        statuses[response.status_code] += 1

    failure: BaseException | None = None
    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # a check failed (hypothesis re-raises it)
        failure = exc
    outcome = "FAILED" if failure else "ok"
    say(f"{operation.label} [{mode.value}]: {tried} examples, {outcome}, statuses {dict(statuses)}")
    return tried, failure


def has_inputs(operation: Any) -> bool:
    """Whether there is anything to make invalid (a body or parameters)."""
    return bool(operation.body or operation.path_parameters or operation.query or operation.headers)


@pytest.mark.slow
def test_api_survives_fuzzing(fuzz_web: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every documented operation, fuzzed from the live document: no 5xx, every status,
    content type, header and body as documented, invalid input refused with a 4xx."""
    schema = schemathesis.openapi.from_url(fuzz_web + "/openapi.json")
    failures: dict[str, BaseException] = {}
    total = 0

    def say(line: str) -> None:
        with capsys.disabled():  # the counts belong in every run's output, not only failures
            print(line)

    say("")
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the document itself is broken here
            failures[str(result.err())] = result.err()
            continue
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not has_inputs(operation):
                continue
            tried, failure = fuzz(operation, mode, fuzz_web, say)
            total += tried
            if failure is not None:
                failures[f"{operation.label} [{mode.value}]"] = failure
    say(f"fuzzed {total} examples; failures: {len(failures)}")
    assert not failures, "\n".join(f"{label}: {exc}" for label, exc in failures.items())
