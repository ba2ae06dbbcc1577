"""The live view (demo, watch) shows every uplink's state, from the gateway's retained status."""

from __future__ import annotations

import io
import json
from pathlib import Path

from plant import DeviceSpec, simple_points, write_plant
from rich.console import Console

from agent.config.loader import load_config
from agent.demo.liveview import LiveView


def test_every_uplink_state_is_shown(tmp_path: Path) -> None:
    plant = write_plant(tmp_path, "mqtt://127.0.0.1:1883", [DeviceSpec("plc", simple_points("A"))])
    out = io.StringIO()
    view = LiveView(load_config(plant.config), console=Console(file=out, width=160, color_system=None))
    status = {"schema": "hazgate.uplink/1", "state": "online", "version": "x", "started_at": "t",
              "uplinks": {"mqtt": {"state": "up", "acked": 12, "rejected": 0, "last_error": ""},
                          "mem": {"state": "down", "acked": 3, "rejected": 2, "last_error": "HTTP 503"}}}
    view.state.feed("status", json.dumps(status).encode(), True)
    view.console.print(view.render())
    text = out.getvalue()
    assert "uplinks: mqtt up (12 acked) mem down (3 acked, 2 refused, HTTP 503)" in text, text
