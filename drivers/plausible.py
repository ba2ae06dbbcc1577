"""Plausibility checks made where samples are made, the same for every driver.

- `check_value`: a raw value its point's declared type cannot hold (UInt64 2**64-1 on a
  `uint32` point, 5 on a `bool` point, a float32 beyond float32's range) -> the sample is bad;
- `check_time`: a device time far ahead of the gateway's clock or before 2000 -> the time is
  dropped (the reading carries the poll's collection time) and a good sample is uncertain;
- `checked`: both applied to one sample.

The reasons reach the platform as written here: a fixed code, then what was wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sys
import time

from agent.model import BAD, GOOD, UNCERTAIN, Sample

OUT_OF_TYPE_RANGE = "out_of_type_range"
SOURCE_TIME_IMPLAUSIBLE = "source_time_implausible"

# A device time more than this ahead of the gateway's clock is implausible. Five minutes leaves
# room for device clocks that drift between synchronisations (and for the gateway's own clock
# being a little behind); beyond it the device time is wrong (an unset or corrupt clock, OPC UA's
# largest DateTime 9999-12-31) and stamping a reading with it would put it where no query finds
# it, or overflow a local-time conversion east of UTC.
FUTURE_SLACK_S = 300.0
# A device time before 2000-01-01T00:00:00Z is implausible: hazgate readings are live plant
# data, and this is where unset device clocks and "no time" stamps land (OPC UA DateTime 0 is
# 1601-01-01, an RTC without battery restarts at 1970 or 2000-01-01 minus its zone).
EARLIEST_S = 946_684_800.0

INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
}
FLOAT_MAX: dict[str, float] = {"float32": 3.4028234663852886e38, "float64": sys.float_info.max}


def _shown(raw: object) -> str:
    if not isinstance(raw, bool | int | float):
        return f"{type(raw).__name__} {str(raw)[:40]!r}"
    text = repr(raw)
    return text if len(text) <= 40 else f"{text[:37]}..."


def check_value(point_type: str, raw: object) -> str | None:
    """Why `raw` is no value of `point_type` (the reason of a bad sample); None when it is one."""
    if point_type == "bool":
        if isinstance(raw, bool) or (isinstance(raw, int | float) and raw in (0, 1)):
            return None
        return f"{OUT_OF_TYPE_RANGE}: {_shown(raw)} is not a bool (valid: true, false, 0, 1)"
    if not isinstance(raw, int | float):
        return f"{OUT_OF_TYPE_RANGE}: {_shown(raw)} is not a number, as {point_type} needs"
    if point_type in INT_RANGES:
        lo, hi = INT_RANGES[point_type]
        if isinstance(raw, float) and not (math.isfinite(raw) and raw.is_integer()):
            return f"{OUT_OF_TYPE_RANGE}: {_shown(raw)} is not a whole number, as {point_type} needs"
        if not lo <= raw <= hi:
            return f"{OUT_OF_TYPE_RANGE}: {_shown(raw)} is outside {point_type} ({lo} to {hi})"
        return None
    if point_type in FLOAT_MAX:
        top = FLOAT_MAX[point_type]
        if isinstance(raw, float) and not math.isfinite(raw):
            return f"{OUT_OF_TYPE_RANGE}: {raw!r} is not a finite number"
        if abs(raw) > top:
            return f"{OUT_OF_TYPE_RANGE}: {_shown(raw)} is outside {point_type} (-{top:.7g} to {top:.7g})"
        return None
    raise ValueError(f"unknown point type {point_type!r}")


def _utc(ts: float) -> str:
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return f"{ts:.0f} s from 1970"


def check_time(ts: float, now: float) -> str | None:
    """Why device time `ts` (epoch seconds) is implausible at gateway time `now`; None when not."""
    if not math.isfinite(ts):
        return f"{SOURCE_TIME_IMPLAUSIBLE}: {ts!r} is not a time"
    if ts > now + FUTURE_SLACK_S:
        return (f"{SOURCE_TIME_IMPLAUSIBLE}: {_utc(ts)} is more than {FUTURE_SLACK_S / 60:g} min "
                "ahead of the gateway clock")
    if ts < EARLIEST_S:
        return f"{SOURCE_TIME_IMPLAUSIBLE}: {_utc(ts)} is before 2000-01-01"
    return None


def checked(sample: Sample, now: float | None = None) -> Sample:
    """`sample` with both checks applied (a new Sample when one fails; `now` defaults to the clock).

    A value out of its type makes the sample bad and withholds the value; an implausible time is
    dropped, so the reading carries the collection time, and a good sample becomes uncertain.
    """
    out = sample
    if out.raw is not None and out.quality != BAD and (why := check_value(out.point.type, out.raw)):
        out = dataclasses.replace(out, raw=None, quality=BAD, reason=why)
    if out.ts is not None and (why := check_time(out.ts, time.time() if now is None else now)):
        quality, reason = (UNCERTAIN, why) if out.quality == GOOD else (out.quality, out.reason)
        out = dataclasses.replace(out, ts=None, quality=quality, reason=reason)
    return out
