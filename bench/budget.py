"""A Pi-class budget (issue 20): the agent in a cgroup limited to 25 % of one core.

A Raspberry Pi-class core is 3-4 times slower than one here, so a quarter of a core here stands
for one Pi core. The agent is started through `sh`, which writes its own PID into the cgroup
and then execs `hazgate run`: nothing the agent does runs outside the limit. Where the box
offers cgroup v2 with the cpu controller, `cpu.max` is set; otherwise cgroup v1's
`cpu.cfs_quota_us` / `cpu.cfs_period_us`. Without either, writable (not root, read-only), the
phase is skipped with the reason.

Three runs in the same cgroup, one after the other:
- live: the 10 000 points at 1 s and the 20 event points at 200 ms. Missed polls are the agent's
  own count (`hazgate_device_overruns_total` on its health endpoint: cycles skipped because a
  poll ran long), read at the window's start and end, beside the polls completed;
- back-fill: bench/backfill.py's 1 M readings drained while 100 live points and the event points
  are polled, then again with the 10 000 points polled too.
The cgroup's throttling figures (cpu.stat) are kept for the notes; the cgroup is removed once
the agent has ended.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import backfill
from bench.common import Procs, Unit, free_port
from bench.events import Latency, agent_events, event_latencies
from bench.live import Ctx, Window, run_agent

QUOTA_US, PERIOD_US = 25_000, 100_000
SHARE = QUOTA_US / PERIOD_US
EVENT_POLL = 0.2
EVENT_P99 = 0.150  # the target for event poll -> wire
_METRIC = re.compile(r'^(hazgate_device_(?:overruns|polls)_total)\{device="([^"]*)"\} (\S+)$', re.M)


@dataclass
class Cgroup:
    """A CPU-limited cgroup of this run; `wrap` is the argv that starts a command inside it."""

    path: Path
    version: int

    @property
    def how(self) -> str:
        if self.version == 2:
            return f"cgroup v2 cpu.max \"{QUOTA_US} {PERIOD_US}\""
        return f"cgroup v1 cpu.cfs_quota_us {QUOTA_US} / cpu.cfs_period_us {PERIOD_US}"

    def wrap(self) -> list[str]:
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def throttled(self) -> tuple[int, int, float]:
        """(periods, periods throttled, seconds throttled) so far, from cpu.stat."""
        st = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        seconds = int(st["throttled_usec"]) / 1e6 if "throttled_usec" in st else int(st.get("throttled_time", 0)) / 1e9
        return int(st.get("nr_periods", 0)), int(st.get("nr_throttled", 0)), seconds

    def pids(self) -> set[int]:
        return {int(x) for x in _read(self.path / "cgroup.procs").split()}

    def remove(self, procs: Procs, timeout: float = 10.0) -> str | None:
        """Stop what this run started and is still inside (after an error), then rmdir; why not, if not."""
        for _name, p in list(procs.items):
            if p.pid in self.pids():
                procs.stop(p)
        deadline = time.monotonic() + timeout
        while True:  # an ended process leaves cgroup.procs shortly after
            try:
                self.path.rmdir()
                return None
            except FileNotFoundError:
                return None
            except OSError as exc:
                if time.monotonic() > deadline:
                    return f"cgroup {self.path} not removed: {exc.strerror or exc}"
                time.sleep(0.2)


def _mounts() -> list[tuple[str, Path, set[str]]]:
    """(fstype, mount point, super options) of every cgroup mount of this process."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _src, opts = (right.split() + ["", "", ""])[:3]
        if fstype in ("cgroup", "cgroup2"):
            out.append((fstype, Path(left.split()[4]), set(opts.split(","))))
    return out


def make_cgroup(name: str) -> Cgroup | str:
    """A new cgroup limited to SHARE of one core, or why there can be none."""
    v2 = [m for t, m, _ in _mounts() if t == "cgroup2" and "cpu" in _read(m / "cgroup.controllers").split()]
    v1 = [m for t, m, o in _mounts() if t == "cgroup" and "cpu" in o]
    if not v2 and not v1:
        return "no cgroup v2 with the cpu controller and no cgroup v1 cpu hierarchy mounted"
    root, version = (v2[0], 2) if v2 else (v1[0], 1)
    path = root / name
    try:
        if version == 2:
            if "cpu" not in _read(root / "cgroup.subtree_control").split():
                (root / "cgroup.subtree_control").write_text("+cpu")
            path.mkdir()
            (path / "cpu.max").write_text(f"{QUOTA_US} {PERIOD_US}")
        else:
            path.mkdir()
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(QUOTA_US))
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.rmdir()
        return f"cannot make a cgroup under {root} ({exc.strerror or exc}; needs root and a writable hierarchy)"
    return Cgroup(path, version)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def device_counters(port: int) -> dict[tuple[str, str], int]:
    """(polls or overruns, device): count so far, from the agent's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310 - loopback
        return parse_counters(r.read().decode())


def parse_counters(body: str) -> dict[tuple[str, str], int]:
    return {("overruns" if "overruns" in family else "polls", dev): int(float(value))
            for family, dev, value in _METRIC.findall(body)}


@dataclass
class Budget:
    how: str
    live: Window
    due_polls: int  # polls the cadences ask for in the window
    polls: int
    missed: dict[str, int]  # device: overruns counted by the agent in the window, where any
    throttled_live: tuple[int, int, float]  # periods, throttled periods, seconds throttled (window)
    events: Latency
    late_events: tuple[int, int]  # events over the target (EVENT_P99) and the distinct seconds they arrived in
    fill: backfill.Backfill  # while the 100 live points and the event points are polled
    throttled_fill: tuple[int, int, float]  # from the agent's start to its stop
    fill_all: backfill.Backfill  # the same with the 10 000 points polled too
    throttled_fill_all: tuple[int, int, float]


def _delta(a: tuple[int, int, float], b: tuple[int, int, float]) -> tuple[int, int, float]:
    return b[0] - a[0], b[1] - a[1], b[2] - a[2]


def run(ctx: Ctx, units: list[Unit], ev: Unit, bf_live: Unit, readings: int, warm: float, window: float,
        after_s: float, profile: Path | None = None) -> Budget | str:
    """Both runs in one cgroup; the reason instead when no cgroup can be made."""
    cg = make_cgroup(f"hazgate-bench-budget-{os.getpid()}")
    if isinstance(cg, str):
        return cg
    try:
        port = free_port()

        def probe() -> tuple[dict[str, int], tuple[int, int, float]]:
            return device_counters(port), cg.throttled()

        w = run_agent(ctx, "budget", [*units, ev], "1s", warm, window, polls={ev.name: f"{EVENT_POLL * 1000:.0f}ms"},
                      profile=profile, wrap=cg.wrap(), health=port, probe=probe)
        (c0, t0), (c1, t1) = w.probes
        due = round(w.seconds * (len(units) + 1 / EVENT_POLL))
        events = agent_events(ctx.plant, w.events, since=w.started + 2.0)
        late = [at for at, poll, _ in event_latencies(ctx.plant, w.events, since=w.started + 2.0) if poll > EVENT_P99]
        f0 = cg.throttled()
        fill = backfill.run(ctx, bf_live, ev, readings, after_s=after_s, raw=False, wrap=cg.wrap(), name="bbf")
        f1 = cg.throttled()
        fill_all = backfill.run(ctx, bf_live, ev, readings, after_s=after_s, raw=False, wrap=cg.wrap(), also=units,
                                name="bbfall")
        d = {k: v - c0.get(k, 0) for k, v in c1.items()}
        missed = {dev: n for (kind, dev), n in sorted(d.items()) if kind == "overruns" and n}
        return Budget(cg.how, w, due, sum(n for (kind, _), n in d.items() if kind == "polls"), missed,
                      _delta(t0, t1), events, (len(late), len({int(at) for at in late})), fill, _delta(f0, f1), fill_all, _delta(f1, cg.throttled()))
    finally:
        if why := cg.remove(ctx.procs):
            ctx.notes.append(why)
