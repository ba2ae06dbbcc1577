"""Operations (issue 17, item 5) through `hazgate` subprocesses:

- `status` and `buffer` fall back to the config the running agent applied (kept in the data dir
  at start and on every applied reload) when the file on disk is broken, and say so;
- `status` says `not running` at once after a clean stop (not 15 s later, when the heartbeat
  goes stale);
- `--version` names the commit;
- `simulate` with its port taken prints one line naming the port, no traceback.

Every wait is bounded; every process is stopped by its PID (conftest.Proc).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HAZGATE, ROOT, Proc, free_port
from plant import DeviceSpec, simple_points, write_plant

from agent import release_version


def until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := cond()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
    return result


def hazgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*HAZGATE, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def agent_line(config: Path) -> str:
    r = hazgate("status", "-c", str(config))
    return next((x for x in r.stdout.splitlines() if x.startswith("agent:")), r.stderr)


def test_status_and_buffer_use_the_applied_config_while_the_file_is_broken(procs: list[Proc], tmp_path: Path) -> None:
    """Before: both exited 2 with the file's problems while the agent ran on the previous config."""
    dev = DeviceSpec("plc", simple_points("A"), poll_interval="200ms", timeout="150ms")
    plant = write_plant(tmp_path, f"mqtt://127.0.0.1:{free_port()}", [dev])  # no platform: all is buffered
    plant.start_simulator(procs, "plc")
    agent = plant.start_agent(procs)
    until(lambda: agent_line(plant.config).startswith("agent:   running;"), 30, "status: running")
    # an applied reload is kept too: the device renamed, then the file broken
    good = plant.config.read_text().replace('name = "plc"', 'name = "plc-renamed"')
    plant.config.write_text(good)
    agent.send(signal.SIGHUP)
    until(lambda: "config reloaded" in agent.output(), 20, "the reload applied")
    plant.config.write_text(good + "\n[[devices]]\nname = \n")  # not TOML any more

    r = hazgate("status", "-c", str(plant.config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{plant.config}:" in r.stderr, r.stderr  # the file's problem is still shown
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"note:    {plant.config} has problems (run hazgate validate); showing the config "
                               "the agent applied at "), r.stdout
    assert any(x.startswith("agent:   running;") for x in lines), r.stdout
    assert any(x.strip().startswith("plc-renamed ") for x in lines), r.stdout

    r = hazgate("buffer", "-c", str(plant.config), "stats")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "showing the config the agent applied" in r.stderr and "readings_buffered" in r.stdout, r.stdout + r.stderr
    assert agent.stop() == 0

    # another config's applied copy is not taken for this one's
    other = tmp_path / "other.toml"
    shutil.copy(plant.config, other)
    r = hazgate("status", "-c", str(other))
    assert r.returncode == 2 and "is that of" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_status_says_not_running_right_after_a_clean_stop(procs: list[Proc], tmp_path: Path) -> None:
    """Before: `running` until the last heartbeat was 15 s old."""
    dev = DeviceSpec("plc", simple_points("A"), poll_interval="200ms", timeout="150ms")
    plant = write_plant(tmp_path, f"mqtt://127.0.0.1:{free_port()}", [dev])
    plant.start_simulator(procs, "plc")
    agent = plant.start_agent(procs)
    until(lambda: agent_line(plant.config).startswith("agent:   running;"), 30, "status: running")
    assert agent.stop() == 0
    assert agent_line(plant.config).startswith("agent:   not running;")


def test_version_names_the_commit() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    r = hazgate("--version")
    assert r.returncode == 0 and r.stdout.startswith("hazgate "), r
    assert f"g{commit}" in r.stdout or commit in r.stdout, r.stdout


def test_version_outside_git_is_pyprojects(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "hazgate"\nversion = "9.8.7"\n')
    assert release_version(tmp_path) == "9.8.7"


def test_simulate_with_its_port_taken_says_so_in_one_line(tmp_path: Path) -> None:
    dev = DeviceSpec("plc", simple_points("A"))
    plant = write_plant(tmp_path, "mqtt://127.0.0.1:1", [dev])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", dev.port))
        holder.listen()
        r = subprocess.run([*HAZGATE, "simulate", "-s", str(plant.scenarios[dev.port])], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("hazgate simulate:")]
    assert errors == [f"hazgate simulate: cannot listen on 127.0.0.1:{dev.port} for Modbus TCP (plc): address "
                      f"already in use; stop what holds it (`ss -ltnp 'sport = :{dev.port}'` names it: another "
                      "simulator?) or give the PLC another port in the scenario"], r.stderr
