"""The uplinks' reconnect back-off: exponential, capped, with full jitter and a floor.

Attempt n (counted from 0 since the far end last acknowledged a message) waits a delay drawn
uniformly from [FLOOR, min(CAP, BASE * 2**n)]. The cap keeps the gap between the far end coming
back and the next attempt short however long the outage was; the draw spreads the gateways of
a province over the whole interval, so they do not all reconnect in the same instant; the
floor keeps a refused connection from turning into a busy loop. docs/operations.md (section
"Uplink reconnects") justifies the numbers.
"""

from __future__ import annotations

import random

FLOOR = 0.1  # seconds: at most 10 attempts a second, whatever the draw
BASE = 0.5  # seconds: the first attempt after a loss comes within half a second
CAP = 1.0  # seconds: the most any attempt waits, however long the outage


class Backoff:
    """Delays between connection attempts; `reset` once the far end acknowledged something."""

    def __init__(self, rng: random.Random | None = None):
        self.failures = 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        """The wait before the next attempt (and one more failure counted)."""
        ceiling = max(FLOOR, min(CAP, BASE * 2 ** min(self.failures, 16)))
        self.failures += 1
        return self._rng.uniform(FLOOR, ceiling)
