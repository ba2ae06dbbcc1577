"""What the read-only operator commands share: the store opened beside a running agent, and
times told with their age."""

from __future__ import annotations

import sys
import time

from agent.common.timefmt import rfc3339
from agent.config.gateway import GatewayConfig
from agent.pipeline.store import DB_NAME, Store


def open_store(cfg: GatewayConfig) -> Store | None:
    path = cfg.data_dir / DB_NAME
    if not path.exists():
        print(f"no store at {path}: the agent has not run with this config yet", file=sys.stderr)
        return None
    return Store(cfg.data_dir, readonly=True)


def age_text(ms: int | None) -> str:
    if ms is None:
        return "never"
    secs = max(0.0, time.time() - ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{rfc3339(ms)} ({secs / size:.1f}{unit} ago)"
    return f"{rfc3339(ms)} ({secs:.1f}s ago)"
