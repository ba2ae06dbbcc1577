"""Declarations: the ledger file, `hazgate declare`, and what the checks and the normalizer make
of a declared stop (on the fake clock of test_checks_unit's Rig)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import HAZGATE, ROOT
from test_checks_unit import T0, Rig, make_config
from test_checks_unit import brief as unit_brief

from agent.model import Sample
from agent.pipeline.declarations import DeclarationError, Ledger, in_force
from agent.pipeline.normalize import Normalizer


@pytest.fixture
def cfg(tmp_path: Path):
    return make_config(tmp_path)


def ledger_of(cfg) -> Ledger:
    return Ledger(cfg.data_dir)


def brief(events: list[dict]) -> list[tuple]:
    """test_checks_unit's brief, with declarations (about their subject)."""
    return [("declaration", e["subject"], e["state"], "", e["severity"]) if e["kind"] == "declaration"
            else unit_brief([e])[0] for e in events]


def declare(rig: Rig, ledger: Ledger) -> list[int]:
    """What the check stage does when the file changed (it marks them once the events are stored)."""
    rows = ledger.rows()
    ids = rig.checker.declare(rows, in_force(rows))
    ledger.mark_announced(ids)
    return ids


def test_ledger_stops_restores_and_refuses_what_makes_no_sense(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "data")
    d = ledger.stop("GL", "calibration, permit 17", "Wang", T0, T0 + 3_600_000)
    assert (d.subject, d.state, d.since_ms, d.until_ms, d.announced) == ("GL", "stopped", T0, T0 + 3_600_000, False)
    with pytest.raises(DeclarationError, match="already declared stopped"):
        ledger.stop("GL", "again", "Li", T0 + 1, None)
    with pytest.raises(DeclarationError, match="not declared stopped"):
        ledger.restore("TT", "Li", "", T0 + 2)
    r = ledger.restore("GL", "Li", "calibrated", T0 + 60_000)
    assert (r.state, r.since_ms, r.note, r.by) == ("restored", T0, "calibrated", "Li")
    ledger.mark_announced([d.id])
    ledger.close()
    again = Ledger(tmp_path / "data")  # durable, announced flags kept
    assert [(x.id, x.announced) for x in again.rows()] == [(d.id, True), (r.id, False)]
    assert again.active() == {}
    again.close()


def test_a_declared_detector_raises_no_fault_and_its_active_faults_end(cfg) -> None:
    rig, ledger = Rig(cfg), ledger_of(cfg)
    rig.poll()
    assert brief(rig.poll(GL_FLT=True)) == [("detector_fault", "GL", "raised", "fault", "alarm")]
    ledger.stop("GL", "calibration", "Wang", rig.wall, None)
    ids = declare(rig, ledger)
    events, _, _ = rig.checker.take()
    bodies = [b for _, b in events]
    assert brief(bodies) == [("declaration", "GL", "stopped", "", "info"),
                             ("detector_fault", "GL", "cleared", "fault", "info")]
    assert bodies[0]["tag"] == "GL" and bodies[0]["by"] == "Wang" and bodies[0]["reason"] == "calibration"
    assert bodies[1]["declared_stop"] is True and len(ids) == 1
    # no data and its fault point on again: silent while declared
    assert rig.poll(GL=None) == [] and rig.poll(GL_FLT=True) == []
    ledger.restore("GL", "Li", "done", rig.wall)
    declare(rig, ledger)
    events, _, _ = rig.checker.take()
    assert brief([b for _, b in events]) == [("declaration", "GL", "restored", "", "info")]
    assert brief(rig.poll(GL=1.0)) == [("detector_fault", "GL", "raised", "fault", "alarm")]  # still faulty
    ledger.close()


def test_an_undeclared_bypass_is_critical_and_a_declared_one_is_not(cfg) -> None:
    rig, ledger = Rig(cfg), ledger_of(cfg)
    rig.poll()
    ev = rig.poll(B_BYP=True)
    assert brief(ev) == [("interlock_bypass", "IL-B", "on", "", "critical")] and ev[0]["declared"] is False
    ledger.stop("IL-B", "permit HS-2026-118", "Zhao", rig.wall, None)  # declared while bypassed
    declare(rig, ledger)
    bodies = [b for _, b in rig.checker.take()[0]]
    assert brief(bodies) == [("declaration", "IL-B", "stopped", "", "info"),
                             ("interlock_bypass", "IL-B", "declared", "", "warning")]
    assert bodies[0]["interlock"] == "IL-B" and bodies[1]["by"] == "Zhao"
    assert brief(rig.poll(B_BYP=False)) == [("interlock_bypass", "IL-B", "off", "", "info")]
    ev = rig.poll(B_BYP=True)  # a new bypass under the declaration
    assert brief(ev) == [("interlock_bypass", "IL-B", "on", "", "warning")]
    assert ev[0]["declared"] is True and ev[0]["reason"] == "permit HS-2026-118"
    ledger.restore("IL-B", "Zhao", "", rig.wall)  # the permit ends, the bypass stays: critical
    declare(rig, ledger)
    bodies = [b for _, b in rig.checker.take()[0]]
    assert brief(bodies) == [("declaration", "IL-B", "restored", "", "info"),
                             ("interlock_bypass", "IL-B", "undeclared", "", "critical")]
    ledger.close()


def test_an_expired_declaration_is_escalated_once_even_across_a_restart(cfg) -> None:
    rig, ledger = Rig(cfg), ledger_of(cfg)
    rig.poll()
    ledger.stop("GT", "sensor swap", "Wang", rig.wall, rig.wall + 2000)
    declare(rig, ledger)
    rig.checker.take()
    events = []
    for _ in range(8):  # 4 s
        events += rig.poll(0.5)
    assert brief(events) == [("declaration", "GT", "expired", "", "alarm")]
    assert events[0]["until"] is not None
    restarted = Rig(cfg, active=rig.active(), mono=rig.mono, wall=rig.wall)
    declare(restarted, ledger)
    assert restarted.checker.take()[0] == []  # announced and escalated before: nothing again
    assert restarted.poll() == []
    ledger.restore("GT", "Wang", "", restarted.wall)
    declare(restarted, ledger)
    _, _, deletes = restarted.checker.take()
    assert "declaration:GT:expired" in deletes
    ledger.close()


def test_readings_of_a_declared_point_flow_on_uncertain_declared_stop(cfg) -> None:
    points = {p.tag: p for p in cfg.all_points()}
    declared = {"GL"}
    every, report = Normalizer(60, declared).process(
        [Sample(points["GL"], 30), Sample(points["TT"], 50), Sample(points["GT"], None, "bad", "timeout")], T0)
    assert [(r.point.tag, r.quality, r.reason) for r in every] == [
        ("GL", "uncertain", "declared_stop"), ("TT", "good", None), ("GT", "bad", "timeout")]
    assert report == every


def run_declare(cfg_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*HAZGATE, "declare", "-c", str(cfg_path), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TZ": "UTC"})


def test_declare_cli_stop_list_restore_and_clear_errors(cfg) -> None:
    path = cfg.path
    bad = run_declare(path, "stop", "NOPE", "--reason", "x", "--by", "me")
    assert bad.returncode == 2 and "'NOPE' is neither a point tag nor an interlock id" in bad.stderr
    assert "valid: e.g. IL-B" in bad.stderr
    assert run_declare(path, "stop", "GL", "--by", "me").returncode == 2  # no reason
    late = run_declare(path, "stop", "GL", "--reason", "cal", "--by", "me", "--until", "tomorrow")
    assert late.returncode == 2 and "neither a time nor a duration" in late.stderr
    ok = run_declare(path, "stop", "GL", "--reason", "calibration", "--by", "Wang", "--until", "2h")
    assert ok.returncode == 0 and "point GL stopped by Wang" in ok.stdout, ok.stderr
    again = run_declare(path, "stop", "GL", "--reason", "again", "--by", "Li")
    assert again.returncode == 1 and "already declared stopped" in again.stderr
    listed = run_declare(path, "list")
    assert listed.returncode == 0 and "GL" in listed.stdout and "reason: calibration" in listed.stdout
    assert run_declare(path, "restore", "GL", "--by", "Wang", "--note", "passed").returncode == 0
    assert "no declared stop in force" in run_declare(path, "list").stdout
    history = run_declare(path, "list", "--all").stdout.splitlines()
    assert [line.split()[2] for line in history] == ["stopped", "restored"]
