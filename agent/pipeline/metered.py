"""A driver wrapped with its read metering: latency histogram and read errors by reason
(the service's metrics read them)."""

from __future__ import annotations

import time
from typing import Any

from agent.model import GOOD

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_REASONS = 20  # distinct error reasons counted per device; more go under "other"


class MeteredDriver:
    """Wraps a device driver: read latency histogram and read errors by reason; otherwise the
    driver itself (every other attribute is passed through)."""

    def __init__(self, driver: Any):
        self._driver = driver
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.read_sum = 0.0
        self.reads = 0
        self.errors: dict[str, int] = {}

    async def read(self) -> list:
        start = time.perf_counter()
        samples = await self._driver.read()
        took = time.perf_counter() - start
        self.reads += 1
        self.read_sum += took
        for i, edge in enumerate(LATENCY_BUCKETS):
            if took <= edge:
                self.buckets[i] += 1
                break
        else:
            self.buckets[-1] += 1
        errors = self.errors
        for s in [s for s in samples if s.quality != GOOD]:  # one quick pass; most polls have none
            reason = s.reason or "unknown"
            if reason not in errors and len(errors) >= MAX_REASONS:
                reason = "other"
            errors[reason] = errors.get(reason, 0) + 1
        return samples

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)
