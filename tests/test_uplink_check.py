"""`hazgate uplink check` (issue 17): each uplink's connection tried with the gateway's own
settings, step by step, against real peers: a Mosquitto that requires TLS, a client
certificate and a login (tests/securekit.py), a closed port, and the reference platforms of
an HTTP and a TCP uplink (`hazgate receive --listen`). Nothing is sent that a far end stores."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import HAZGATE, ROOT, Proc, free_port, wait_port
from plant import DeviceSpec, Plant, Subscriber, simple_points, write_plant
from platformkit import HJ212, write_hj212_pw
from securekit import PASSWORD, SecureBroker, make_pki, secret_file, secure_uplink
from test_uplinks_e2e import plant_with_platforms, start_platform


def check(plant: Plant, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*HAZGATE, "uplink", "check", "-c", str(plant.config), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def steps(out: str) -> dict[str, str]:
    """Step label -> its outcome, from the lines of one uplink."""
    return {line.split(None, 1)[0]: line.split(None, 1)[1] for line in out.splitlines()
            if line.startswith("  ")}


@pytest.fixture
def secured(tmp_path: Path):
    b = SecureBroker(tmp_path, make_pki(tmp_path / "pki"))
    b.start()
    yield b
    b.stop()


def secured_plant(tmp_path: Path, broker: SecureBroker, password: str, **files: Path) -> Plant:
    dev = DeviceSpec("plc", simple_points("A"))
    plant = write_plant(tmp_path / "gw", broker.url, [dev])
    secure_uplink(plant.config, broker.pki, secret_file(tmp_path / "uplink.pass", password), **files)
    return plant


def test_good_broker_wrong_password_and_untrusted_certificate_give_three_verdicts(secured, tmp_path: Path) -> None:
    good = check(secured_plant(tmp_path / "good", secured, PASSWORD))
    assert good.returncode == 0, good.stdout + good.stderr
    s = steps(good.stdout)
    assert s["address"] == "ok: 127.0.0.1 is 127.0.0.1"
    assert s["TLS"] == "ok: the certificate is trusted and names the host"
    assert s["login"] == "accepted: user GW-TEST-0001 and client certificate"
    assert s["verdict"] == "OK" and good.stdout.endswith("1 of 1 uplinks ok\n")

    wrong = check(secured_plant(tmp_path / "wrong", secured, "not-the-password"))
    assert wrong.returncode == 1, wrong.stdout
    s = steps(wrong.stdout)
    assert s["TLS"].startswith("ok") and s["login"] == "FAILED: Not authorized", wrong.stdout
    assert s["verdict"].startswith("FAILED: the broker refused the login: username and password_file")

    untrusted = check(secured_plant(tmp_path / "untrusted", secured, PASSWORD, ca=secured.pki.stranger_ca))
    assert untrusted.returncode == 1, untrusted.stdout
    s = steps(untrusted.stdout)
    assert s["connection"] == "ok" and s["TLS"].startswith("FAILED: "), untrusted.stdout
    assert "certificate verify failed" in s["TLS"] and s["login"] == "not tried"
    assert s["verdict"].startswith("FAILED: the far end's certificate is not trusted: ca_file")
    assert PASSWORD not in good.stdout + wrong.stdout + untrusted.stdout + good.stderr


def test_closed_port_and_a_missing_password_file(tmp_path: Path) -> None:
    plant = write_plant(tmp_path, f"mqtt://127.0.0.1:{free_port()}", [DeviceSpec("plc", simple_points("A"))])
    closed = check(plant)
    assert closed.returncode == 1
    s = steps(closed.stdout)
    assert s["connection"].startswith("FAILED: ") and "refused" in s["connection"], closed.stdout
    assert s["TLS"] == "not tried" and s["verdict"].startswith("FAILED: nothing accepts connections there")

    pw = secret_file(tmp_path / "uplink.pass", "x")
    plant.config.write_text(plant.config.read_text().replace(
        "[uplink]\n", f'[uplink]\nusername = "GW-TEST-0001"\npassword_file = "{pw}"\n', 1))
    pw.unlink()  # after the config names it: validation would refuse it, a connect meets it
    gone = check(plant)
    assert gone.returncode == 2 and "password_file" in gone.stderr  # the config check comes first


def test_a_plain_broker_sees_nothing_but_a_connection(broker, tmp_path: Path) -> None:
    """Neither a message nor a retained status nor a will, and a client id of its own (the
    running agent's session is never taken over): nothing a platform would store."""
    plant = write_plant(tmp_path / "gw", broker.url, [DeviceSpec("plc", simple_points("A"))])
    with Subscriber(broker.port, "#") as sub:
        out = check(plant, "--uplink", "mqtt")
        assert out.returncode == 0, out.stdout + out.stderr
        assert steps(out.stdout)["TLS"] == "not used (a plain address)"
        assert steps(out.stdout)["login"] == "accepted: anonymous access"
        time.sleep(1.0)  # what a publish or a will would take to come through, many times over
        assert sub.messages == [], sub.messages
    assert " as GW-TEST-0001-check " in broker.proc.output(), broker.proc.output()


def test_http_and_tcp_platforms_reachable_and_given_nothing(broker, procs, tmp_path: Path) -> None:
    plant, http_port, tcp_port = plant_with_platforms(tmp_path, broker)
    dbs = {"mem": tmp_path / "mem.db", "jiangsu": tmp_path / "js.db"}
    start_platform(procs, plant, "mem", f"http://127.0.0.1:{http_port}/api/realtime", dbs["mem"])
    start_platform(procs, plant, "jiangsu", f"tcp://127.0.0.1:{tcp_port}", dbs["jiangsu"])
    out = check(plant)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("  verdict     OK") == 3 and "3 of 3 uplinks ok" in out.stdout
    for name in ("mem", "jiangsu"):
        block = out.stdout.split(f"uplink {name} (")[1].split("\nuplink ")[0]
        assert steps(block)["login"].startswith("not checked: this platform checks its credentials"), block
        with sqlite3.connect(dbs[name]) as c:
            assert c.execute("SELECT COUNT(*) FROM platform_messages").fetchone()[0] == 0

    one = check(plant, "--uplink", "jiangsu")
    assert one.returncode == 0 and one.stdout.count("uplink ") == 1, one.stdout
    unknown = check(plant, "--uplink", "nope")
    assert unknown.returncode == 2 and "uplinks: mqtt, mem, jiangsu" in unknown.stderr


def test_a_platform_that_is_down_fails_only_its_own_uplink(broker, tmp_path: Path) -> None:
    plant, _http_port, _tcp_port = plant_with_platforms(tmp_path, broker)
    out = check(plant)
    assert out.returncode == 1
    assert "1 of 3 uplinks ok; failed: mem, jiangsu" in out.stdout, out.stdout


def test_an_hj212_platform_is_reachable_and_given_nothing(broker, procs, tmp_path: Path) -> None:
    plant = write_plant(tmp_path, broker.url, [DeviceSpec("plc", simple_points("A"))])
    write_hj212_pw(tmp_path)
    port = free_port()
    plant.config.write_text(plant.config.read_text() + HJ212.format(port=port))
    db = tmp_path / "env.db"
    procs.append(Proc([*HAZGATE, "receive", "--listen", f"hj212://127.0.0.1:{port}", "--uplink-config",
                       str(plant.config), "--uplink", "env", "--db", str(db)], tmp_path / "env.log"))
    wait_port(port, 15)
    out = check(plant, "--uplink", "env")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "  verdict     OK" in out.stdout and "hj212://127.0.0.1:" in out.stdout, out.stdout
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM hj212_uploads").fetchone()[0] == 0
