"""The one retry policy for run files and checkpoints: transient storage errors are retried, damage is not.

Object stores fail now and then in ways that say nothing about the data: HTTP 429 and 5xx, connection
resets, timeouts. gcsfs and tensorstore retry single requests themselves; `retry` adds a bounded,
jittered exponential backoff around whole operations (a checkpoint restore, a run file's read or
write), so that a blip outlasting one request's retries still does not end a run or get a good
checkpoint judged damaged. Anything else (a missing or short file, a decode error, a full disk) is
raised at once: that is evidence, and retrying it only delays the report.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import random
import re
import time
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRNO = frozenset(
    {errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE, errno.EAGAIN}
)
# tensorstore reports absl status codes in its messages (`UNAVAILABLE: ... HTTP response code: 503`).
_TRANSIENT_TEXT = re.compile(
    r"\b(UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED)\b"
    r"|HTTP (?:response )?(?:code|status)[: ]*(?:408|429|5\d\d)\b"
    r"|\b(?:429|5\d\d) (?:Too Many Requests|Internal Server Error|Bad Gateway|Service Unavailable|Gateway Timeout)"
    r"|[Cc]onnection (?:reset|aborted|refused)|[Tt]imed? ?out",
)


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a storage hiccup worth retrying, not evidence of damage."""
    for e in _chain(error):
        if isinstance(e, (TimeoutError, ConnectionError)):
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNO:
            return True
        code = getattr(e, "code", None) or getattr(e, "status", None) or getattr(e, "status_code", None)
        if isinstance(code, int) and code in _TRANSIENT_HTTP:
            return True
        if _TRANSIENT_TEXT.search(str(e)):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all, sleeping `initial_s`·2^k (at most `max_s`, with jitter) in between."""

    attempts: int = 5
    initial_s: float = 0.5
    max_s: float = 16.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * 2**attempt) * (0.5 + random.random() / 2)


POLICY = RetryPolicy()


def retry(fn: Callable[[], T], what: str, policy: RetryPolicy | None = None) -> T:
    """`fn()`, retried on transient storage errors under `policy` (default `POLICY`); the last error,
    or any non-transient one, is raised as it is. `what` names the operation in the log."""
    policy = policy or POLICY
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as e:
            if attempt + 1 == policy.attempts or not is_transient(e):
                raise
            pause = policy.delay(attempt)
            log.warning("%s: transient storage error (%s); retrying in %.1f s", what, _brief(e), pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _brief(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + " …"
