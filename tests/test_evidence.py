"""The evidence record (issue 18, item 5): a day three days ago is played through the real
checks into a real store (the wall clock is the one thing faked: a day that has passed cannot
be run here), then the store's bounds evict every reading of it: its in-service figures, counts
and episodes stay as they were. Its retention bound prunes it, and a corrupt evidence file is
set aside without touching the store. The day's `inservice_daily` event is raised once."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from plant import DeviceSpec, PointSpec, write_plant

import agent.pipeline.evidence as evidence_mod
import agent.pipeline.store as store_mod
from agent.config.loader import load_config
from agent.model import Reading
from agent.pipeline.checks.checker import Checker
from agent.pipeline.declarations import Declaration, in_force
from agent.pipeline.evidence import EVIDENCE_NAME, DayClock
from agent.pipeline.store import Store
from agent.tools.report_figures import build

RULES = """
[[interlocks]]
id = "IL-1"
name = "test interlock"
bypass = "BYP"
bypass_max = "4m"
protects = [ { tag = "TT", trip_above = 100.0 } ]

[[detectors]]
tag = "GT"
fault = "GT_F"
"""
HOUR = 3_600_000
BYPASS = (600_000, 900_000)  # ms after the start: 300 s of a 3 600 s hour
FAULT = (100_000, 130_000)  # the gas detector's fault output, 30 s


def write_config(tmp_path: Path) -> Path:
    points = [PointSpec("BYP", "hr:0.0", "bool", kind="bypass"),
              PointSpec("TT", "hr:2", "float32", unit="°C", kind="temperature"),
              PointSpec("GT", "hr:4", "float32", unit="%LEL", kind="gas_lel",
                        columns={"eng_min": "0", "eng_max": "100", "h": "20", "hh": "40"}),
              PointSpec("GT_F", "hr:0.1", "bool", kind="detector_fault")]
    plant = write_plant(tmp_path, "mqtt://127.0.0.1:1", [DeviceSpec("plc", points, poll_interval="10s")])
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    with plant.config.open("a", encoding="utf-8") as f:
        f.write('\n[checks]\nrules = "rules.toml"\n')
    return plant.config


class FakeWall:
    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def play_hour(cfg, t0: int, monkeypatch: pytest.MonkeyPatch,
              declare: tuple[tuple[int, str, str], ...] = ()) -> None:
    """One hour polled every 10 s through the checks into the store, at wall time t0..; `declare`:
    (ms after t0, stop | restore, subject), handed to the checks as the ledger would."""
    wall = FakeWall(t0)
    monkeypatch.setattr(store_mod, "now_ms", wall)
    monkeypatch.setattr(evidence_mod, "now_ms", wall)
    points = {p.tag: p for p in cfg.all_points()}
    checker = Checker(cfg.rules, cfg.all_points(), clock=lambda: wall.ms / 1000, wall=wall)
    store = Store(cfg.data_dir, timezone=cfg.timezone)
    pids = store.pids([(p.tag, p.unit, p.type) for p in points.values()])
    rows: list[Declaration] = []
    for at in range(0, HOUR + 1, 10_000):
        wall.ms = ts = t0 + at
        for n, (when, action, subject) in enumerate(declare):
            if when == at:
                since = next((d.since_ms for d in rows if d.subject == subject), ts) if action == "restore" else ts
                rows.append(Declaration(n + 1, subject, action, "permit 18", "Wang Li", ts, None, "", since, False))
                checker.declare(rows, in_force(rows))
        values = {"BYP": BYPASS[0] <= at < BYPASS[1], "TT": 50.0, "GT": 2.0 + (at // 10_000) % 3,
                  "GT_F": FAULT[0] <= at < FAULT[1]}
        readings = [Reading(points[t], ts, v, "good", None) for t, v in values.items()]
        if checker.process(readings):
            store.record_checks(*checker.take())
        store.add_readings([(r.ts_ms, r.point.tag, r.value, 0, None) for r in readings], pids)
    store.close()
    monkeypatch.undo()


def figures(cfg, t0: int) -> dict:
    store = Store(cfg.data_dir, readonly=True)
    try:
        return build(cfg, store.db, t0, t0 + HOUR).json
    finally:
        store.close()


def test_eviction_of_readings_leaves_the_evicted_days_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(write_config(tmp_path))
    day, lo, _ = DayClock(cfg.timezone).span(store_mod.now_ms() - 3 * 86_400_000)
    t0 = lo + 10 * HOUR
    play_hour(cfg, t0, monkeypatch)
    before = figures(cfg, t0)
    (il,) = before["interlocks"]
    assert il["seconds"]["bypassed_undeclared"] == pytest.approx(300, abs=10)
    assert il["in_service_share"] == pytest.approx(3300 / 3600, abs=10 / 3600)
    assert [e["state"] for e in il["episodes"]] == ["bypassed_undeclared"]
    assert il["episodes"][0]["overdue"] is True  # 300 s beyond bypass_max = 4m
    (gt,) = before["detectors"]
    assert gt["seconds"]["fault"] == pytest.approx(30, abs=10)
    assert gt["alive_share"] == pytest.approx(3570 / 3600, abs=10 / 3600)
    stored = {p["tag"]: p["stored"] for p in before["points"]}
    assert stored == dict.fromkeys(("BYP", "TT", "GT", "GT_F"), 361)
    assert before["points"][0]["longest_hole_s"] == pytest.approx(10, abs=0.01)

    store = Store(cfg.data_dir)
    evicted = store.enforce_limits(1 << 30, 86_400.0)  # readings older than a day go
    assert evicted and evicted[0]["kind"] == "buffer_eviction"
    assert store.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0
    store.close()
    after = figures(cfg, t0)
    assert after["interlocks"] == before["interlocks"]
    assert after["detectors"] == before["detectors"]
    assert after["points"] == before["points"]
    assert after["daily"] == before["daily"]
    assert after["uplinks"][0]["evicted"] == 4 * 361  # nothing was delivered: the mqtt uplink lost them

    store = Store(cfg.data_dir)
    store.enforce_limits(1 << 30, 86_400.0, evidence_age_s=86_400.0)  # the evidence bound: a day
    store.close()
    pruned = figures(cfg, t0)
    assert pruned["points"][0]["stored"] == 0
    assert pruned["interlocks"][0]["episodes"] == []
    assert day < DayClock(cfg.timezone).span(store_mod.now_ms())[0]


def test_declared_stops_split_the_bypass_and_count_for_the_detector(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(write_config(tmp_path))
    _, lo, _ = DayClock(cfg.timezone).span(store_mod.now_ms() - 3 * 86_400_000)
    t0 = lo + 10 * HOUR
    play_hour(cfg, t0, monkeypatch, declare=((700_000, "stop", "IL-1"), (800_000, "restore", "IL-1"),
                                             (2_000_000, "stop", "GT"), (2_300_000, "restore", "GT")))
    f = figures(cfg, t0)
    (il,) = f["interlocks"]
    assert il["seconds"]["bypassed_declared"] == pytest.approx(100, abs=10), il
    assert il["seconds"]["bypassed_undeclared"] == pytest.approx(200, abs=10), il
    assert [(e["state"], e["declaration"]) for e in il["episodes"]] == [
        ("bypassed_undeclared", None), ("bypassed_declared", 1), ("bypassed_undeclared", None)]
    assert il["in_service_share"] == pytest.approx(3300 / 3600, abs=10 / 3600)  # a bypass, declared or not
    (gt,) = f["detectors"]
    assert gt["seconds"]["declared_stop"] == pytest.approx(300, abs=10), gt
    assert gt["alive_share"] == pytest.approx(3570 / 3600, abs=10 / 3600)  # a declared stop counts as alive
    assert "declared_stop" in [e["state"] for e in gt["episodes"]]


def test_inservice_daily_event_for_the_day_before_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(write_config(tmp_path))
    clock = DayClock(cfg.timezone)
    day, lo, hi = clock.span(store_mod.now_ms() - 3 * 86_400_000)
    play_hour(cfg, lo + 10 * HOUR, monkeypatch)
    store = Store(cfg.data_dir, timezone=cfg.timezone)
    try:
        assert store.inservice_daily(cfg.rules, cfg.all_points(), lo + 5 * 60_000) is None  # the day before: not run
        event = store.inservice_daily(cfg.rules, cfg.all_points(), hi + 5 * 60_000)  # 00:05 the day after
        assert event is not None and event["kind"] == "inservice_daily" and event["source"] == "gateway"
        assert event["day"] == f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}"
        whole = (hi - lo) / 1000  # the other 23 hours the agent did not run: unknown, no data
        assert event["interlocks"]["IL-1"] == pytest.approx(3300 / whole, abs=10 / whole)
        assert event["detectors"]["GT"] == pytest.approx(3570 / whole, abs=10 / whole)
        assert event["plant"] == pytest.approx(6870 / (2 * whole), abs=20 / whole)
        assert store.inservice_daily(cfg.rules, cfg.all_points(), hi + 6 * 60_000) is None  # once
        bodies = [orjson.loads(b) for (b,) in store.db.execute("SELECT body FROM events")]
        assert [b["id"] for b in bodies if b["kind"] == "inservice_daily"] == [event["id"]]
    finally:
        store.close()


def test_a_corrupt_evidence_file_is_set_aside_and_the_store_kept(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path))
    store = Store(cfg.data_dir)
    store.add_event(store_mod.now_ms(), {"id": "x", "kind": "test"})
    store.close()
    (cfg.data_dir / EVIDENCE_NAME).write_bytes(b"not a database at all" * 100)
    for suffix in ("-wal", "-shm"):
        (cfg.data_dir / (EVIDENCE_NAME + suffix)).unlink(missing_ok=True)
    store = Store(cfg.data_dir)
    try:
        assert store.set_aside is None
        assert store.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
        assert list(cfg.data_dir.glob(EVIDENCE_NAME + ".corrupt-*"))
        assert store.db.execute("SELECT COUNT(*) FROM ev.intervals").fetchone()[0] == 0
    finally:
        store.close()
