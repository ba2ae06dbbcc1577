"""`hazgate receive` against a secured broker (issue 17): user name, a password from an
owner-only file, the broker's CA and a client certificate, like the gateway's `[uplink]`;
a real Mosquitto that requires all of them (tests/securekit.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import HAZGATE, ROOT, Proc
from plant import DeviceSpec, simple_points, write_plant
from securekit import PASSWORD, SecureBroker, make_pki, secret_file, secure_uplink
from test_receive import finish, stored_readings, subscribed, wait_for


@pytest.fixture
def secured(tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    b = SecureBroker(tmp_path, pki)
    b.start()
    yield b
    b.stop()


def login(pki, password_file: Path) -> list[str]:
    return ["--username", "GW-TEST-0001", "--password-file", str(password_file), "--ca-file", str(pki.ca),
            "--cert-file", str(pki.client_cert), "--key-file", str(pki.client_key)]


def test_receive_with_user_password_and_mutual_tls(secured, procs, tmp_path: Path) -> None:
    """The gateway and the receiver both prove themselves to a broker that requires TLS with a
    client certificate and a login; the readings arrive, in order, and no log shows the password."""
    pki = secured.pki
    password = secret_file(tmp_path / "uplink.pass", PASSWORD)
    dev = DeviceSpec("plc", simple_points("A"), poll_interval="200ms", timeout="150ms")
    plant = write_plant(tmp_path / "gw", secured.url, [dev])
    secure_uplink(plant.config, pki, password)
    db = tmp_path / "recv.db"
    rx = Proc([*HAZGATE, "receive", "--broker", secured.url, "--db", str(db), "--idle-exit", "3",
               "--fail-on-gaps", *login(pki, password)], tmp_path / "receiver.log")
    procs.append(rx)
    wait_for(lambda: subscribed(rx), 20, "receiver subscribed over TLS with its login")
    plant.start_simulator(procs, "plc")
    agent = plant.start_agent(procs)
    wait_for(lambda: stored_readings(db) >= 10, 30, "readings received")
    agent.stop()
    assert finish(rx) == 0, rx.output()
    assert "GW-TEST-0001: messages=" in rx.output() and "gaps=0" in rx.output(), rx.output()
    assert PASSWORD not in rx.output() + agent.log_path.read_text()


def test_receive_refused_by_the_broker_says_why(secured, tmp_path: Path) -> None:
    """A wrong password: exit 1 with the broker's answer, not only 'never reached'."""
    wrong = secret_file(tmp_path / "wrong.pass", "not-the-password")
    r = subprocess.run([*HAZGATE, "receive", "--broker", secured.url, "--db", str(tmp_path / "r.db"),
                        "--duration", "4", *login(secured.pki, wrong)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert f"never reached the broker at {secured.url}: it refused the connection: Not authorized" in r.stderr


def test_receive_login_options_are_checked_before_connecting(tmp_path: Path) -> None:
    """Each mistake exits 2 with one line naming the option, the value and what is valid."""
    pki = make_pki(tmp_path / "pki")
    good = secret_file(tmp_path / "good.pass", "x")
    open_to_all = secret_file(tmp_path / "open.pass", "x")
    open_to_all.chmod(0o644)
    tls, plain = "mqtts://127.0.0.1:8883", "mqtt://127.0.0.1:1883"
    cases = [
        (plain, ["--password-file", str(good)], "--password-file needs --username"),
        (tls, ["--username", "u", "--password-file", str(open_to_all)],
         f"--password-file {open_to_all} is readable by other users (mode 0644); valid: readable only"),
        (tls, ["--username", "u", "--password-file", str(tmp_path / "none.pass")],
         f"--password-file {tmp_path / 'none.pass'}: no such file; valid: an existing file"),
        (plain, ["--ca-file", str(pki.ca)], "--ca-file: TLS settings, and the broker address is mqtt:// (plain); valid: an mqtts://"),
        (tls, ["--cert-file", str(pki.client_cert)], "--cert-file and --key-file go together"),
        (tls, ["--ca-file", str(pki.client_key)], "--ca-file, --cert-file, --key-file: cannot use them: "),
    ]
    for broker, extra, expected in cases:
        r = subprocess.run([*HAZGATE, "receive", "--broker", broker, "--db", str(tmp_path / "r.db"), *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (extra, r.stderr)
        assert r.stderr.startswith(f"hazgate receive: {expected}"), (extra, r.stderr)
