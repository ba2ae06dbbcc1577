"""`hazgate demo`: simulated plant + local Mosquitto + agent + receiver, with a live view.

Everything runs on loopback as child processes this command owns, each in its own process
group so a Ctrl-C reaches only the demo, which then ends them in order by PID: the agent first
(it publishes `offline`), then the receiver, the simulator and the broker. The agent works on a
temporary copy of config/gateway.toml pointed at the local broker, with a temporary data_dir;
config/plant.toml is served as is when its ports (5020, 4840) are free, else from a copy on free
ports; a copy also puts its virtual serial port (the Modbus RTU bus) into the demo's temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.common.loopback import free_port
from agent.common.problems import ConfigError
from agent.config.loader import load_config
from agent.demo.liveview import LiveView, ProcessRow

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"
GATEWAY = CONFIG_DIR / "gateway.toml"
PLANT = CONFIG_DIR / "plant.toml"
HAZGATE = [sys.executable, "-m", "agent.cli"]
START_TIMEOUT = 15.0
STOP_TIMEOUT = 8.0
# keys holding file paths, resolved against the file's folder (the demo moves the files)
PATH_KEYS = {"data_dir", "points", "rules", "ca_file", "cert_file", "key_file", "password_file",
             "certificate", "private_key", "server_certificate"}
UPLINK_AUTH_KEYS = ("ca_file", "cert_file", "key_file", "username", "password_file")


class DemoError(Exception):
    """The demo cannot start; the message says what to do."""


# --- TOML copies ---------------------------------------------------------------------------
def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def toml_dumps(data: dict[str, Any]) -> str:
    """TOML text for what tomllib loaded (tables, arrays of tables, scalars, arrays)."""
    out: list[str] = []

    def table(path: list[str], t: dict[str, Any]) -> None:
        for k, v in t.items():
            if not isinstance(v, dict) and not _is_table_array(v):
                out.append(f"{_key(k)} = {_value(v)}")
        for k, v in t.items():
            name = ".".join(_key(p) for p in [*path, k])
            if isinstance(v, dict):
                out.extend(["", f"[{name}]"])
                table([*path, k], v)
            elif _is_table_array(v):
                for item in v:
                    out.extend(["", f"[[{name}]]"])
                    table([*path, k], item)

    table([], data)
    return "\n".join(out).lstrip("\n") + "\n"


def _absolute_paths(node: Any, base: Path) -> Any:
    """Copy of a loaded TOML document with every relative path key made absolute."""
    if isinstance(node, dict):
        return {k: (str((base / v).resolve()) if k in PATH_KEYS and isinstance(v, str) and not Path(v).is_absolute()
                    else _absolute_paths(v, base)) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute_paths(x, base) for x in node]
    return node


def _load_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8-sig"))


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def plant_copy(plant: Path, workdir: Path, busy: set[int]) -> tuple[Path, dict]:
    """A copy of the scenario with every PLC port in `busy` moved to a free port, and every
    virtual serial port (`link`) moved into `workdir`; returns the copy and what moved where."""
    data = _absolute_paths(_load_toml(plant), plant.parent)
    moved: dict = {}
    for plc in data.get("plcs", []):
        if plc.get("link"):
            plc["link"] = moved.setdefault(plc["link"], str(workdir / Path(plc["link"]).name))
            continue
        port = int(plc.get("port", 5020))
        if port in busy:
            plc["port"] = moved.setdefault(port, free_port())
    out = workdir / "plant.toml"
    out.write_text(toml_dumps(data), encoding="utf-8")
    return out, moved


def gateway_copy(gateway: Path, workdir: Path, broker: str, moved: dict) -> Path:
    """A copy of the gateway config: local broker, temp data_dir, moved PLC ports, absolute paths."""
    data = _absolute_paths(_load_toml(gateway), gateway.parent)
    data.setdefault("gateway", {})["data_dir"] = str(workdir / "data")
    uplink = {k: v for k, v in data.get("uplink", {}).items() if k not in UPLINK_AUTH_KEYS}
    uplink["broker"] = broker
    data["uplink"] = uplink
    # the simulated plant's readings are stamped by this machine: trust its clock for the demo
    data.setdefault("clock", {})["sync_source"] = "trust"
    for dev in data.get("devices", []):
        if dev.get("protocol") in ("modbus-tcp", "modbus-rtu") and dev.get("port") in moved:
            dev["port"] = moved[dev["port"]]
        elif dev.get("protocol") == "opcua" and (url := urlparse(dev.get("endpoint", ""))).port in moved:
            dev["endpoint"] = url._replace(netloc=f"{url.hostname}:{moved[url.port]}").geturl()
    out = workdir / "gateway.toml"
    out.write_text(toml_dumps(data), encoding="utf-8")
    return out


# --- child processes -----------------------------------------------------------------------
class Child:
    """A process the demo owns: own process group, output to a log file, ended by its PID."""

    def __init__(self, name: str, args: list[str], log: Path):
        self.name, self.args, self.log_path = name, args, log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                  cwd=ROOT, process_group=0)
        self.expected_exit = False

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def last_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][-160:] if lines else ""

    def row(self) -> ProcessRow:
        if self.alive():
            return ProcessRow(self.name, self.pid, True)
        rc = self.p.returncode
        if rc < 0:
            return ProcessRow(self.name, self.pid, False, f"killed by {signal.Signals(-rc).name}")
        return ProcessRow(self.name, self.pid, False, f"exit {rc}: {self.last_line()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        self.expected_exit = True
        if self.alive():
            os.kill(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._log.close()
        return self.p.returncode


def _wait_listening(child: Child, port: int, timeout: float = START_TIMEOUT, marker: str | None = None) -> None:
    """Until `child` listens on `port` (and printed `marker`); DemoError if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise DemoError(f"{child.name} exited with {child.p.returncode}: {child.last_line()}")
        with socket.socket() as s:
            s.settimeout(0.5)
            listening = s.connect_ex(("127.0.0.1", port)) == 0
        if listening and (marker is None or marker in child.log_path.read_text(errors="replace")):
            return
        time.sleep(0.05)
    raise DemoError(f"{child.name} is not listening on 127.0.0.1:{port} after {timeout:g}s (log: {child.log_path})")


class Demo:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.children: list[Child] = []

    def spawn(self, name: str, args: list[str]) -> Child:
        child = Child(name, args, self.workdir / f"{name}.log")
        self.children.append(child)
        return child

    def start_broker(self) -> str:
        exe = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
        if exe is None:
            raise DemoError("mosquitto is not installed; install it with: apt-get install mosquitto")
        port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        _wait_listening(self.spawn("mosquitto", [exe, "-c", str(conf)]), port)
        return f"mqtt://127.0.0.1:{port}"

    def start_plant(self) -> dict:
        """Serve config/plant.toml (a copy on free ports when its ports are busy, and with its virtual
        serial ports in the demo's own folder); returns what moved."""
        plcs = _load_toml(PLANT).get("plcs", [])
        ports = {int(p.get("port", 5020)) for p in plcs if p.get("protocol") != "modbus-rtu"}
        links = any(p.get("link") for p in plcs)
        busy = {p for p in ports if not port_free(p)}
        for attempt in range(2):
            moved: dict = {}
            scenario = PLANT
            if busy or links:
                scenario, moved = plant_copy(PLANT, self.workdir, busy)
            sim = self.spawn("simulator", [*HAZGATE, "simulate", "-s", str(scenario)])
            try:
                for port in ports:
                    _wait_listening(sim, moved.get(port, port), marker="serving Modbus TCP")
                return moved
            except DemoError:
                if attempt or sim.alive():
                    raise
                busy = ports  # lost a race for the port: move everything
                self.children.remove(sim)
                sim.stop()
        raise AssertionError("unreachable")

    def stop_all(self) -> None:
        order = ("agent", "receiver", "simulator", "mosquitto")
        for child in sorted(self.children, key=lambda c: order.index(c.name) if c.name in order else 0):
            child.stop()

    def rows(self) -> list[ProcessRow]:
        return [c.row() for c in self.children]


def demo(args: argparse.Namespace) -> int:
    duration = getattr(args, "duration", None)
    if duration is not None and duration <= 0:
        print("hazgate demo: --duration must be more than 0 seconds", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hazgate-demo-"))
    d = Demo(workdir)
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    view: LiveView | None = None
    failed = False
    try:
        try:
            broker = d.start_broker()
            moved = d.start_plant()
            gateway = gateway_copy(GATEWAY, workdir, broker, moved)
            cfg = load_config(gateway)
        except (DemoError, ConfigError, OSError) as exc:
            if isinstance(exc, ConfigError):
                exc = DemoError("; ".join(exc.problems.lines()))
            print(f"hazgate demo: {exc}", file=sys.stderr)
            failed = True
            return 1
        view = LiveView(cfg, title="hazgate demo", processes=d.rows)
        view.start()  # subscribed before the agent starts: the view sees every seq from 1
        agent = d.spawn("agent", [*HAZGATE, "run", "-c", str(gateway)])
        d.spawn("receiver", [*HAZGATE, "receive", "--broker", broker, "--db", str(workdir / "received.db")])
        if not view.console.is_terminal:
            print(f"hazgate demo: broker {broker}, agent pid {agent.pid}, files in {workdir}"
                  + (f", running {duration:g}s" if duration else ", Ctrl-C to stop"), flush=True)
        deadline = time.monotonic() + duration if duration else None
        core = [c for c in d.children if c.name in ("mosquitto", "simulator", "agent")]

        def done() -> bool:  # a dead child stays on view (its devices turn bad); exit 1 at the end
            return bool(stop_requested) or (deadline is not None and time.monotonic() >= deadline)

        with contextlib.suppress(KeyboardInterrupt):
            view.run(done)
        dead = [c for c in core if not c.alive()]
        if dead:
            failed = True
            for c in dead:
                print(f"hazgate demo: {c.name} stopped unexpectedly ({c.row().note})", file=sys.stderr)
        return 1 if failed else 0
    except KeyboardInterrupt:  # Ctrl-C while starting up
        return 0
    finally:
        previous.setdefault(signal.SIGINT, signal.signal(signal.SIGINT, signal.SIG_IGN))  # finish cleanup
        if view is not None:
            view.stop()
        d.stop_all()
        for s, h in previous.items():
            signal.signal(s, h)
        if failed and d.children:
            print(f"hazgate demo: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
