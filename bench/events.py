"""Event latency: from a register change to the event at the subscriber.

The simulated event points step between 10 and 90 (hh = 80) at scheduled wall-clock instants
(scenario `t0`), so each change time is known exactly. Two figures per event:

- poll to wire: arrival minus the event's `ts`, the collection time of the poll that saw the
  change (the issue's target: p99 <= 50 ms);
- change to wire: arrival minus the scheduled step (up for `raised`, down for `cleared`); it
  adds up to one poll interval, and any delay in starting the poll.

The raw baseline has no checks: its figure is the same two latencies for the readings of the
same registers, published by the raw loop at once after each poll (the transition reading
for change to wire).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bench.common import Plant, quantile


@dataclass
class Latency:
    n: int
    poll_p50: float
    poll_p99: float
    change_p50: float
    change_p99: float


def _lat(poll: list[float], change: list[float]) -> Latency:
    return Latency(len(poll), quantile(poll, 0.5), quantile(poll, 0.99),
                   quantile(change, 0.5), quantile(change, 0.99))


def agent_events(plant: Plant, events: list[tuple[float, dict]], t_from: float = 0.0,
                 t_to: float = float("inf"), since: float = 0.0) -> Latency:
    """Alarm events of the event points that arrived within [t_from, t_to), for changes made
    after `since` (an alarm found active at the agent's first poll is no change it saw)."""
    each = event_latencies(plant, events, t_from, t_to, since)
    return _lat([p for _, p, _ in each], [c for _, _, c in each])


def event_latencies(plant: Plant, events: list[tuple[float, dict]], t_from: float = 0.0,
                    t_to: float = float("inf"), since: float = 0.0) -> list[tuple[float, float, float]]:
    """(arrival, poll to wire, change to wire) of each event `agent_events` counts."""
    tags = plant.change_times()
    out = []
    for at, ev in events:
        if not t_from <= at < t_to or ev.get("tag") not in tags or ev.get("kind") != "process_alarm":
            continue
        ts = datetime.fromisoformat(ev["ts"]).timestamp()
        changed = plant.last_change(ev["tag"], at, up=ev.get("state") != "cleared")
        if changed >= since:
            out.append((at, at - ts, at - changed))
    return out


def raw_readings(plant: Plant, watched: list[tuple[float, str, float, float]]) -> Latency:
    """The raw loop's readings of the event points: every one for poll to wire, the ones that
    crossed the limit (80) for change to wire."""
    tags = plant.change_times()
    poll, change = [], []
    last: dict[str, bool] = {}
    for at, tag, ts, value in watched:
        if tag not in tags:
            continue
        poll.append(at - ts)
        high = value is not None and value >= 80.0
        if tag in last and last[tag] != high:
            change.append(at - plant.last_change(tag, at, up=high))
        last[tag] = high
    return _lat(poll, change)
