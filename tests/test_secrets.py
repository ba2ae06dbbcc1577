"""Secrets: a password or key file open to other users is refused (validate, run, reload) with a
message plant IT can act on; the password never appears in the logs; client certificate expiry
is reported (warning under 30 days, error once expired)."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

from conftest import HAZGATE, ROOT
from plant import DeviceSpec, Subscriber, simple_points, write_plant
from securekit import certificate

from agent.common.secrets import check_certificates

PASSWORD = "pw-S3CRET-7f3a"


def hazgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*HAZGATE, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def with_password(plant, mode: int) -> tuple[Path, int]:  # noqa: ANN001 - plant.Plant
    secrets = plant.root / "secrets"
    secrets.mkdir(exist_ok=True)
    pw = secrets / "uplink.pass"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(mode)
    text = plant.config.read_text().replace(
        "[uplink]\n", '[uplink]\nusername = "GW-TEST-0001"\npassword_file = "secrets/uplink.pass"\n', 1)
    plant.config.write_text(text)
    line = next(n for n, x in enumerate(text.splitlines(), 1) if x.startswith("password_file"))
    return pw, line


def test_a_world_readable_password_file_is_refused(tmp_path: Path) -> None:
    plant = write_plant(tmp_path, "mqtt://127.0.0.1:1883", [DeviceSpec("plc", simple_points("A"))])
    pw, line = with_password(plant, 0o644)
    r = hazgate("validate", "-c", str(plant.config))
    assert r.returncode == 2, r
    expected = (f"{plant.config}:{line}: uplink.password_file: {pw} is readable by other users (mode 0644); "
                f"valid: readable only by the agent: chmod 600 {pw}")
    assert expected in r.stderr, r.stderr
    print(f"\n{r.stderr.splitlines()[0]}")
    r = hazgate("run", "-c", str(plant.config))  # refuses to start, at once
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    for mode, ok, why in ((0o600, True, ""), (0o640, True, ""), (0o660, False, "writable by its group"),
                          (0o604, False, "readable by other users"), (0o602, False, "writable by other users")):
        pw.chmod(mode)
        r = hazgate("validate", "-c", str(plant.config))
        assert (r.returncode == 0) == ok, (oct(mode), r.stderr)
        assert why in r.stderr
    # a private key counts as a secret too; the certificate beside it does not
    pw.chmod(0o600)
    cert, key = tmp_path / "gateway.pem", tmp_path / "gateway.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    plant.config.write_text(plant.config.read_text().replace(
        "[uplink]\n", '[uplink]\ncert_file = "gateway.pem"\nkey_file = "gateway.key"\n', 1))
    r = hazgate("validate", "-c", str(plant.config))
    assert r.returncode == 2 and "uplink.key_file:" in r.stderr and "uplink.cert_file" not in r.stderr, r.stderr


def test_password_never_logged_and_a_reload_with_an_opened_secret_is_refused(broker, procs, tmp_path: Path) -> None:
    plant = write_plant(tmp_path, broker.url, [DeviceSpec("plc", simple_points("A"))])
    pw, line = with_password(plant, 0o600)
    plant.start_simulator(procs, "plc")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs, "--log-level", "debug")
        sub.wait_until(lambda: sub.readings("A_LT"), 20, "readings (the broker took the login)")
        pw.chmod(0o644)
        mark = len(agent.output())
        agent.send(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in agent.output()[mark:] and time.monotonic() < deadline:
            time.sleep(0.05)
        log = agent.output()[mark:]
        assert "reload refused" in log and f"gateway.toml:{line}: uplink.password_file: " in log, log
        assert "is readable by other users (mode 0644)" in log
        count = len(sub.readings("A_LT"))
        time.sleep(1.5)
        assert agent.alive() and len(sub.readings("A_LT")) > count, "the running config stopped"
    assert PASSWORD not in agent.output()


def _cert(path: Path, days: float, der: bool = False) -> Path:
    certificate(path, days=days, since_days=400, der=der, key_file=False)
    return path


def test_client_certificate_expiry_is_reported(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    def cfg(uplink_cert: Path | None, device_cert: Path | None) -> list[tuple[str, Path]]:
        return [(use, path) for use, path in (("uplink", uplink_cert), ("device:sis", device_cert)) if path]

    caplog.set_level(logging.INFO, "hazgate.secrets")
    far = check_certificates(cfg(_cert(tmp_path / "far.pem", 400), _cert(tmp_path / "far.der", 200, der=True)))
    assert [round(c.days_left) for c in far] == [400, 200] and not caplog.records
    soon = check_certificates(cfg(_cert(tmp_path / "soon.pem", 12), None))
    assert round(soon[0].days_left) == 12
    rec = caplog.records[-1]
    assert rec.levelname == "WARNING" and "expires in under 30 days" in rec.getMessage()
    assert rec.fields["days_left"] < 12.1 and rec.fields["file"].endswith("soon.pem")
    check_certificates(cfg(None, _cert(tmp_path / "old.der", -3, der=True)))
    rec = caplog.records[-1]
    assert rec.levelname == "ERROR" and "has expired" in rec.getMessage() and rec.fields["use"] == "device:sis"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    bad = check_certificates(cfg(garbage, None))
    assert bad[0].not_after is None and bad[0].error and caplog.records[-1].levelname == "WARNING"
