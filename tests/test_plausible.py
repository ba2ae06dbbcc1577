"""Unit tests of drivers/plausible.py (the checks every driver applies to the samples it makes)
and of agent/common/timefmt.rfc3339 (never raises, whatever the epoch and the UTC offset)."""

from __future__ import annotations

import datetime as dt
import math
import struct

import pytest

from agent.common import timefmt
from agent.model import TYPES, Point, Sample
from drivers.plausible import EARLIEST_S, FUTURE_SLACK_S, check_time, check_value, checked

NOW = 1_795_000_000.0  # 2026-11-17
F32_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]


def point(ptype: str) -> Point:
    return Point(tag="T", address="ns=2;s=T", type=ptype, line=2, file="points.csv")


# --- check_value ----------------------------------------------------------------------------

EDGES = {
    "int16": (-32768, 32767), "uint16": (0, 65535), "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
}


@pytest.mark.parametrize("ptype", EDGES)
def test_integer_types_take_their_whole_range_and_nothing_beyond(ptype: str) -> None:
    lo, hi = EDGES[ptype]
    for raw in (lo, hi, 0 if lo == 0 else -1, float(hi), True):
        assert check_value(ptype, raw) is None, (ptype, raw)
    assert check_value(ptype, hi + 1) == f"out_of_type_range: {hi + 1} is outside {ptype} ({lo} to {hi})"
    assert check_value(ptype, lo - 1) == f"out_of_type_range: {lo - 1} is outside {ptype} ({lo} to {hi})"
    assert check_value(ptype, 2**64 - 1) == f"out_of_type_range: 18446744073709551615 is outside {ptype} ({lo} to {hi})"
    for raw in (2.5, math.nan, math.inf):
        assert check_value(ptype, raw) == f"out_of_type_range: {raw!r} is not a whole number, as {ptype} needs"


def test_float32_finite_and_within_its_range() -> None:
    for raw in (0.0, -1.5, F32_MAX, -F32_MAX, 3, 1e-45):
        assert check_value("float32", raw) is None, raw
    assert check_value("float32", 3.5e38) == "out_of_type_range: 3.5e+38 is outside float32 (-3.402823e+38 to 3.402823e+38)"
    assert check_value("float32", -(2**200)).startswith("out_of_type_range: -16069380442589902755")
    assert check_value("float32", -(2**200)).endswith("... is outside float32 (-3.402823e+38 to 3.402823e+38)")
    for raw in (math.nan, math.inf, -math.inf):
        assert check_value("float32", raw) == f"out_of_type_range: {raw!r} is not a finite number"


def test_float64_finite() -> None:
    assert check_value("float64", 1e308) is None
    assert check_value("float64", 2**1024) is not None  # an integer no double can hold
    assert check_value("float64", math.nan) == "out_of_type_range: nan is not a finite number"


def test_bool_takes_booleans_and_0_or_1_only() -> None:
    for raw in (True, False, 0, 1, 0.0, 1.0):
        assert check_value("bool", raw) is None, raw
    assert check_value("bool", 5) == "out_of_type_range: 5 is not a bool (valid: true, false, 0, 1)"
    assert check_value("bool", math.nan) == "out_of_type_range: nan is not a bool (valid: true, false, 0, 1)"
    assert check_value("bool", "on") == "out_of_type_range: str 'on' is not a bool (valid: true, false, 0, 1)"


def test_every_declared_type_is_known_and_non_numbers_are_named() -> None:
    for ptype in TYPES:
        assert check_value(ptype, 1) is None, ptype
        if ptype != "bool":
            assert check_value(ptype, "12") == f"out_of_type_range: str '12' is not a number, as {ptype} needs"
    with pytest.raises(ValueError, match="unknown point type 'int8'"):
        check_value("int8", 1)


# --- check_time -----------------------------------------------------------------------------

def test_device_times_within_the_bounds_are_plausible() -> None:
    for ts in (NOW, NOW - 86400 * 365 * 20, NOW + FUTURE_SLACK_S, EARLIEST_S):
        assert check_time(ts, NOW) is None, ts


def test_far_future_and_far_past_are_implausible() -> None:
    year_9999 = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    assert check_time(year_9999, NOW) == ("source_time_implausible: 9999-12-31T23:59:59Z is more than 5 min "
                                          "ahead of the gateway clock")
    assert check_time(NOW + FUTURE_SLACK_S + 1, NOW) is not None
    year_1601 = dt.datetime(1601, 1, 1, tzinfo=dt.UTC).timestamp()
    assert check_time(year_1601, NOW) == "source_time_implausible: 1601-01-01T00:00:00Z is before 2000-01-01"
    assert check_time(0.0, NOW) == "source_time_implausible: 1970-01-01T00:00:00Z is before 2000-01-01"
    assert check_time(EARLIEST_S - 1, NOW) is not None
    assert check_time(1e20, NOW) == "source_time_implausible: 100000000000000000000 s from 1970 is more than 5 min ahead of the gateway clock"
    assert check_time(math.nan, NOW) == "source_time_implausible: nan is not a time"
    assert check_time(-math.inf, NOW) == "source_time_implausible: -inf is not a time"


# --- checked --------------------------------------------------------------------------------

def test_checked_leaves_a_plausible_sample_as_it_is() -> None:
    s = Sample(point("uint32"), 7, "good", None, NOW - 1)
    assert checked(s, NOW) is s
    bad = Sample(point("uint32"), None, "bad", "timeout")
    assert checked(bad, NOW) is bad


def test_checked_out_of_range_is_bad_without_its_value() -> None:
    s = checked(Sample(point("uint32"), 2**64 - 1, "good", None, NOW), NOW)
    assert (s.raw, s.quality, s.ts) == (None, "bad", NOW)
    assert s.reason == "out_of_type_range: 18446744073709551615 is outside uint32 (0 to 4294967295)"
    # an uncertain value out of range is bad as well; the status reason gives way to the range
    s = checked(Sample(point("int16"), 40000, "uncertain", "opc ua UncertainLastUsableValue"), NOW)
    assert (s.raw, s.quality, s.reason) == (None, "bad", "out_of_type_range: 40000 is outside int16 (-32768 to 32767)")


def test_checked_implausible_time_keeps_the_value_and_drops_the_time() -> None:
    s = checked(Sample(point("float64"), 1.5, "good", None, 253402300799.0), NOW)
    assert (s.raw, s.quality, s.ts) == (1.5, "uncertain", None)
    assert s.reason.startswith("source_time_implausible: 9999-12-31T23:59:59Z")
    # a sample that is already not good keeps its own quality and reason; the time goes all the same
    s = checked(Sample(point("float64"), 1.5, "uncertain", "opc ua UncertainSensorCalibration", 0.0), NOW)
    assert (s.raw, s.quality, s.reason, s.ts) == (1.5, "uncertain", "opc ua UncertainSensorCalibration", None)
    s = checked(Sample(point("uint16"), 70000, "good", None, 0.0), NOW)
    assert (s.raw, s.quality, s.ts) == (None, "bad", None) and s.reason.startswith("out_of_type_range: 70000")


def test_checked_defaults_to_the_clock() -> None:
    assert checked(Sample(point("float32"), 1.0, "good", None, dt.datetime.now(dt.UTC).timestamp())).quality == "good"
    assert checked(Sample(point("float32"), 1.0, "good", None, 4e9)).quality == "uncertain"  # year 2096


# --- rfc3339 --------------------------------------------------------------------------------

OFFSETS = [dt.timezone(dt.timedelta(hours=h)) for h in (14, 8, 0, -12)] + [
    dt.timezone(dt.timedelta(hours=23, minutes=59)), dt.timezone(-dt.timedelta(hours=23, minutes=59))]


def old_rfc3339(epoch_ms: int, tz: dt.tzinfo) -> str:
    """What rfc3339 was, for the epochs it could show."""
    return dt.datetime.fromtimestamp(epoch_ms / 1000, tz).isoformat(timespec="milliseconds")


@pytest.mark.parametrize("tz", OFFSETS, ids=str)
def test_rfc3339_is_unchanged_where_it_worked(tz: dt.tzinfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timefmt, "_LOCAL_TZ", tz)
    for ms in (0, 1, 999, -1, -1001, 1_795_000_000_123, 1_795_000_000_999, 946_684_800_000, 4_102_444_800_000,
               -11_644_473_600_000, timefmt.MIN_MS, 253_402_000_000_000):
        assert timefmt.rfc3339(ms) == old_rfc3339(ms, tz), ms


@pytest.mark.parametrize("tz", OFFSETS, ids=str)
def test_rfc3339_never_raises(tz: dt.tzinfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timefmt, "_LOCAL_TZ", tz)
    year_9999 = 253_402_300_799_000  # OPC UA's largest DateTime, what overflowed east of UTC
    for ms in (year_9999, year_9999 + 999, 2**63 - 1, 2**64, 10**30, -(2**63), -(10**30), -62_135_596_800_000):
        text = timefmt.rfc3339(ms)
        assert dt.datetime.fromisoformat(text).utcoffset() == tz.utcoffset(None), (ms, text)
    assert timefmt.rfc3339(10**30) == timefmt.rfc3339(timefmt.MAX_MS)
    assert timefmt.rfc3339(-(10**30)) == timefmt.rfc3339(timefmt.MIN_MS)


def test_rfc3339_east_of_utc_at_year_9999(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timefmt, "_LOCAL_TZ", dt.timezone(dt.timedelta(hours=8)))
    assert timefmt.rfc3339(253_402_300_799_000) == "9999-12-31T07:59:59.999+08:00"
