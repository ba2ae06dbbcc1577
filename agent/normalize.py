"""Normalization: driver samples become readings in engineering units with quality."""

from __future__ import annotations

import math

from agent.points import Point


def engineering(point: Point, raw: float | int | bool) -> float | bool | None:
    """Scaled value; NaN and infinities (a float register holding garbage) become None."""
    value = point.to_engineering(raw)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
