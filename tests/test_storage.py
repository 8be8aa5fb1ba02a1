"""The one retry policy: which storage errors are transient, and bounded retries of those only."""

import errno

import pytest

from albert_jax import storage


class _Http(Exception):
    def __init__(self, code):
        super().__init__(f"HTTP {code}")
        self.code = code


@pytest.mark.parametrize(
    "error",
    [
        _Http(503),
        _Http(429),
        _Http(500),
        TimeoutError("read timed out"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        OSError(errno.ETIMEDOUT, "Connection timed out"),
        ValueError('UNAVAILABLE: Error reading "x": HTTP response code: 503 with body: unavailable'),
        ValueError("DEADLINE_EXCEEDED: request took too long"),
        RuntimeError("writing failed"),  # caused by a transient error (below)
    ],
)
def test_transient_errors(error):
    if isinstance(error, RuntimeError):
        error.__cause__ = _Http(502)
    assert storage.is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        _Http(404),
        _Http(403),
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        OSError(errno.ENOSPC, "No space left on device"),
        ValueError("OUT_OF_RANGE: Requested byte range [0, 85605) was not satisfied"),
        ValueError("DATA_LOSS: Error decoding manifest"),
        ValueError("Expecting ',' delimiter: line 1 column 54 (char 53)"),
    ],
)
def test_evidence_of_damage_or_user_error_is_not_transient(error):
    assert not storage.is_transient(error)


def test_retry_retries_transient_errors_only_and_within_its_bound(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    policy = storage.RetryPolicy(attempts=3, initial_s=0.1, max_s=0.2)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _Http(503)
        return "ok"

    assert storage.retry(flaky, "test", policy) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(_Http):
        storage.retry(lambda: calls.append(1) or (_ for _ in ()).throw(_Http(503)), "test", policy)
    assert len(calls) == 3  # bounded
    calls.clear()
    with pytest.raises(FileNotFoundError):
        storage.retry(lambda: calls.append(1) or open("/nonexistent/file"), "test", policy)
    assert len(calls) == 1  # damage or a user mistake is not retried
    assert all(policy.delay(k) <= policy.max_s for k in range(10))
