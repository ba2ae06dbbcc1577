"""`make bench`: every figure of issues 9, 15, 18 and 20 beside its baseline measured in the same run.

    .venv/bin/python -m bench [--full] [--only e2e,steady,backfill,outage,stages,uplinks,durable,reconnect,peer,
                                                report,budget,startup] [--profile]
                              [--markdown FILE] [--json FILE]

Quick mode (default) takes about seventeen minutes on a 2-core machine (the uplinks phase about
four of them, the durable phase (bench/durable.py) about two and a half, the reconnect phase
(bench/reconnect.py) about two, the peer phase (bench/peer.py) about three and a half, plus the
peer's install the first time, the budget phase (bench/budget.py: the agent held to 25 % of one core
by a cgroup) about four); --full uses the issues' durations (2 min steady load, 10 min outage, 10 min
with one platform down) and takes about forty-five.

One simulated plant serves every phase: 10 PLC units of 1 000 points (750 float32 + 250
int16, every value ramping, so every poll reports every point) on 5 ports, a 100-point unit
for live data during back-fill, and 20 event points stepping across an hh limit every second.
One Mosquitto and one counting subscriber (in this process) serve all but the outage and peer
phases. The peer phase runs the ThingsBoard IoT Gateway beside the agent on the same units, with
a Mosquitto and a subscriber of its own (bench/peer.py).
The uplinks phase (bench/uplinks.py) adds an HTTP and a TCP reference platform (`hazgate
receive --listen`) beside the broker. The report phase (bench/evidence_report.py) builds `hazgate
report` from a 30-day evidence record of 1 000 points and 10 interlocks (under a minute).
The simulator, the broker and the subscriber share the two cores with the process measured:
CPU figures come from /proc/<pid>/stat of that process alone, rates are what the machine
delivered with everything running.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench import (
    backfill,
    budget,
    durable,
    evidence_report,
    live,
    outage,
    peer,
    reconnect,
    stages,
    startup,
    uplinks,
)
from bench.common import Plant, Procs, Subscriber, Unit, free_port, start_broker, start_simulator
from bench.events import agent_events, raw_readings
from bench.profile import by_stage, summary
from bench.report import (
    Row,
    fmt_mb,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    fmt_s,
    fmt_us,
    markdown,
    ratio,
    text,
    verdict,
)

PHASES = ("e2e", "steady", "backfill", "outage", "stages", "uplinks", "durable", "reconnect", "peer", "report",
          "budget", "startup")
# uplinks (issue 15): up_warm/up: each steady run; up_readings: the back-fill backlog; up_before/up_down:
# the window before the http platform goes and the one it stays gone
QUICK = {"e2e_warm": 3, "e2e": 15, "steady_warm": 8, "steady": 30, "readings": 1_000_000, "after": 10,
         "outage_warm": 8, "outage": 60, "up_warm": 4, "up": 12, "up_readings": 200_000, "up_drain_timeout": 240,
         "up_before": 8, "up_down": 60, "durable_warm": 5, "durable": 30, "outages": 10, "outage_s": 10,
         "budget_warm": 10, "budget": 60, "starts": 3,
         "peer_warm": 8, "peer": 30, "peer_drain_timeout": 120}
FULL = {"e2e_warm": 5, "e2e": 60, "steady_warm": 10, "steady": 120, "readings": 1_000_000, "after": 20,
        "outage_warm": 10, "outage": 600, "up_warm": 10, "up": 60, "up_readings": 1_000_000,
        "up_drain_timeout": 900, "up_before": 30, "up_down": 600, "durable_warm": 10, "durable": 120, "outages": 10, "outage_s": 20,
        "budget_warm": 10, "budget": 120, "starts": 5,
        "peer_warm": 10, "peer": 120, "peer_drain_timeout": 300}
E2E_POLL, E2E_TIMEOUT = "20ms", "190ms"  # shorter than one poll takes: polls run back to back
EVENT_POLL = 0.2


def build_plant(work: Path) -> tuple[Plant, list[Unit], Unit, Unit]:
    ports = [free_port() for _ in range(6)]
    main = [Unit(f"plc{k}", ports[k // 2], k % 2 + 1, 750, 250, prefix=f"P{k}") for k in range(10)]
    bf_live, ev = backfill.plant_units(ports[5], 100)
    return Plant(work, [*main, bf_live, ev]), main, bf_live, ev


def machine_note(phase: str, w: live.Window) -> str:
    h = w.helpers
    return (f"{phase}, {w.who} window: simulator {h.get('simulator', math.nan) * 100:.0f} %, mosquitto "
            f"{h.get('mosquitto', math.nan) * 100:.0f} %, bench subscriber {h.get('bench', math.nan) * 100:.0f} % of a core")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the issue's durations (about 20 minutes)")
    ap.add_argument("--only", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the agent during the e2e and steady windows; print where time goes")
    ap.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    ap.add_argument("--json", default=None, help="also write every figure as JSON to this file")
    args = ap.parse_args()
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    if bad := only - set(PHASES):
        ap.error(f"unknown phase(s) {', '.join(sorted(bad))}; valid: {', '.join(PHASES)}")
    P = FULL if args.full else QUICK
    work = Path(tempfile.mkdtemp(prefix="hazgate-bench-"))
    procs = Procs(work)
    rows: list[Row] = []
    stage_rows: list = []
    notes: list[str] = []
    profiles: list[tuple[str, Path, live.Window]] = []
    results: dict = {"mode": "full" if args.full else "quick", "cpus": os.cpu_count(), "started": time.time()}
    sub = None

    def on_term(_sig, _frame):  # noqa: ANN001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t_start = time.monotonic()
    load0, busy0 = _load(), _busy()
    try:
        plant, units, bf_live, ev = build_plant(work)
        sim = start_simulator(procs, plant)
        mport = free_port()
        broker = start_broker(procs, mport)
        sub = Subscriber(mport, watch={t for t, *_ in ev.tags()})
        ctx = live.Ctx(work, procs, mport, plant, sub, sim.pid, broker.pid, notes)
        n_points = sum(u.n_points for u in units)
        print(f"hazgate bench ({results['mode']} mode) on {os.cpu_count()} CPUs; plant: {n_points} points "
              f"on {len(units)} units + {bf_live.n_points} live + {ev.n_points} event points", flush=True)

        if "e2e" in only:
            first = len(rows)
            print(f"e2e: raw baseline, then the agent, polling {n_points} points back to back "
                  f"({P['e2e']} s windows)", flush=True)
            raw = live.run_raw(ctx, units, 0.0, P["e2e_warm"], P["e2e"])
            prof = work / "profile-e2e.txt" if args.profile else None
            agent = live.run_agent(ctx, "e2e", units, E2E_POLL, P["e2e_warm"], P["e2e"], timeout=E2E_TIMEOUT,
                                   profile=prof)
            if prof and prof.exists():
                profiles.append(("end to end (saturated)", prof, agent))
            results["e2e"] = {"agent": _win(agent), "raw": _win(raw)}
            cap, raw_cap = 1e6 / agent.cpu_us, 1e6 / raw.cpu_us
            s = f"end to end: {n_points} points polled back to back"
            rows += [
                Row(s, "readings/s delivered and acknowledged", fmt_rate(agent.acked_rate), fmt_rate(raw.acked_rate),
                    ratio(agent.acked_rate, raw.acked_rate), "≥ 60 000/s and ≥ 0.6× raw",
                    verdict(agent.acked_rate >= 60_000 and agent.acked_rate >= 0.6 * raw.acked_rate)),
                Row(s, "readings/s polled", fmt_rate(agent.polled / agent.seconds),
                    fmt_rate(raw.polled / raw.seconds), ratio(agent.polled, raw.polled)),
                Row(s, "CPU per delivered reading", fmt_us(agent.cpu_us), fmt_us(raw.cpu_us),
                    ratio(agent.cpu_us, raw.cpu_us), "≤ 1.5× raw (issue 20)", verdict(agent.cpu_us <= 1.5 * raw.cpu_us)),
                Row(s, "CPU per polled reading", fmt_us(agent.cpu_s / agent.polled * 1e6 if agent.polled else math.nan),
                    fmt_us(raw.cpu_s / raw.polled * 1e6 if raw.polled else math.nan)),
                Row(s, "one-core capacity (1 s / CPU per reading)", fmt_rate(cap), fmt_rate(raw_cap),
                    ratio(cap, raw_cap), "≥ 60 000/s", verdict(cap >= 60_000)),
                Row(s, "CPU share of one core", fmt_pct(agent.cpu_share), fmt_pct(raw.cpu_share),
                    ratio(agent.cpu_share, raw.cpu_share)),
                Row(s, "RSS at end of window", fmt_mb(agent.rss), fmt_mb(raw.rss), ratio(agent.rss, raw.rss)),
                Row(s, "live reading latency p50 / p99", f"{fmt_s(agent.lat_p50)} / {fmt_s(agent.lat_p99)}",
                    f"{fmt_s(raw.lat_p50)} / {fmt_s(raw.lat_p99)}"),
            ]
            notes += [machine_note("end to end", raw), machine_note("end to end", agent)]
            print(text(rows[first:]), flush=True)

        if "steady" in only:
            first = len(rows)
            print(f"steady: {n_points} points every 1 s and {ev.n_points} event points every "
                  f"{EVENT_POLL * 1000:.0f} ms ({P['steady']} s windows)", flush=True)
            raw = live.run_raw(ctx, [*units, ev], 1.0, P["steady_warm"], P["steady"],
                               intervals={ev.name: EVENT_POLL})
            prof = work / "profile-steady.txt" if args.profile else None
            agent = live.run_agent(ctx, "steady", [*units, ev], "1s", P["steady_warm"], P["steady"],
                                   polls={ev.name: f"{EVENT_POLL * 1000:.0f}ms"}, profile=prof)
            if prof and prof.exists():
                profiles.append(("steady load, 10 000 points at 1 s", prof, agent))
            ev_agent = agent_events(plant, agent.events, since=agent.started + 2.0)
            ev_raw = raw_readings(plant, raw.watched)
            results["steady"] = {"agent": _win(agent), "raw": _win(raw), "events": asdict(ev_agent),
                                 "events_raw": asdict(ev_raw)}
            s = f"steady load: {n_points} points at 1 s"
            rows += [
                Row(s, "CPU share of one core", fmt_pct(agent.cpu_share), fmt_pct(raw.cpu_share),
                    ratio(agent.cpu_share, raw.cpu_share), "≤ 10 % (issue 20; 15 % issue 9)",
                    verdict(agent.cpu_share <= 0.10)),
                Row(s, "CPU per reading", fmt_us(agent.cpu_us), fmt_us(raw.cpu_us), ratio(agent.cpu_us, raw.cpu_us)),
                Row(s, "RSS at end of window", fmt_mb(agent.rss), fmt_mb(raw.rss), ratio(agent.rss, raw.rss),
                    "≤ 48 MB (issue 20; 60 MB issue 9)", verdict(agent.rss <= 48e6)),
                Row(s, "readings/s delivered and acknowledged", fmt_rate(agent.acked_rate),
                    fmt_rate(raw.acked_rate), ratio(agent.acked_rate, raw.acked_rate)),
                Row(s, "live reading latency p50 / p99", f"{fmt_s(agent.lat_p50)} / {fmt_s(agent.lat_p99)}",
                    f"{fmt_s(raw.lat_p50)} / {fmt_s(raw.lat_p99)}"),
            ]
            e = "events (no back-fill, under the steady load)"
            rows += _event_rows(e, ev_agent, ev_raw, "raw: same register's reading")
            notes += [machine_note("steady", raw), machine_note("steady", agent)]
            print(text(rows[first:]), flush=True)

        if "backfill" in only:
            first = len(rows)
            print(f"backfill: {P['readings']:,} readings buffered, raw drain then the agent's", flush=True)
            b = backfill.run(ctx, bf_live, ev, P["readings"], after_s=P["after"])
            results["backfill"] = asdict(b)
            s = f"back-fill: {b.readings:,} readings buffered"
            extra = b.live_during[1] - b.live_after[1]
            rows += [
                Row(s, "drain rate, readings/s acknowledged", fmt_rate(b.rate), fmt_rate(b.raw_rate),
                    ratio(b.rate, b.raw_rate), "≥ 100 000/s", verdict(b.rate >= 100_000)),
                Row(s, "live latency p99 during drain (baseline: after)", fmt_s(b.live_during[1]),
                    fmt_s(b.live_after[1]), f"{extra:+.2f} s", "≤ +1 s", verdict(extra <= 1.0)),
                Row(s, "store size per million readings", f"{b.mb_per_million:.1f} MB"),
            ]
            rows += _event_rows("events during back-fill (baseline: after it)", b.events_during, b.events_after,
                                "same agent after the drain")
            print(text(rows[first:]), flush=True)

        if "outage" in only:
            first = len(rows)
            out_units = units[:5]
            print(f"outage: {sum(u.n_points for u in out_units)} points/s, broker gone for {P['outage']} s",
                  flush=True)
            o = outage.run(ctx, out_units, P["outage"], P["outage_warm"])
            results["outage"] = asdict(o)
            s = f"memory under outage: {o.points_per_s:,.0f} points/s for {o.seconds:.0f} s"
            rows += [
                Row(s, "RSS at end (baseline: at start of outage)", fmt_mb(o.rss_end), fmt_mb(o.rss_start),
                    ratio(o.rss_end, o.rss_start), "within ±10 %", verdict(abs(o.rss_ratio - 1) <= 0.10)),
                Row(s, "RSS peak during outage", fmt_mb(o.rss_max), fmt_mb(o.rss_start), ratio(o.rss_max, o.rss_start)),
                Row(s, "CPU share of one core while buffering", fmt_pct(o.cpu_share)),
                Row(s, "disk per reading buffered (db + WAL)", f"{o.bytes_per_reading:.1f} B"),
                Row(s, "disk per hour of outage at this rate",
                    fmt_mb(o.bytes_per_reading * o.points_per_s * 3600)),
            ]
            print(text(rows[first:]), flush=True)

        if "uplinks" in only:
            up_rows, results["uplinks"] = uplinks.run(ctx, units, units[:2], bf_live, P)  # prints its parts
            rows += up_rows

        if "durable" in only:
            first = len(rows)
            print(f"durable: collection (ts, the poll's start) to durable commit at 1 000 and 10 000 points/s "
                  f"({P['durable']} s windows)", flush=True)
            results["durable"] = []
            for group, poll in ((units[:1], 1.0), (units, 1.0), (units[:1], 0.1)):
                d = durable.run(ctx, group, poll, P["durable_warm"], P["durable"])
                results["durable"].append(asdict(d))
                s = (f"durability window: {d.points_per_s:,.0f} points/s ({d.units} unit{'s' if d.units > 1 else ''} "
                     f"every {d.poll * 1000:,.0f} ms)")
                ten = d.points_per_s >= 10_000
                rows += [
                    Row(s, f"collection → durable commit p50 / p99 (n={d.readings:,})",
                        f"{fmt_ms(d.p50)} / {fmt_ms(d.p99)}", "", "", "p99 ≤ 100 ms" if ten else "",
                        verdict(d.p99 <= 0.100) if ten else ""),
                    Row(s, "collection → durable commit, max (what SIGKILL or power loss can cost)",
                        fmt_ms(d.max), "", "", "≤ 250 ms" if ten else "", verdict(d.max <= 0.250) if ten else ""),
                    Row(s, f"commits/s seen (chunks unseen: {d.unseen})", f"{d.commits / d.seconds:.1f}/s"),
                ]
            print(text(rows[first:]), flush=True)

        if "reconnect" in only:
            first = len(rows)
            print(f"reconnect: MQTT, HTTP and TCP platforms gone {P['outage_s']} s, {P['outages']} times", flush=True)
            r = reconnect.run(ctx, units[0], P["outages"], P["outage_s"])
            results["reconnect"] = asdict(r)
            s = f"back on air: {r.outages} outages of {r.seconds:g} s, 1 000 points at 1 s"
            for u in reconnect.ORDER:
                missed = f", {r.missed[u]} with none within {reconnect.LIVE_WAIT:g} s" if r.missed[u] else ""
                rows.append(Row(s, f"{uplinks.PROTOCOL[u]}: platform back → first live delivery p50 / p99{missed}",
                                f"{fmt_s(r.p(u, 0.5))} / {fmt_s(r.p(u, 0.99))}", "", "", "p99 ≤ 2 s",
                                verdict(r.p(u, 0.99) <= 2.0 and not r.missed[u])))
            print(text(rows[first:]), flush=True)

        if "startup" in only:
            first = len(rows)
            print(f"startup: hazgate validate and hazgate run to the first acknowledged message, {n_points} points, "
                  f"{P['starts']} times each", flush=True)
            st = startup.run(ctx, units, P["starts"])
            results["startup"] = asdict(st)
            s = f"starting up: {st.points:,} points ({P['starts']} runs, min / median / max)"
            worst_v = max(st.validate, default=math.nan)
            worst_a = max(st.first_ack, default=math.nan)
            rows += [
                Row(s, "hazgate validate (baseline: hazgate --version)", startup.describe(st.validate),
                    startup.describe(st.validate_base), "", "≤ 1.5 s", verdict(worst_v <= 1.5 and not st.failures)),
                Row(s, "hazgate run → first acknowledged message (baseline: raw loop's first)",
                    startup.describe(st.first_ack), startup.describe(st.first_ack_raw), "", "≤ 3 s",
                    verdict(worst_a <= 3.0 and len(st.first_ack) == P["starts"])),
            ]
            notes.extend(f"startup: {f}" for f in st.failures)
            print(text(rows[first:]), flush=True)

        if "budget" in only:
            first = len(rows)
            print(f"budget: the agent in a cgroup of {budget.SHARE * 100:.0f} % of one core: {n_points} points at 1 s "
                  f"({P['budget']} s window), then a {P['readings']:,}-reading back-fill while live", flush=True)
            prof = work / "profile-budget.txt" if args.profile else None
            b = budget.run(ctx, units, ev, bf_live, P["readings"], P["budget_warm"], P["budget"], P["after"], prof)
            if isinstance(b, str):
                print(f"budget: skipped: {b}", flush=True)
                notes.append(f"budget phase skipped: {b}")
            else:
                if prof and prof.exists():
                    profiles.append((f"Pi-class budget ({budget.SHARE * 100:.0f} % of a core), 10 000 points at 1 s",
                                     prof, b.live))
                results["budget"] = {"how": b.how, "live": _win(b.live), "due_polls": b.due_polls, "polls": b.polls,
                                     "missed": b.missed, "throttled_live": b.throttled_live,
                                     "events": asdict(b.events), "late_events": b.late_events, "backfill": asdict(b.fill),
                                     "throttled_fill": b.throttled_fill, "backfill_all": asdict(b.fill_all),
                                     "throttled_fill_all": b.throttled_fill_all}
                rows += _budget_rows(b, n_points, ev, bf_live, P["budget"])
                w, f = b.live, b.fill
                notes += [machine_note("budget", w),
                          f"budget ({b.how}): throttled in {b.throttled_live[1]} of {b.throttled_live[0]} periods "
                          f"({b.throttled_live[2]:.1f} s) of the live window, {b.throttled_fill[1]} of "
                          f"{b.throttled_fill[0]} ({b.throttled_fill[2]:.1f} s) from the back-fill agent's start "
                          f"to its stop ({b.throttled_fill_all[1]} of {b.throttled_fill_all[0]}, "
                          f"{b.throttled_fill_all[2]:.1f} s, with the {n_points} points live too); back-fill agent "
                          f"CPU {f.agent_cpu_s:.1f} s ({b.fill_all.agent_cpu_s:.1f} s)"]
                if b.missed:
                    notes.append("budget: missed polls by device: "
                                 + ", ".join(f"{dev} {n}" for dev, n in b.missed.items()))
            print(text(rows[first:]), flush=True)
        if "peer" in only:
            peer_rows, results["peer"] = peer.run(ctx, units, P)  # prints its parts
            rows += peer_rows

        if "report" in only:
            print("report: hazgate report for 30 days x 1 000 points x 10 interlocks", flush=True)
            report_rows = evidence_report.run()
            print(text(report_rows), flush=True)
            rows += report_rows

        if "stages" in only:
            print("stages: per-reading cost of each agent stage, in this process", flush=True)
            stage_rows = stages.measure(broker=True)
            results["stages"] = stage_rows
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        if sub is not None:
            sub.close()
        procs.stop_all()
        profile_text = [(title, by_stage(path, w.polled, w.cpu_s, w.seconds) + [""] + summary(path))
                        for title, path, w in profiles]
        shutil.rmtree(work, ignore_errors=True)

    elapsed = time.monotonic() - t_start
    busy1 = _busy()
    machine = (f"machine: load average {load0} at start, {_load()} at end; all CPUs "
               f"{(busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 100:.0f} % busy during the run "
               "(everything measured plus whatever else ran)")
    notes.insert(0, machine)
    print()
    print(f"hazgate bench, {results['mode']} mode, {os.cpu_count()} CPUs, {elapsed:.0f} s, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    if rows:
        print(text(rows))
    if notes:
        print("\nnotes:")
        for n in notes:
            print(f"- {n}")
    if stage_rows:
        print("\nper-reading cost by stage (bench/stages.py: the agent's own code, 10 000 points):")
        print(stages.render(stage_rows))
    for title, lines in profile_text:
        print(f"\nprofile of the agent, {title}: py-spy --gil over the measured window, CPU µs per "
              "polled reading (figures above measured while sampling):")
        print("\n".join(lines))
    if args.markdown:
        md = markdown(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
        if stage_rows:
            md += "\n```\n" + stages.render(stage_rows) + "\n```\n"
        Path(args.markdown).write_text(md)
    if args.json:
        results["elapsed_s"] = elapsed
        results["notes"] = notes
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def _win(w: live.Window) -> dict:
    d = {k: v for k, v in asdict(w).items() if k not in ("events", "watched", "probes")}
    d.update(rate=w.rate, acked_rate=w.acked_rate, cpu_us=w.cpu_us, cpu_share=w.cpu_share)
    return d


def _budget_rows(b: budget.Budget, n_points: int, ev: Unit, bf_live: Unit, window: float) -> list[Row]:
    w, f = b.live, b.fill
    share = f"{budget.SHARE * 100:.0f} % of one core"
    s = f"Pi-class budget ({share}): {n_points} points at 1 s + {ev.n_points} event points at {EVENT_POLL * 1000:.0f} ms"
    short = "" if window >= 120 else f" (quick: {w.seconds:.0f} s; --full: 2 min)"
    slow = sum(n for dev, n in b.missed.items() if dev != ev.name)
    return [
        Row(s, f"missed polls of the {n_points} points at 1 s (agent's overrun count) in {w.seconds:.0f} s{short}",
            f"{slow:,}", "", "", "0 over 2 min", verdict(not slow)),
        Row(s, f"missed polls of the event points at {EVENT_POLL * 1000:.0f} ms", f"{b.missed.get(ev.name, 0):,}"),
        Row(s, "polls completed / due in the window", f"{b.polls:,} / {b.due_polls:,}"),
        Row(s, f"CPU share of one core (limit {budget.SHARE * 100:.0f} %)", fmt_pct(w.cpu_share)),
        Row(s, "CPU per reading", fmt_us(w.cpu_us)),
        Row(s, "readings/s delivered and acknowledged", fmt_rate(w.acked_rate)),
        Row(s, "live reading latency p50 / p99", f"{fmt_s(w.lat_p50)} / {fmt_s(w.lat_p99)}"),
        Row(s, f"event poll → wire p50 / p99, n={b.events.n}", f"{fmt_ms(b.events.poll_p50)} / {fmt_ms(b.events.poll_p99)}",
            "", "", f"p99 ≤ {budget.EVENT_P99 * 1000:.0f} ms", verdict(b.events.poll_p99 <= budget.EVENT_P99)),
        Row(s, f"events over {budget.EVENT_P99 * 1000:.0f} ms (in how many distinct seconds)",
            f"{b.late_events[0]:,} ({b.late_events[1]:,})"),
        Row(s, "RSS at end of window (peak)", f"{fmt_mb(w.rss)} ({fmt_mb(w.hwm)})", "", "", "≤ 48 MB",
            verdict(w.rss <= 48e6)),
        *_fill_rows(f"Pi-class budget ({share}): {f.readings:,} back-filled while {bf_live.n_points} + "
                    f"{ev.n_points} points are polled", f),
        *_fill_rows(f"Pi-class budget ({share}): {f.readings:,} back-filled while {bf_live.n_points} + {n_points} + "
                    f"{ev.n_points} points are polled", b.fill_all),
    ]


def _fill_rows(s: str, f: backfill.Backfill) -> list[Row]:
    extra = f.live_during[1] - f.live_after[1]
    return [
        Row(s, "drain rate, readings/s acknowledged", fmt_rate(f.rate), "", "", "≥ 30 000/s", verdict(f.rate >= 30_000)),
        Row(s, "live latency p99 during drain (baseline: after)", fmt_s(f.live_during[1]), fmt_s(f.live_after[1]),
            f"{extra:+.2f} s", "≤ +2 s", verdict(extra <= 2.0)),
        Row(s, f"event poll → wire p50 / p99 during drain, n={f.events_during.n}",
            f"{fmt_ms(f.events_during.poll_p50)} / {fmt_ms(f.events_during.poll_p99)}"),
        Row(s, "agent's peak RSS", fmt_mb(f.hwm), "", "", "≤ 48 MB", verdict(f.hwm <= 48e6)),
    ]


def _event_rows(section: str, a, b, baseline: str) -> list[Row]:  # noqa: ANN001
    return [
        Row(section, f"poll → wire p50 (baseline: {baseline})", fmt_ms(a.poll_p50), fmt_ms(b.poll_p50),
            ratio(a.poll_p50, b.poll_p50)),
        Row(section, f"poll → wire p99, n={a.n}", fmt_ms(a.poll_p99), fmt_ms(b.poll_p99),
            ratio(a.poll_p99, b.poll_p99), "≤ 50 ms", verdict(a.poll_p99 <= 0.050)),
        Row(section, f"register change → wire p50 / p99 ({EVENT_POLL * 1000:.0f} ms poll)",
            f"{fmt_ms(a.change_p50)} / {fmt_ms(a.change_p99)}", f"{fmt_ms(b.change_p50)} / {fmt_ms(b.change_p99)}"),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
