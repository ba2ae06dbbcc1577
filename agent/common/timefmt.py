"""Time as the gateway writes it: epoch milliseconds and RFC 3339 in the local offset."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_LOCAL_TZ = datetime.now().astimezone().tzinfo or UTC
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The instants every UTC offset can show as a datetime (years 1 to 9999; an offset is less than
# a day): epochs outside are clamped to these, so no value can make rfc3339 raise.
MIN_MS = int((datetime(1, 1, 2, tzinfo=UTC) - _EPOCH) / timedelta(milliseconds=1))
MAX_MS = int((datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) / timedelta(milliseconds=1)) - 1


def rfc3339(epoch_ms: int) -> str:
    """RFC 3339 with milliseconds and the gateway's UTC offset, e.g. 2026-11-22T19:00:00.000+08:00.

    Never raises: an epoch beyond year 1 or 9999 in any offset is shown clamped to that bound
    (drivers refuse such device times; this keeps one record from stopping a whole message).
    """
    ms = min(max(int(epoch_ms), MIN_MS), MAX_MS)
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(_LOCAL_TZ).isoformat(timespec="milliseconds")


def now_ms() -> int:
    return int(time.time() * 1000)
