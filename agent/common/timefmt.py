"""Time as the gateway writes it: epoch milliseconds and RFC 3339 in the local offset."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_LOCAL_TZ = datetime.now().astimezone().tzinfo or UTC


def rfc3339(epoch_ms: int) -> str:
    """RFC 3339 with milliseconds and the gateway's UTC offset, e.g. 2026-11-22T19:00:00.000+08:00."""
    dt = datetime.fromtimestamp(epoch_ms / 1000, _LOCAL_TZ)
    return dt.isoformat(timespec="milliseconds")


def now_ms() -> int:
    return int(time.time() * 1000)
