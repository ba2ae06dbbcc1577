"""`hazgate run` as a service: readiness, watchdog, status, reload, health endpoint.

- READY=1 once the config is valid (it was loaded before we got here) and the store is open.
- WATCHDOG=1 every quarter of systemd's WatchdogSec, but only while `Progress.check()` finds
  nothing stuck (agent/health.py says what counts as progress).
- STATUS= a one-line summary, sent when it changes (at most every few seconds).
- SIGHUP (`systemctl reload`): the config is loaded again. An invalid one is refused, each of its
  `file:line` problems logged, and the running config stays. A valid one is applied in place:
  removed or changed devices stop, new and changed ones start, unchanged device tasks keep
  running; nothing buffered or pending is dropped. The gateway's identity (id, enterprise
  code, topic prefix) and data_dir need a restart.
- SIGTERM/SIGINT: STOPPING=1, then the agent's clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sqlite3
import time
from typing import Any

from agent import __version__
from agent.app import Agent
from agent.common.listen import is_loopback
from agent.common.memory import limit_malloc_arenas
from agent.common.problems import ConfigError
from agent.common.running import AppliedConfig, mark_running, mark_stopped, save_applied
from agent.common.secrets import CertInfo, check_certificates
from agent.config.gateway import GatewayConfig
from agent.config.loader import load_config
from agent.north.adapters import protocol_of
from agent.service.health import (
    DEFAULT_STALE,
    Exposition,
    HealthServer,
    Progress,
    StoreStats,
    process_figures,
)
from agent.service.notify import Notifier
from drivers.base import DeviceSpec

log = logging.getLogger("hazgate.service")

STATUS_EVERY = 30.0  # a STATUS line at least this often, and whenever it changes (rate-limited)
CERT_CHECK_EVERY = 12 * 3600.0
STOP_WAIT_FOR_RELOAD = 10.0
UPLINK_DOWN_PROBLEM = 60.0  # seconds the uplink may be down before /healthz reports it
RESTART_WARNING = 3600.0  # seconds /healthz still warns of a core task that was restarted


# --- reload planning -----------------------------------------------------------------------
@dataclasses.dataclass
class ReloadPlan:
    keep: list[str]
    stop: list[str]  # removed
    start: list[str]  # added
    restart: list[str]  # changed
    points_changed: bool
    checks_changed: bool


def _device_key(d: DeviceSpec) -> DeviceSpec:
    """A device as compared on reload: where a point sits in its file does not matter."""
    return dataclasses.replace(d, points=[dataclasses.replace(p, line=0, file="") for p in d.points])


def restart_needed(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Changes a reload cannot apply: they change who the gateway is or where its store lives."""
    out = []
    for what, a, b in (("gateway.id", old.gateway_id, new.gateway_id),
                       ("gateway.enterprise_code", old.enterprise_code, new.enterprise_code),
                       ("gateway.data_dir", old.data_dir, new.data_dir),
                       ("uplink.topic_prefix", old.mqtt and old.mqtt.topic_prefix, new.mqtt and new.mqtt.topic_prefix),
                       ("uplinks", _uplinks(old), _uplinks(new))):
        if a != b:
            out.append(f"{what} changed from {a!r} to {b!r}: restart the service to apply it")
    return out


def _uplinks(cfg: GatewayConfig) -> list[str]:
    """The uplinks by name and protocol: a reload keeps each uplink object, so neither may change."""
    return [f"{u.name} ({protocol_of(u)})" for u in cfg.uplinks]


def plan_reload(old: GatewayConfig, new: GatewayConfig) -> ReloadPlan:
    before = {d.name: _device_key(d) for d in old.devices}
    after = {d.name: _device_key(d) for d in new.devices}
    keep = [n for n in after if n in before and before[n] == after[n]]
    restart = [n for n in after if n in before and before[n] != after[n]]
    points = [dataclasses.replace(p, line=0, file="") for p in old.all_points()]
    new_points = [dataclasses.replace(p, line=0, file="") for p in new.all_points()]
    points_changed = points != new_points
    return ReloadPlan(
        keep=keep, stop=[n for n in before if n not in after], start=[n for n in after if n not in before],
        restart=restart, points_changed=points_changed,
        checks_changed=points_changed or old.rules != new.rules or old.rules_file != new.rules_file)


# --- the service -------------------------------------------------------------------------
class Service:
    def __init__(self, cfg: GatewayConfig, notifier: Notifier | None = None):
        self.cfg = cfg
        self.notifier = notifier if notifier is not None else Notifier()
        self.agent = Agent(cfg)
        wd = self.notifier.watchdog_interval
        self.stale_after = wd / 2 if wd else DEFAULT_STALE
        self.tick = min(5.0, max(0.1, wd / 4)) if wd else 5.0
        self.progress: Progress | None = None
        self.stats = StoreStats(cfg.data_dir)
        self.certs: list[CertInfo] = []
        self.reloads = {"applied": 0, "refused": 0}
        self.last_reload_ok = True
        self.config_loaded = time.time()
        self.started = time.time()
        self.ready = False
        self.stuck: list[str] = []
        self.pings = 0
        self.health: HealthServer | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._lock = asyncio.Lock()
        self._helpers: list[asyncio.Task] = []
        self._stats_task: asyncio.Task | None = None
        self._uplink_down_since: dict[str, float] = {}  # uplink name -> since when it is down

    # --- main ----------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:  # before the store: `hazgate status` tells a running agent by it while the disk is full
            mark_running(self.cfg.data_dir)
        except OSError as exc:
            log.warning("cannot write the pid file; hazgate status goes by the heartbeat alone",
                        extra={"fields": {"data_dir": str(self.cfg.data_dir), "error": str(exc)}})
        self._save_applied(self.cfg)
        await self.agent.start()
        self.certs = check_certificates(self.cfg.client_certificates())
        await self._start_health(self.cfg)
        self._helpers = [asyncio.create_task(self._supervise(), name="supervise"),
                         asyncio.create_task(self._reloader(), name="reloader")]
        try:
            await self._stop.wait()
        finally:
            log.info("stopping", extra={"fields": {"signal": "TERM/INT"}})
            self.notifier.stopping("stopping: finishing in-flight work and closing the store")
            with contextlib.suppress(TimeoutError):  # a reload in progress finishes first
                async with asyncio.timeout(STOP_WAIT_FOR_RELOAD):
                    await self._lock.acquire()
            for t in self._helpers:
                t.cancel()
            await asyncio.gather(*self._helpers, return_exceptions=True)
            await self.agent.stop()
            if self.health is not None:
                await self.health.close()
            await self.stats.close()
            self.notifier.close()
            with contextlib.suppress(OSError):
                mark_stopped(self.cfg.data_dir)
        return 0

    async def _supervise(self) -> None:
        agent, notifier = self.agent, self.notifier
        told_waiting = False
        while not agent.opened.is_set():
            try:
                async with asyncio.timeout(2.0):
                    await agent.opened.wait()
            except TimeoutError:
                if not told_waiting:
                    notifier.status(f"waiting for the store in {self.cfg.data_dir}: polling on, "
                                    "readings held in memory (see the journal)")
                    told_waiting = True
        self.progress = Progress(agent, self.stale_after)
        self.ready = True
        line = self.status_line()
        notifier.ready(line)
        log.info("ready", extra={"fields": {"watchdog_s": notifier.watchdog_interval,
                                            "notify": notifier.enabled}})
        last_key, status_at, certs_at = self._status_key(), time.monotonic(), time.monotonic()
        while True:
            stuck = self.progress.check()
            if stuck != self.stuck:
                if stuck:
                    log.error("agent stuck: watchdog pings withheld", extra={"fields": {"problems": "; ".join(stuck)}})
                elif self.stuck:
                    log.warning("agent progressing again: watchdog pings resumed")
                self.stuck = stuck
            if not stuck and notifier.watchdog_usec and notifier.watchdog():
                self.pings += 1
            if self._stats_task is None or self._stats_task.done():
                self._stats_task = asyncio.create_task(self.stats.refresh(), name="stats")
            now = time.monotonic()
            self._track_uplink(now)
            key = self._status_key()
            if key != last_key or now - status_at >= STATUS_EVERY:  # at once when something changed state
                notifier.status(self.status_line())
                last_key, status_at = key, now
            if now - certs_at >= CERT_CHECK_EVERY:
                self.certs, certs_at = check_certificates(self.cfg.client_certificates()), now
            await asyncio.sleep(self.tick)

    def _track_uplink(self, now: float) -> None:
        for u in self.agent.uplinks:
            if u.stats.state == "up":
                self._uplink_down_since.pop(u.name, None)
            else:
                self._uplink_down_since.setdefault(u.name, now)

    # --- status ----------------------------------------------------------------------------
    def _status_key(self) -> tuple:
        agent = self.agent
        return (tuple(d.link for d in agent.devices), tuple(u.stats.state for u in agent.uplinks), tuple(self.stuck),
                agent.store_error is None, self.last_reload_ok, tuple(self.restarting()))

    def restarting(self) -> list[str]:
        """Core tasks that ended and wait to be started again (agent/app.py supervises them)."""
        return sorted(name for name, r in self.agent.restarts.items() if r.restart_at is not None)

    def status_line(self) -> str:
        agent = self.agent
        devs = agent.devices
        up = sum(1 for d in devs if d.link == "up")
        parts = []
        if self.stuck:
            parts.append("STUCK: " + "; ".join(self.stuck))
        if restarting := self.restarting():
            parts.append("restarting: " + ", ".join(restarting))
        parts.append(f"{up}/{len(devs)} devices up")
        for u in agent.uplinks:
            up = u.stats
            parts.append(f"uplink {u.name} {up.state} ({up.acked}/{up.published} publishes acked, "
                         f"{up.reconnects} reconnects" + (f", {up.rejected} refused" if up.rejected else "") + ")")
        st = self.stats.values
        if st:
            age = f", oldest {self.stats.oldest_age():.0f}s" if st.get("oldest_unsent_ms") else ""
            parts.append(f"{st.get('readings_buffered', 0)} readings buffered{age}")
        if agent.store_error:
            parts.append(f"store refuses writes, {agent.writer.held} readings held in memory")
        if not self.last_reload_ok:
            parts.append("last reload refused")
        return "; ".join(parts)

    # --- reload ----------------------------------------------------------------------------
    async def _reloader(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            async with self._lock:
                await self.reload()

    async def reload(self) -> bool:
        path = self.cfg.path
        log.info("reloading config", extra={"fields": {"config": str(path)}})
        self.notifier.reloading(f"reloading {path}")
        ok = False
        try:
            new = await asyncio.get_running_loop().run_in_executor(None, load_config, path)
        except ConfigError as exc:
            for line in exc.problems.lines():
                log.error(f"config problem: {line}")
            log.error("reload refused: the new config has problems; still running the previous one",
                      extra={"fields": {"config": str(path), "problems": len(exc.problems)}})
        except Exception as exc:  # unreadable, a bug: the running config stays
            log.exception("reload refused: cannot load the new config; still running the previous one",
                          extra={"fields": {"config": str(path), "error": str(exc)}})
        else:
            log_config_warnings(new)
            ok = await self._apply(new)
        self.reloads["applied" if ok else "refused"] += 1
        self.last_reload_ok = ok
        self.notifier.ready(self.status_line())
        return ok

    async def _apply(self, new: GatewayConfig) -> bool:
        path = new.path
        for reason in (why := restart_needed(self.cfg, new)):
            log.error(f"config problem: {reason}")
        if why:
            log.error("reload refused: still running the previous config", extra={"fields": {"config": str(path)}})
            return False
        if not self.agent.opened.is_set():
            log.error("reload refused: the store is not open yet; send it again once it is",
                      extra={"fields": {"config": str(path)}})
            return False
        plan = plan_reload(self.cfg, new)
        try:
            await self.agent.apply_config(new, plan)
        except sqlite3.Error as exc:  # the store refused to register the new points: nothing changed
            log.error("reload refused: cannot register the new points in the store; still running the "
                      "previous config", extra={"fields": {"config": str(path), "error": str(exc)}})
            return False
        except Exception:  # a bug part way through: say so plainly, keep the service alive
            log.exception("reload failed part way: restart the service to run the new config",
                          extra={"fields": {"config": str(path)}})
            return False
        old, self.cfg = self.cfg, new
        self._save_applied(new)
        if self.progress is not None:
            self.progress.forget()
        self.config_loaded = time.time()
        self.certs = check_certificates(new.client_certificates())
        if health_listen(old) != health_listen(new):
            if self.health is not None:
                await self.health.close()
                self.health = None
            await self._start_health(new)
        log.info("config reloaded", extra={"fields": {
            "config": str(path), "kept": ",".join(plan.keep) or "-", "restarted": ",".join(plan.restart) or "-",
            "started": ",".join(plan.start) or "-", "stopped": ",".join(plan.stop) or "-",
            "points": sum(len(d.points) for d in new.devices), "checks_rebuilt": plan.checks_changed}})
        return True

    @staticmethod
    def _save_applied(cfg: GatewayConfig) -> None:
        """Keep the applied config's view in the data dir for `status` and `buffer`."""
        try:
            save_applied(AppliedConfig.of(cfg))
        except OSError as exc:
            log.warning("cannot keep a copy of the applied config; status and buffer need a valid config "
                        "file meanwhile", extra={"fields": {"data_dir": str(cfg.data_dir), "error": str(exc)}})

    # --- health endpoint ---------------------------------------------------------------------
    async def _start_health(self, cfg: GatewayConfig) -> None:
        listen = health_listen(cfg)
        if listen is None:
            return
        host, port = listen
        if not is_loopback(host):
            log.warning("health endpoint listens beyond this box", extra={"fields": {"listen": f"{host}:{port}"}})
        server = HealthServer(host, port, {"/healthz": self._healthz, "/metrics": self._metrics})
        try:
            await server.start()
        except OSError as exc:  # the agent's job is the data: run on without the endpoint
            log.error("health endpoint cannot listen; running without it",
                      extra={"fields": {"listen": f"{host}:{port}", "error": str(exc)}})
            return
        self.health = server

    def health_report(self) -> dict[str, Any]:
        """Problems make /healthz answer 503; warnings are worth a look but the data flows."""
        agent, now = self.agent, time.monotonic()
        problems, warnings = [], []
        if not self.ready:
            problems.append("starting: the store is not open yet")
        problems += [f"stuck: {s}" for s in self.stuck]
        for name, r in sorted(agent.restarts.items()):
            if r.restart_at is not None:
                problems.append(f"task {name} ended ({r.error}); restarting it in "
                                f"{max(0.0, r.restart_at - now):.0f}s (restart {r.count})")
            elif time.time() - r.ended_at < RESTART_WARNING:
                warnings.append(f"task {name} was restarted {r.count} time(s), last after: {r.error}")
        if agent.store_error:
            problems.append(f"store refuses writes: {agent.store_error}")
        if agent.writer.held_dropped:
            problems.append(f"{agent.writer.held_dropped} readings dropped from memory since start")
        reasons = {u.name: u.stats.last_error for u in agent.uplinks}
        for name, since in self._uplink_down_since.items():
            if now - since > UPLINK_DOWN_PROBLEM:
                problems.append(f"uplink {name} down for {now - since:.0f}s: {reasons.get(name) or 'connecting'}")
        for u in agent.uplinks:  # a far end that takes messages and never acknowledges them
            s, age = u.stats, u.stats.oldest_unacked_age(now)
            if s.ack_deadline and age > s.ack_deadline:
                problems.append(f"uplink {u.name}: oldest message unacknowledged for {age:.0f}s "
                                f"(deadline {s.ack_deadline:g}s)")
            elif s.ack_warning and age > s.ack_warning:
                warnings.append(f"uplink {u.name}: oldest message unacknowledged for {age:.0f}s")
        devs = agent.devices
        down = [d.device.name for d in devs if d.link == "down"]
        if devs and len(down) == len(devs):
            problems.append("all devices down")
        else:
            warnings += [f"device down: {name}" for name in down]
        for c in self.certs:
            days = c.days_left
            if c.error:
                warnings.append(f"certificate unreadable: {c.path}: {c.error}")
            elif days is not None and days <= 0:
                problems.append(f"certificate expired: {c.path} ({c.use})")
            elif days is not None and days < 30:
                warnings.append(f"certificate expires in {days:.0f} days: {c.path} ({c.use})")
        if not agent.clock.synchronized:
            warnings.append("clock not synchronized: readings are marked uncertain")
        if not self.last_reload_ok:
            warnings.append("last reload refused: see the journal")
        return {"status": "fail" if problems else "ok", "version": __version__, "gateway": self.cfg.gateway_id,
                "uptime_s": round(time.time() - self.started, 1), "problems": problems, "warnings": warnings}

    async def _healthz(self) -> tuple[int, str, bytes]:
        report = self.health_report()
        body = json.dumps(report, ensure_ascii=False, indent=1).encode() + b"\n"
        return (200 if report["status"] == "ok" else 503), "application/json; charset=utf-8", body

    async def _metrics(self) -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.render_metrics().encode()

    def render_metrics(self) -> str:
        agent, e = self.agent, Exposition()
        gw = self.cfg.gateway_id
        e.family("hazgate_build_info", "gauge", "Version of the running agent (value 1).",
                 [({"version": __version__, "gateway": gw}, 1)])
        e.family("hazgate_start_time_seconds", "gauge", "When the agent started (Unix time).", self.started)
        e.family("hazgate_ready", "gauge", "1 once the config is valid and the store open.", int(self.ready))
        e.family("hazgate_healthy", "gauge", "1 while nothing is stuck (watchdog pings are sent).",
                 int(self.ready and not self.stuck))
        e.family("hazgate_watchdog_pings_total", "counter", "WATCHDOG=1 messages sent to systemd.", self.pings)
        if self.progress is not None:
            e.family("hazgate_progress_age_seconds", "gauge",
                     "Seconds since each part of the agent last made progress.",
                     [({"component": k}, round(v, 3)) for k, v in sorted(self.progress.ages.items())])
        devs = agent.devices
        e.family("hazgate_device_up", "gauge", "1 when the device answers, 0 when down or not yet known.",
                 [({"device": d.device.name}, int(d.link == "up")) for d in devs])
        e.family("hazgate_device_polls_total", "counter", "Polls completed.",
                 [({"device": d.device.name}, d.polls) for d in devs])
        e.family("hazgate_device_overruns_total", "counter", "Poll cycles skipped because a poll ran long.",
                 [({"device": d.device.name}, d.overruns) for d in devs])
        e.family("hazgate_device_last_good_read_timestamp_seconds", "gauge",
                 "Collection time of the last poll with a good value (Unix time).",
                 [({"device": d.device.name}, d.last_good_ms / 1000) for d in devs if d.last_good_ms])
        metered = [(d, d.driver) for d in devs if hasattr(d.driver, "buckets")]
        e.family("hazgate_device_read_errors_total", "counter",
                 "Points read with a quality other than good, by reason.",
                 [({"device": d.device.name, "reason": reason}, n)
                  for d, m in metered for reason, n in sorted(m.errors.items())])
        e.histogram("hazgate_device_read_duration_seconds", "Time one poll's read of the device took.",
                    [({"device": d.device.name}, m) for d, m in metered])
        st = self.stats.values
        if st:
            e.family("hazgate_readings_buffered", "gauge", "Readings in the store not yet acknowledged.",
                     st["readings_buffered"])
            e.family("hazgate_readings_unsent", "gauge", "Readings in the store not yet put into a message.",
                     st["readings_unsent"])
            e.family("hazgate_oldest_unsent_age_seconds", "gauge",
                     "Age of the oldest reading not yet acknowledged, when the store figures were read "
                     "(0 when none).", self.stats.oldest_age())
            e.family("hazgate_events_buffered", "gauge", "Events not yet put into a message.", st["events_buffered"])
            e.family("hazgate_messages_unacked", "gauge", "Messages published or waiting, not yet acknowledged.",
                     st["messages_unacked"])
            e.family("hazgate_store_used_bytes", "gauge", "Store space in use (compared with max_size).",
                     st["used_bytes"])
            e.family("hazgate_evicted_readings_total", "counter",
                     "Readings dropped by the store bounds since the store was created.", st["evicted_readings"])
            per = st.get("uplinks", {})
            e.family("hazgate_uplink_last_ack_seq", "gauge", "Sequence number of the last acknowledged message.",
                     [({"uplink": n}, u["last_ack_seq"] or 0) for n, u in per.items()])
            e.family("hazgate_uplink_readings_buffered", "gauge", "Readings the uplink has not had acknowledged.",
                     [({"uplink": n}, u["readings_buffered"]) for n, u in per.items()])
            e.family("hazgate_uplink_oldest_unsent_age_seconds", "gauge",
                     "Age of the uplink's oldest reading not yet acknowledged, when the store figures were "
                     "read (0 when none).", [({"uplink": n}, self.stats.oldest_age(u)) for n, u in per.items()])
            e.family("hazgate_uplink_messages_set_aside", "gauge",
                     "Messages set aside after repeated refusals (hazgate buffer export --rejected).",
                     [({"uplink": n}, u["messages_rejected"]) for n, u in per.items()])
            e.family("hazgate_uplink_evicted_readings_total", "counter",
                     "Readings the store bounds dropped before the uplink had them.",
                     [({"uplink": n}, u["evicted_readings"]) for n, u in per.items()])
            e.family("hazgate_store_stats_age_seconds", "gauge", "Age of the store figures above.",
                     round(time.monotonic() - self.stats.at, 3) if self.stats.at else 0)
        e.family("hazgate_store_max_bytes", "gauge", "The store's size bound (max_size).", self.cfg.store.max_bytes)
        e.family("hazgate_store_writable", "gauge", "0 while the store refuses writes (disk full, read-only).",
                 int(agent.store_error is None and agent.opened.is_set()))
        e.family("hazgate_readings_held_in_memory", "gauge",
                 "Readings polled but not yet in the store.", agent.writer.held)
        e.family("hazgate_readings_dropped_total", "counter",
                 "Readings dropped from memory while the store refused writes.", agent.writer.held_dropped)
        ups = [({"uplink": u.name}, u.stats) for u in agent.uplinks]
        e.family("hazgate_uplink_up", "gauge", "1 while connected to the far end.",
                 [(lb, int(s.state == "up")) for lb, s in ups])
        e.family("hazgate_uplink_published_total", "counter", "Messages handed to the far end.",
                 [(lb, s.published) for lb, s in ups])
        e.family("hazgate_uplink_acked_total", "counter", "Messages the far end acknowledged.",
                 [(lb, s.acked) for lb, s in ups])
        e.family("hazgate_uplink_rejected_total", "counter", "Messages the far end refused.",
                 [(lb, s.rejected) for lb, s in ups])
        e.family("hazgate_uplink_reconnects_total", "counter", "Connections made again after a loss.",
                 [(lb, s.reconnects) for lb, s in ups])
        e.family("hazgate_uplink_oldest_unacked_age_seconds", "gauge",
                 "Seconds the oldest message in flight has waited for its acknowledgement (0: none).",
                 [(lb, round(s.oldest_unacked_age(), 3)) for lb, s in ups])
        kinds = self.stats.active
        if self.stats.at is not None:
            e.family("hazgate_active_conditions", "gauge", "Active alarms, bypasses and other conditions, by kind.",
                     [({"kind": k}, n) for k, n in sorted(kinds.items())])
            e.family("hazgate_active_alarms", "gauge", "Active process and gas alarms.",
                     kinds.get("process_alarm", 0) + kinds.get("gas_alarm", 0))
            e.family("hazgate_active_bypasses", "gauge", "Interlocks bypassed now.", kinds.get("interlock_bypass", 0))
        e.family("hazgate_check_errors_total", "counter", "Checks that failed with an error.",
                 agent.checks.errors)
        e.family("hazgate_task_restarts_total", "counter", "Times a core task ended (it is started again after a back-off).",
                 [({"task": name}, r.count) for name, r in sorted(agent.restarts.items())])
        e.family("hazgate_clock_synchronized", "gauge", "1 while the system clock is synchronized.",
                 int(agent.clock.synchronized))
        e.family("hazgate_config_reloads_total", "counter", "Config reloads (SIGHUP), by result.",
                 [({"result": k}, n) for k, n in sorted(self.reloads.items())])
        e.family("hazgate_config_last_reload_successful", "gauge", "0 when the last reload was refused.",
                 int(self.last_reload_ok))
        e.family("hazgate_config_loaded_timestamp_seconds", "gauge", "When the running config was loaded.",
                 self.config_loaded)
        e.family("hazgate_certificate_expiry_timestamp_seconds", "gauge",
                 "When each client certificate expires (Unix time).",
                 [({"use": c.use, "file": str(c.path)}, c.not_after) for c in self.certs if c.not_after])
        p = process_figures()
        e.family("process_cpu_seconds_total", "counter", "User and system CPU time.", round(p["cpu"], 3))
        e.family("process_resident_memory_bytes", "gauge", "Resident memory.", p["rss"])
        if "vsize" in p:
            e.family("process_virtual_memory_bytes", "gauge", "Virtual memory.", p["vsize"])
        if "fds" in p:
            e.family("process_open_fds", "gauge", "Open file descriptors.", p["fds"])
        e.family("process_threads", "gauge", "Threads of the Python process.", p["threads"])
        e.family("process_start_time_seconds", "gauge", "Start time of the process (Unix time).",
                 p.get("start", self.started))
        return e.text()


def health_listen(cfg: GatewayConfig) -> tuple[str, int] | None:
    """The `[health] listen` address of a config (None: the endpoint is off)."""
    return getattr(cfg, "health_listen", None)


def journal_prefixes() -> None:
    """Under systemd (JOURNAL_STREAM set) prefix each line with its syslog priority, `<3>` for
    errors and so on: `journalctl -p warning -u hazgate` then shows warnings and worse."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return
    if stream != f"{st.st_dev}:{st.st_ino}":  # stderr is not (or no longer) the journal
        return
    levels = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    class Prefixed(logging.Formatter):
        def __init__(self, inner: logging.Formatter | None):
            super().__init__()
            self.inner = inner or logging.Formatter()

        def format(self, record: logging.LogRecord) -> str:
            return f"<{levels.get(record.levelno, 6)}>" + self.inner.format(record)

    for handler in logging.getLogger().handlers:
        handler.setFormatter(Prefixed(handler.formatter))


def log_config_warnings(cfg: GatewayConfig) -> None:
    """What `hazgate validate` shows after "valid", at warning level (after journal_prefixes, so
    that `journalctl -p warning` shows it)."""
    for w in cfg.warnings:
        log.warning(f"config warning: {w.file}:{w.line}: {w.key}: {w.message}")


async def run_service(cfg: GatewayConfig) -> int:
    journal_prefixes()
    log_config_warnings(cfg)
    limit_malloc_arenas()
    return await Service(cfg).run()
