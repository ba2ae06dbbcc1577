"""agent/checks.Checker in-process, on a fake clock: every transition, its event fields, restarts.

The end-to-end tests (test_checks_e2e.py) play the same situations through the simulator, the
agent and a real broker; these pin down the edge cases quickly and exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.loader import load_config
from agent.model import Reading
from agent.pipeline.checks.checker import Checker
from agent.pipeline.store import Store

POINTS = """tag,address,type,unit,kind,equipment,eng_min,eng_max,deadband,ll,l,h,hh
TT,hr:0,float32,°C,temperature,,0,200,1.0,,,80,90
LT,hr:2,float32,m,level,,0,12,0,1,2,,
FT,hr:4,float32,m3/h,flow,,,,0.5,,,10,
PT,hr:6,float32,MPa,pressure,,,,0,,,1.0,
GL,hr:8,float32,%LEL,gas_lel,GD1,0,100,0.5,,,20,40
GL_FLT,hr:100.0,bool,,detector_fault,GD1,,,,,,,
GT,hr:10,float32,ppm,gas_ppm,,0,100,0,,,10,20
GO,hr:12,float32,%VOL,gas_ppm,,0,25,0,,19.5,23.5,
GF,hr:14,float32,%LEL,gas_lel,,0,100,0,,,20,40
MV,hr:16,float32,°C,temperature,,,,0,,,500,
B_TT,hr:18,float32,°C,temperature,,0,300,1.0,,,,
B_PT,hr:20,float32,MPa,pressure,,,,0,,,,
B_BYP,hr:101.0,bool,,bypass,,,,,,,,
B_ON,hr:101.1,bool,,interlock_status,,,,,,,,
B_TRIP,hr:101.2,bool,,trip,,,,,,,,
"""

RULES = """
[defaults]
trip_window = "2s"
flatline = "off"

[[alarms]]
tag = "PT"
on_delay = "1s"

[[detectors]]
tag = "GT"
oel = 10.0

[[detectors]]
tag = "GF"
flatline = "5s"
flatline_band = 0.1

[[interlocks]]
id = "IL-B"
name = "B shutdown"
hazard_source = "HS-1"
bypass = "B_BYP"
in_service = "B_ON"
tripped = "B_TRIP"
bypass_max = "10s"
bypass_repeat = "5s"
protects = [ { tag = "B_TT", trip_above = 150.0 }, { tag = "B_PT", trip_below = 0.2 } ]
"""

T0 = 1_800_000_000_000


def make_config(tmp_path: Path, points: str = POINTS, rules: str = RULES):
    (tmp_path / "points.csv").write_text(points, encoding="utf-8")
    (tmp_path / "rules.toml").write_text(rules, encoding="utf-8")
    (tmp_path / "gateway.toml").write_text(
        '[gateway]\nid = "GW-U"\nenterprise_code = "E1"\ndata_dir = "data"\n\n'
        '[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n\n'
        '[[devices]]\nname = "plc"\nprotocol = "modbus-tcp"\nhost = "127.0.0.1"\nport = 5020\n'
        'poll_interval = "1s"\npoints = "points.csv"\n\n[checks]\nrules = "rules.toml"\n', encoding="utf-8")
    return load_config(tmp_path / "gateway.toml")


class Rig:
    """A checker on a fake clock; `poll` feeds readings and returns the events they raised."""

    BASE = {"TT": 50.0, "LT": 5.0, "FT": 5.0, "PT": 0.5, "GL": 1.0, "GL_FLT": False, "GT": 1.0, "GO": 20.9,
            "GF": 1.0, "MV": 20.0, "B_TT": 100.0, "B_PT": 1.0, "B_BYP": False, "B_ON": True, "B_TRIP": False}

    def __init__(self, cfg, active=None, mono: float = 1000.0, wall: int = T0):
        self.cfg = cfg
        self.mono, self.wall = mono, wall
        self.points = {p.tag: p for p in cfg.all_points()}
        self.checker = Checker(cfg.rules, cfg.all_points(), active or [], clock=lambda: self.mono, wall=lambda: self.wall)
        self.state = dict(self.BASE)
        self.upserts: dict[str, tuple] = {}
        self.ticks = 0

    def _live_gf(self, changes: dict) -> None:
        """GF (flat-line after 5 s) wobbles beyond its band unless a test sets it."""
        self.ticks += 1
        if "GF" not in changes:
            self.state["GF"] = 1.0 + (0.25 if self.ticks % 2 else 0.0)

    def poll(self, dt: float = 0.5, **changes) -> list[dict]:
        self.mono += dt
        self.wall += int(round(dt * 1000))
        self._live_gf(changes)
        self.state.update(changes)
        readings = []
        for tag, v in self.state.items():
            bad = v is None
            readings.append(Reading(self.points[tag], self.wall, v, "bad" if bad else "good",
                                    "timeout" if bad else None))
        self.checker.process(readings)
        events, upserts, deletes = self.checker.take()
        for u in upserts:
            self.upserts[u[0]] = u
        for k in deletes:
            self.upserts.pop(k, None)
        return [b for _, b in events]

    def active(self) -> list[tuple]:
        return [(k, kind, subj, start, data) for k, kind, subj, start, data in self.upserts.values()]


POINT_KINDS = ("process_alarm", "gas_alarm", "detector_fault", "unprotected_excursion")


def brief(events: list[dict]) -> list[tuple]:
    out = []
    for e in events:
        what = e.get("level") or e.get("cause") or ""
        about = e["tag"] if e["kind"] in POINT_KINDS else e["interlock"]
        out.append((e["kind"], about, e["state"], what, e["severity"]))
    return out


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(make_config(tmp_path))
    assert r.poll() == []  # a normal plant raises nothing
    return r


def test_high_alarm_raised_escalated_deescalated_cleared_with_deadband(rig: Rig) -> None:
    ev = rig.poll(TT=85.0)
    assert brief(ev) == [("process_alarm", "TT", "raised", "h", "warning")]
    e = ev[0]
    assert (e["value"], e["limit"], e["unit"], e["start"], e["ts"]) == (85.0, 80.0, "°C", e["ts"], e["ts"])
    assert e["id"] == f"process_alarm:TT:raised:{rig.wall}" and e["ts"][-6] in "+-"
    assert rig.poll(TT=89.9) == []
    assert brief(rig.poll(TT=90.0)) == [("process_alarm", "TT", "escalated", "hh", "alarm")]
    assert rig.poll(TT=89.5) == []  # within the deadband of HH
    ev = rig.poll(TT=88.9)
    assert brief(ev) == [("process_alarm", "TT", "deescalated", "h", "warning")]
    assert ev[0]["from_level"] == "hh" and ev[0]["limit"] == 80.0
    assert rig.poll(TT=79.5) == []  # within the deadband of H
    ev = rig.poll(TT=78.9)
    assert brief(ev) == [("process_alarm", "TT", "cleared", "h", "info")]
    assert ev[0]["duration_s"] == 3.0 and "alarm:TT" not in rig.upserts


def test_chattering_value_raises_one_alarm_and_one_clear(rig: Rig) -> None:
    events = []
    for v in [10.2, 9.8, 10.3, 9.6, 10.1, 9.9, 10.4, 9.7] * 5 + [9.0]:
        events += rig.poll(0.2, FT=v)
    assert brief(events) == [("process_alarm", "FT", "raised", "h", "warning"),
                             ("process_alarm", "FT", "cleared", "h", "info")]


def test_low_side_and_a_jump_from_low_to_high(rig: Rig) -> None:
    assert brief(rig.poll(LT=1.5)) == [("process_alarm", "LT", "raised", "l", "warning")]
    assert brief(rig.poll(LT=0.5)) == [("process_alarm", "LT", "escalated", "ll", "alarm")]
    assert brief(rig.poll(LT=5.0)) == [("process_alarm", "LT", "cleared", "ll", "info")]
    rig.poll(TT=10.0)
    assert rig.poll(TT=10.0) == []  # TT has no low limits
    rig.poll(FT=11.0)
    assert brief(rig.poll(FT=5.0)) == [("process_alarm", "FT", "cleared", "h", "info")]


def test_on_delay_ignores_a_short_excursion_and_dates_a_long_one_from_its_start(rig: Rig) -> None:
    assert rig.poll(0.5, PT=1.25) == []
    assert rig.poll(0.4, PT=0.5) == []  # back within 0.9 s: no alarm
    first = rig.poll(0.5, PT=1.25)
    assert first == []
    start_wall = rig.wall
    assert rig.poll(0.5, PT=1.5) == []
    ev = rig.poll(0.5, PT=1.5)  # 1.0 s after the crossing
    assert brief(ev) == [("process_alarm", "PT", "raised", "h", "warning")]
    from agent.common.timefmt import rfc3339
    assert ev[0]["start"] == rfc3339(start_wall) and ev[0]["ts"] == rfc3339(rig.wall)
    assert brief(rig.poll(0.5, PT=0.5)) == [("process_alarm", "PT", "cleared", "h", "info")]  # clears at once


def test_bad_readings_neither_raise_nor_clear(rig: Rig) -> None:
    rig.poll(TT=85.0)
    assert brief(rig.poll(TT=None)) == []
    assert rig.poll(TT=None) == []
    assert rig.poll(TT=85.0) == []  # still the same alarm, not a new one
    assert brief(rig.poll(TT=50.0)) == [("process_alarm", "TT", "cleared", "h", "info")]


def test_gas_levels_severities_and_classes(rig: Rig) -> None:
    ev = rig.poll(GL=22.0)
    assert brief(ev) == [("gas_alarm", "GL", "raised", "h", "alarm")]
    assert (ev[0]["gas"], ev[0]["alarm_level"], ev[0]["equipment"]) == ("combustible", 1, "GD1")
    ev = rig.poll(GL=45.0)
    assert brief(ev) == [("gas_alarm", "GL", "escalated", "hh", "critical")] and ev[0]["alarm_level"] == 2
    assert brief(rig.poll(GL=1.0)) == [("gas_alarm", "GL", "cleared", "hh", "info")]
    ev = rig.poll(GT=12.0)
    assert brief(ev) == [("gas_alarm", "GT", "raised", "h", "alarm")] and ev[0]["gas"] == "toxic"
    ev = rig.poll(GO=18.0)
    assert brief(ev) == [("gas_alarm", "GO", "raised", "l", "alarm")]
    assert ev[0]["gas"] == "oxygen" and "alarm_level" not in ev[0] and ev[0]["limit"] == 19.5


def test_detector_fault_point_found_by_equipment_range_and_no_data(rig: Rig) -> None:
    ev = rig.poll(GL_FLT=True)
    assert brief(ev) == [("detector_fault", "GL", "raised", "fault", "alarm")]
    assert ev[0]["fault_tag"] == "GL_FLT"
    assert brief(rig.poll(GL_FLT=False)) == [("detector_fault", "GL", "cleared", "fault", "info")]
    ev = rig.poll(GL=-6.0)  # below -5 % of 0-100
    assert brief(ev) == [("detector_fault", "GL", "raised", "under_range", "alarm")] and ev[0]["limit"] == -5.0
    assert rig.poll(GL=-4.8) == []  # hysteresis: 0.5 % of the range
    assert brief(rig.poll(GL=0.0)) == [("detector_fault", "GL", "cleared", "under_range", "info")]
    ev = rig.poll(GL=106.0)
    assert brief(ev) == [("gas_alarm", "GL", "raised", "hh", "critical"),
                         ("detector_fault", "GL", "raised", "over_range", "alarm")]
    rig.poll(GL=1.0)
    ev = rig.poll(GL=None)
    assert brief(ev) == [("detector_fault", "GL", "raised", "no_data", "warning")] and ev[0]["reason"] == "timeout"
    assert brief(rig.poll(GL=1.0)) == [("detector_fault", "GL", "cleared", "no_data", "info")]


def test_flatline_only_while_others_move(rig: Rig) -> None:
    # everything still (a quiet plant): a flat detector is not reported
    for _ in range(14):
        assert rig.poll(GF=3.0) == []
    # others move, GF stays within its band of 0.1
    events = []
    for i in range(14):
        events += rig.poll(GF=3.0 + (0.05 if i % 2 else 0.0), MV=20.0 + i)
    assert brief(events) == [("detector_fault", "GF", "raised", "flatline", "alarm")]
    assert events[0]["window_s"] == 5.0
    assert brief(rig.poll(GF=3.5)) == [("detector_fault", "GF", "cleared", "flatline", "info")]


def test_bypass_on_overdue_repeated_and_off(rig: Rig) -> None:
    ev = rig.poll(B_BYP=True)
    assert brief(ev) == [("interlock_bypass", "IL-B", "on", "", "critical")] and ev[0]["declared"] is False
    assert (ev[0]["tag"], ev[0]["name"], ev[0]["hazard_source"], ev[0]["bypass_max_s"]) == ("B_BYP", "B shutdown", "HS-1", 10.0)
    start = ev[0]["start"]
    events = []
    for _ in range(32):  # 16 s
        events += rig.poll(0.5)
    assert brief(events) == [("interlock_bypass", "IL-B", "overdue", "", "alarm")] * 2
    assert [e["repeat"] for e in events] == [1, 2] and [e["age_s"] for e in events] == [10.0, 15.0]
    assert all(e["start"] == start and e["limit"] == 10.0 for e in events)
    ev = rig.poll(B_BYP=False)
    assert brief(ev) == [("interlock_bypass", "IL-B", "off", "", "info")]
    assert ev[0]["start"] == start and ev[0]["duration_s"] == 16.5


def test_unprotected_excursion_while_bypassed_then_while_out_of_service(rig: Rig) -> None:
    rig.poll(B_BYP=True)
    ev = rig.poll(B_TT=155.0)
    assert brief(ev) == [("unprotected_excursion", "B_TT", "raised", "", "critical")]
    assert (ev[0]["interlock"], ev[0]["value"], ev[0]["limit"], ev[0]["because"]) == ("IL-B", 155.0, 150.0, ["bypassed"])
    assert rig.poll(B_TT=149.5) == []  # deadband 1.0
    ev = rig.poll(B_TT=100.0)
    assert brief(ev) == [("unprotected_excursion", "B_TT", "cleared", "", "info")]
    assert ev[0]["why"] == "value back within its trip limit"
    rig.poll(B_BYP=False)
    assert brief(rig.poll(B_ON=False)) == [("interlock_out_of_service", "IL-B", "raised", "", "alarm")]
    ev = rig.poll(B_PT=0.1)  # trip_below 0.2
    assert brief(ev) == [("unprotected_excursion", "B_PT", "raised", "", "critical")]
    assert ev[0]["because"] == ["out_of_service"] and ev[0]["direction"] == "below"
    ev = rig.poll(B_ON=True)
    assert brief(ev) == [("interlock_out_of_service", "IL-B", "cleared", "", "info"),
                         ("unprotected_excursion", "B_PT", "cleared", "", "info")]
    assert ev[1]["why"] == "interlock back in service"


def test_trip_genuine_spurious_and_undecided(rig: Rig) -> None:
    rig.poll(B_TT=160.0)  # beyond, in service and not bypassed: no excursion event
    ev = rig.poll(0.5, B_TRIP=True, B_TT=120.0)  # value already falling: beyond 0.5 s ago
    assert brief(ev) == [("interlock_trip", "IL-B", "tripped", "", "alarm")]
    assert (ev[0]["tag"], ev[0]["process_tag"], ev[0]["limit"]) == ("B_TRIP", "B_TT", 150.0)
    assert brief(rig.poll(B_TRIP=False)) == [("interlock_trip", "IL-B", "reset", "", "info")]
    rig.poll(3.0)
    ev = rig.poll(B_TRIP=True)
    assert brief(ev) == [("interlock_trip", "IL-B", "spurious", "", "alarm")]
    assert [p["tag"] for p in ev[0]["protected"]] == ["B_TT", "B_PT"]
    rig.poll(B_TRIP=False)
    rig.poll(3.0, B_PT=None)
    ev = rig.poll(B_TRIP=True)
    assert [(e["kind"], e["state"]) for e in ev] == [("interlock_trip", "tripped")] and ev[0]["process"] == "unknown"


def test_unknown_when_a_state_or_process_point_goes_bad(rig: Rig) -> None:
    rig.poll(B_BYP=True)
    ev = rig.poll(B_BYP=None, B_TT=None)
    assert brief(ev) == [("interlock_unknown", "IL-B", "raised", "", "alarm")]
    assert ev[0]["tags"] == ["B_BYP", "B_TT"] and ev[0]["reason"] == "timeout"
    assert rig.poll(B_BYP=None, B_TT=None) == []
    assert rig.poll(B_BYP=True, B_TT=None) == []  # still unknown: one point is bad
    ev = rig.poll(B_TT=100.0)
    assert brief(ev) == [("interlock_unknown", "IL-B", "cleared", "", "info")]  # the bypass was never "off"


def test_restart_restores_active_conditions_without_announcing_them(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    a = Rig(cfg)
    a.poll()
    a.poll(B_BYP=True, TT=95.0, GL_FLT=True)
    a.poll(B_TT=160.0, B_ON=False)
    saved = a.active()
    assert {k for k, *_ in saved} == {"interlock:IL-B:bypass", "alarm:TT", "detector:GL:fault",
                                      "interlock:IL-B:out_of_service", "interlock:IL-B:excursion:B_TT"}
    bypass_start = next(s for k, _, _, s, _ in saved if k == "interlock:IL-B:bypass")
    # a new process 4 s later (monotonic clock restarted), the plant unchanged
    b = Rig(cfg, active=saved, mono=5.0, wall=a.wall + 4000)
    b.state = dict(a.state)
    assert b.poll() == []  # nothing re-announced
    events = []
    for _ in range(10):  # the bypass has been on 5 s now; overdue at 10 s from its real start
        events += b.poll(0.5)
    assert brief(events) == [("interlock_bypass", "IL-B", "overdue", "", "alarm")]
    assert events[0]["age_s"] == 10.0
    ev = b.poll(B_BYP=False, TT=50.0)
    assert ("interlock_bypass", "IL-B", "off", "", "info") in brief(ev)
    off = next(e for e in ev if e["state"] == "off")
    assert off["duration_s"] == (b.wall - bypass_start) / 1000


def test_saved_conditions_that_no_longer_apply_are_dropped(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    c = Checker(cfg.rules, cfg.all_points(), [("alarm:GONE", "process_alarm", "GONE", T0, {"level": "h"}),
                      ("interlock:IL-X:bypass", "interlock_bypass", "IL-X", T0, {})])
    events, upserts, deletes = c.take()
    assert events == [] and upserts == [] and sorted(deletes) == ["alarm:GONE", "interlock:IL-X:bypass"]


def test_store_keeps_events_and_active_state_together(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.record_checks([(T0, {"id": "a", "kind": "k"})], [("interlock:X:bypass", "interlock_bypass", "X", T0, {"overdue": 1})], [])
    store.record_checks([], [("alarm:T", "process_alarm", "T", T0 + 5, {"level": "h"})], ["nothing"])
    assert store.active() == [("interlock:X:bypass", "interlock_bypass", "X", T0, {"overdue": 1}),
                              ("alarm:T", "process_alarm", "T", T0 + 5, {"level": "h"})]
    store.record_checks([], [], ["alarm:T"])
    assert [k for k, *_ in store.active()] == ["interlock:X:bypass"]
    assert store.stats()["events_buffered"] == 1
    store.close()


def test_a_poll_without_watched_points_costs_no_allocation(rig: Rig) -> None:
    """Steady state: process() returns False and leaves nothing to take."""
    c = rig.checker
    readings = [Reading(rig.points[t], T0, v, "good", None) for t, v in rig.state.items()]
    assert c.process(readings) is False and not c.pending


def test_uncertain_only_for_the_clock_is_still_checked(rig: Rig) -> None:
    """An unsynchronized gateway clock makes readings uncertain; their values still count."""
    p = rig.points["TT"]
    c = Checker(rig.cfg.rules, rig.cfg.all_points(), [])
    c.process([Reading(p, T0, 85.0, "uncertain", "clock_unsynchronized")])
    assert brief([b for _, b in c.take()[0]]) == [("process_alarm", "TT", "raised", "h", "warning")]
    c.process([Reading(p, T0 + 500, 50.0, "uncertain", "device says uncertain")])
    assert c.take()[0] == []  # not cleared on an uncertain value
