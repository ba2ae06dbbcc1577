"""/healthz tells a far end that takes messages and never acknowledges them (issue 19 item 8):
the oldest message's wait is a warning after the uplink's `ack_warning` (MQTT: 1 keepalive) and
a problem after its `ack_deadline` (3 keepalives), when the drain drops the connection."""

from __future__ import annotations

import time
from pathlib import Path

from plant import DeviceSpec, simple_points, write_plant

from agent.config.loader import load_config
from agent.service.notify import Notifier
from agent.service.run import Service


def test_unacknowledged_age_is_a_warning_then_a_problem(tmp_path: Path) -> None:
    plant = write_plant(tmp_path, "mqtt://127.0.0.1:1883", [DeviceSpec("plc", simple_points("A"))], keepalive="10s")
    service = Service(load_config(plant.config), Notifier())
    stats = service.agent.uplinks[0].stats
    assert (stats.ack_warning, stats.ack_deadline) == (10.0, 30.0)
    report = service.health_report()
    assert not any("unacknowledged" in p for p in report["problems"] + report["warnings"]), report
    now = time.monotonic()
    stats.unacked_since = now - 12  # the oldest message in flight went 12 s ago
    report = service.health_report()
    assert any(w.startswith("uplink mqtt: oldest message unacknowledged for 12s") for w in report["warnings"]), report
    stats.unacked_since = now - 31
    report = service.health_report()
    assert any(p.startswith("uplink mqtt: oldest message unacknowledged for 31s (deadline 30s)")
               for p in report["problems"]), report
    assert "hazgate_uplink_oldest_unacked_age_seconds{uplink=\"mqtt\"} 31" in service.render_metrics()
