"""`hazgate report` at the issue's size (issue 18): 30 days x 1 000 points x 10 interlocks
(and 20 gas detectors), from an evidence record filled as 30 days of the agent would leave it:
every point polled every second, each interlock bypassed twice a day and tripped once, each
detector in fault once a day, one uplink with a daily back-fill, and a few holes in the data.

The record is written with the agent's own upserts and its interlock and detector intervals
through the agent's own path from check events; the report is timed as the operator runs it
(`hazgate report`, a new process) and in this process (figures, page), beside the baseline of
merely reading the record's rows.

    .venv/bin/python -m bench.evidence_report [--days 30] [--points 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from bench.common import HAZGATE
from bench.report import Row, fmt_s, ratio, text, verdict

POINTS_PER_DEVICE = 100
INTERLOCKS, DETECTORS = 10, 20


def write_plant(work: Path, n_points: int) -> Path:
    """A gateway config with n_points points in devices of 100, 10 interlocks, 20 detectors."""
    devs, rules = [], []
    for d in range(n_points // POINTS_PER_DEVICE):
        rows = ["tag,address,type,unit,kind,eng_min,eng_max,h,hh"]
        for i in range(POINTS_PER_DEVICE):
            n = d * POINTS_PER_DEVICE + i
            if n < INTERLOCKS:
                rows.append(f"IL{n}_BYP,hr:{i}.0,bool,,bypass,,,,")
            elif n < INTERLOCKS * 2:
                rows.append(f"IL{n - INTERLOCKS}_TRIP,hr:{i}.0,bool,,trip,,,,")
            elif n < INTERLOCKS * 2 + DETECTORS:
                rows.append(f"GT{n:04d},hr:{2 * i},float32,%LEL,gas_lel,0,100,20,40")
            else:
                rows.append(f"P{n:04d},hr:{2 * i},float32,°C,temperature,,,,")
        (work / f"plc{d}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        devs.append(f'[[devices]]\nname = "plc{d}"\nprotocol = "modbus-tcp"\nhost = "127.0.0.1"\nport = 5020\n'
                    f'unit = {d + 1}\npoll_interval = "1s"\npoints = "plc{d}.csv"\n')
    for k in range(INTERLOCKS):
        rules.append(f'[[interlocks]]\nid = "SIS-{k:02d}"\nname = "interlock {k}"\nbypass = "IL{k}_BYP"\n'
                     f'tripped = "IL{k}_TRIP"\nbypass_max = "2h"\nprotects = [ {{ tag = "P{100 + k:04d}", '
                     'trip_above = 100.0 } ]\n')
    (work / "rules.toml").write_text("\n".join(rules), encoding="utf-8")
    config = work / "gateway.toml"
    config.write_text(f'[gateway]\nid = "GW-BENCH-0001"\nenterprise_code = "1"\ndata_dir = "{work / "data"}"\n'
                      'timezone = "Asia/Shanghai"\n[uplink]\nbroker = "mqtt://127.0.0.1:9"\n'
                      '[checks]\nrules = "rules.toml"\n' + "\n".join(devs), encoding="utf-8")
    return config


def fill(config: Path, days: int) -> tuple[int, int]:
    """The record of `days` days ending today; returns the period (first ms, end ms)."""
    from agent.common.timefmt import rfc3339
    from agent.config.loader import load_config
    from agent.pipeline.evidence import UPSERT_DAYS, UPSERT_DELIVERED, UPSERT_UPLINK_DAYS, DayClock
    from agent.pipeline.store import Store

    cfg = load_config(config)
    clock = DayClock(cfg.timezone)
    today = datetime.now(cfg.timezone).replace(hour=0, minute=0, second=0, microsecond=0)
    rnd = random.Random(18)
    store = Store(cfg.data_dir, timezone=cfg.timezone)
    tags = [p.tag for p in cfg.all_points()]
    first = last = 0
    for k in range(days, 0, -1):
        start = today - timedelta(days=k)
        day, lo, hi = clock.span(int(start.timestamp() * 1000) + 43_200_000)
        first, last = first or lo, hi
        n = (hi - lo) // 1000
        rows = [(day, t, n - (h := rnd.choice((0, 0, 0, 0, 30))), n - h, 0, 0, lo, hi - 1000, 1000 + h * 1000)
                for t in tags]
        events: list[tuple[int, dict]] = []
        for i, il in enumerate(cfg.rules.interlocks):
            for b in (2, 14):
                on, off = lo + (b * 3600 + i * 60) * 1000, lo + (b * 3600 + i * 60 + 1800) * 1000
                base = {"kind": "interlock_bypass", "interlock": il.id, "start": rfc3339(on), "tag": il.bypass[0]}
                events += [(on, {**base, "state": "on", "bypass_max_s": il.bypass_max}), (off, {**base, "state": "off"})]
            trip = lo + (20 * 3600 + i * 60) * 1000
            base = {"kind": "interlock_trip", "interlock": il.id, "start": rfc3339(trip)}
            events += [(trip, {**base, "state": rnd.choice(("tripped", "spurious"))}), (trip + 600_000, {**base, "state": "reset"})]
        for j, tag in enumerate(t for t in tags if t.startswith("GT")):
            at = lo + (8 * 3600 + j * 120) * 1000
            base = {"kind": "detector_fault", "tag": tag, "cause": "fault", "start": rfc3339(at)}
            events += [(at, {**base, "state": "raised"}), (at + 300_000, {**base, "state": "cleared"})]
        with store._tx():
            store.db.executemany(UPSERT_DAYS, rows)
            store.db.executemany(UPSERT_DELIVERED, ((day, "mqtt", r[1], r[2]) for r in rows))
            store.db.execute(UPSERT_UPLINK_DAYS, (day, "mqtt", sum(r[2] for r in rows) - 3600 * 50, 3600 * 50, 0))
            store.evidence.conditions(store.db, sorted(events, key=lambda e: e[0]))
            store.db.execute("INSERT OR REPLACE INTO ev.runs VALUES (?, ?)", (lo, hi))
    store.close()
    return first, last


def run(days: int = 30, points: int = 1000, keep: Path | None = None) -> list[Row]:
    from agent.config.loader import load_config
    from agent.pipeline.store import Store
    from agent.tools.report_figures import build
    from agent.tools.report_page import page

    work = keep or Path(tempfile.mkdtemp(prefix="hazgate-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        config = write_plant(work, points)
        began = time.monotonic()
        frm, to = fill(config, days)
        filled = time.monotonic() - began
        cfg = load_config(config)
        evidence = cfg.data_dir / "evidence.db"
        sqlite3.connect(evidence).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
        store = Store(cfg.data_dir, readonly=True)
        t0 = time.perf_counter()
        for table in ("intervals", "days", "delivered", "uplink_days", "runs"):
            store.db.execute(f"SELECT * FROM ev.{table}").fetchall()
        read = time.perf_counter() - t0
        t0 = time.perf_counter()
        fig = build(cfg, store.db, frm, to)
        figures = time.perf_counter() - t0
        t0 = time.perf_counter()
        html = page(fig)
        paged = time.perf_counter() - t0
        store.close()
        out = work / "report.html"
        t0 = time.perf_counter()
        day = lambda ms: datetime.fromtimestamp(ms / 1000, cfg.timezone).date().isoformat()  # noqa: E731
        cli = subprocess.run([*HAZGATE, "report", "-c", str(config), "--from", day(frm), "--to",
                              day(to - 1), "-o", str(out), "--json", str(work / "report.json")],
                             capture_output=True, text=True, timeout=300)
        command = time.perf_counter() - t0
        if cli.returncode != 0:
            raise RuntimeError(f"hazgate report failed: {cli.stderr}")
        size = out.stat().st_size
        s = f"report: {days} days x {points} points x {INTERLOCKS} interlocks, {DETECTORS} detectors"
        return [
            Row(s, "hazgate report, the command (baseline: reading the record's rows)", fmt_s(command), fmt_s(read),
                ratio(command, read), "< 10 s", verdict(command < 10)),
            Row(s, "of which figures / page, in this process", f"{fmt_s(figures)} / {fmt_s(paged)}"),
            Row(s, "page size (baseline: its JSON)", f"{size / 1e6:.2f} MB",
                f"{(work / 'report.json').stat().st_size / 1e6:.2f} MB", ratio(size, (work / 'report.json').stat().st_size)),
            Row(s, "page size in this process", f"{len(html.encode()) / 1e6:.2f} MB"),
            Row(s, "evidence record on disk (filled in)", f"{evidence.stat().st_size / 1e6:.1f} MB",
                f"{filled:.0f} s"),
        ]
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.evidence_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--keep", type=Path, default=None, help="keep the plant, record and report in this folder")
    args = ap.parse_args()
    print(text(run(args.days, args.points, args.keep)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
