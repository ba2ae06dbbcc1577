"""Gas detector health: fault point, out of range, flat-line while others move, no good data."""

from __future__ import annotations

from typing import Any

from agent.common.timefmt import rfc3339
from agent.pipeline.checks.watched import Watched

RANGE_MARGIN = 0.05  # a detector reading beyond -5 % / 105 % of its range is out of service
RANGE_HYSTERESIS = 0.005  # back inside by 0.5 % of the range before that clears


class Detector:
    __slots__ = ("w", "gas", "lo", "hi", "hyst", "window", "band", "anchor", "anchor_mono", "anchor_ts", "active")

    def __init__(self, w: Watched, gas: str, window: float, band: float):
        p = w.point
        self.w, self.gas, self.window, self.band = w, gas, window, band
        self.lo = self.hi = None
        self.hyst = 0.0
        if p.eng_min is not None and p.eng_max is not None:
            span = p.eng_max - p.eng_min
            self.lo, self.hi = p.eng_min - RANGE_MARGIN * span, p.eng_max + RANGE_MARGIN * span
            self.hyst = RANGE_HYSTERESIS * span
        self.anchor = 0.0
        self.anchor_mono = 0.0
        self.anchor_ts = 0
        self.active: dict[str, int] = {}  # cause -> start ms


class DetectorChecks:
    """Mixed into Checker, whose state (`ops`, `_emit`, ...) these methods use."""

    def _detector(self, det: Detector, good: bool, v: Any, ts: int, now: float) -> None:
        active = det.active
        if not good:
            if det.w.reason != "declared_stop":  # read under a stop that has just ended: not a fault
                self._condition(det, "no_data", True, ts, {"reason": det.w.reason or "bad quality"})
            return
        if active:
            self._condition(det, "no_data", False, ts, {})
        if det.lo is not None:
            under = v < (det.lo + det.hyst if "under_range" in active else det.lo)
            over = v > (det.hi - det.hyst if "over_range" in active else det.hi)  # type: ignore[operator]
            if under or "under_range" in active:
                self._condition(det, "under_range", under, ts, {"value": v, "limit": det.lo})
            if over or "over_range" in active:
                self._condition(det, "over_range", over, ts, {"value": v, "limit": det.hi})
        if det.window <= 0:
            return
        if det.anchor_ts == 0 or abs(v - det.anchor) > det.band:
            det.anchor, det.anchor_mono, det.anchor_ts = v, now, ts
            if "flatline" in active:
                self._condition(det, "flatline", False, ts, {"value": v})
        elif "flatline" not in active and now - det.anchor_mono >= det.window and self._others_moved(det.anchor_mono, det.w.tag):
            self._condition(det, "flatline", True, ts, {"value": v, "window_s": det.window, "band": det.band},
                            start=det.anchor_ts)

    def _others_moved(self, since: float, tag: str) -> bool:
        return self._m1_t > since if self._m1_tag != tag else self._m2_t > since

    def _condition(self, det: Detector, cause: str, on: bool, ts: int, fields: dict, start: int | None = None) -> None:
        active = det.active
        if on == (cause in active) or (on and det.w.tag in self.declared):  # a declared stop raises none
            return
        w = det.w
        key = f"detector:{w.tag}:{cause}"
        body = self._point_fields(w)
        body.update(cause=cause, gas=det.gas)
        body.update(fields)
        if on:
            active[cause] = start if start is not None else ts
            body["start"] = rfc3339(active[cause])
            self._emit(ts, "detector_fault", "warning" if cause == "no_data" else "alarm", "raised", f"{w.tag}/{cause}", body)
            self.ops[key] = (key, "detector_fault", w.tag, active[cause], {"cause": cause})
        else:
            began = active.pop(cause)
            body.update(start=rfc3339(began), duration_s=round(max(0, ts - began) / 1000, 3))
            self._emit(ts, "detector_fault", "info", "cleared", f"{w.tag}/{cause}", body)
            self.ops[key] = None
