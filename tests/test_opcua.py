"""OPC UA against a real asyncua server (`hazgate simulate` on a free loopback port).

- both modes deliver the server's values, source timestamps and status codes;
- the agent (`hazgate run`, real Mosquitto) rides out a killed and restarted server alone;
- SignAndEncrypt with generated certificates (openssl-made too) and a username login; a login over
  Sign alone or no security is refused by the config check (its password could cross unencrypted);
- a wrong application URI, an untrusted server certificate and a server that does not trust the
  gateway each fail with a message naming what to fix;
- `hazgate browse` lists the address space and writes a starter point table that validates.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import HAZGATE, ROOT, Proc
from plant import Subscriber, parse_ts
from uaplant import NS, UaPlant, UaPoint, make_cert

from drivers.opcua.driver import OpcUaDriver

STEP_AT = 5.0  # seconds after t0: STEP goes from 10 to 20


def plant_points() -> list[UaPoint]:
    n = f"nsu={NS};s=R101."
    return [
        UaPoint("F64", n + "F64", "float64", {"const": 165.125}),
        UaPoint("F32", n + "F32", "float32", {"const": 0.5}),
        UaPoint("I16", n + "I16", "int16", {"const": -123}),
        UaPoint("U16", n + "U16", "uint16", {"const": 65535}),
        UaPoint("I32", n + "I32", "int32", {"const": -100000}),
        UaPoint("U32", n + "U32", "uint32", {"const": 4000000000}),
        UaPoint("ON", n + "ON", "bool", {"const": True}),
        UaPoint("NUM", "ns=2;i=5001", "float32", {"const": 2.5}),  # numeric NodeId, namespace by index
        UaPoint("STEP", n + "STEP", "float64", {"steps": [["0s", 10.0], [f"{STEP_AT}s", 20.0]]}),
        UaPoint("UNC", n + "UNC", "float32", {"const": 1.0}, status="UncertainLastUsableValue"),
        UaPoint("BADS", n + "BADS", "float32", {"const": 1.0}, status="BadSensorFailure"),
        UaPoint("NOPE", n + "NOPE", "float32", served=False),
        UaPoint("NONS", "nsu=urn:not-on-this-server;s=X", "float32", served=False),
    ]


EXPECT = {"F64": 165.125, "F32": 0.5, "I16": -123, "U16": 65535, "I32": -100000, "U32": 4000000000,
          "ON": True, "NUM": 2.5}


async def _watch(driver: OpcUaDriver, until: float, log: list) -> None:
    while time.time() < until:
        at = time.time()
        log.append((at, await driver.read()))
        await asyncio.sleep(0.25)


async def test_poll_and_subscribe_values_timestamps_and_qualities(procs, tmp_path: Path) -> None:
    t0 = time.time()
    plant = UaPlant(tmp_path, plant_points(), t0=t0).write()
    plant.start_simulator(procs)
    drivers = {mode: OpcUaDriver(plant.device_config(mode=mode)) for mode in ("poll", "subscribe")}
    logs: dict[str, list] = {mode: [] for mode in drivers}
    try:
        for d in drivers.values():
            await d.connect()
        await asyncio.gather(*(_watch(d, t0 + STEP_AT + 2.5, logs[m]) for m, d in drivers.items()))
    finally:
        for d in drivers.values():
            await d.close()
    step_ts = {}
    for mode, log in logs.items():
        assert len(log) >= 8, (mode, len(log))
        last_ts: dict[str, float] = {}
        for at, samples in log:
            by_tag = {}
            for s in samples:
                by_tag.setdefault(s.point.tag, []).append(s)
                # each tag's timestamps only go forward; a value without a source time is collection time
                eff = s.ts if s.ts is not None else at
                assert eff >= last_ts.get(s.point.tag, 0.0) - 1e-3, (mode, s)
                last_ts[s.point.tag] = eff
            for tag, want in EXPECT.items():
                s = by_tag[tag][-1]
                assert (s.quality, s.reason) == ("good", None), (mode, s)
                assert s.raw == want and type(s.raw) is type(want), (mode, tag, s.raw)
            unc, bads = by_tag["UNC"][-1], by_tag["BADS"][-1]
            assert (unc.quality, unc.reason, unc.raw) == ("uncertain", "opc ua UncertainLastUsableValue", 1.0), unc
            assert (bads.quality, bads.reason, bads.raw) == ("bad", "opc ua BadSensorFailure", None), bads
            nope, nons = by_tag["NOPE"][-1], by_tag["NONS"][-1]
            assert nope.quality == "bad" and "BadNodeIdUnknown" in nope.reason, nope
            assert nons.quality == "bad" and "urn:not-on-this-server" in nons.reason and NS in nons.reason, nons
        # unchanged values never repeat a timestamp: poll stamps them with the collection time (None),
        # subscribe with the server's latest confirmation (a publish response every half poll; 1 s
        # of slack for a loaded test machine), or the collection time when no new publish came
        # since the last poll (a loaded machine delays one now and then), but mostly the former
        confirmed = 0
        for at, samples in log[2:]:
            for s in samples:
                if s.point.tag in EXPECT:
                    assert (s.ts is None) if mode == "poll" else (s.ts is None or at - 1.0 <= s.ts <= at), \
                        (mode, at, s)
                    confirmed += s.ts is not None
        if mode == "subscribe":
            unchanged = sum(s.point.tag in EXPECT for _at, samples in log[2:] for s in samples)
            assert confirmed >= 0.75 * unchanged, (confirmed, unchanged)
        for tag in EXPECT:
            stamps = [s.ts if s.ts is not None else at for at, samples in log for s in samples if s.point.tag == tag]
            assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), (mode, tag, stamps)
        # the step: 10 before, 20 after, stamped once with the server's source time of the change
        steps = [(at, s) for at, samples in log for s in samples if s.point.tag == "STEP"]
        assert steps[0][1].raw == 10.0 and steps[-1][1].raw == 20.0, (mode, steps[0], steps[-1])
        changed = [(at, s) for at, s in steps if s.raw == 20.0]
        first_at, first = changed[0]
        assert first.ts is not None, (mode, first)
        assert t0 + STEP_AT - 0.01 <= first.ts <= t0 + STEP_AT + 1.0, (mode, first.ts - t0)
        assert first.ts <= first_at
        assert all(s.ts is None or s.ts > first.ts for _, s in changed[1:]), (mode, changed)
        step_ts[mode] = first.ts
    print(f"\nsource time of the step, from t0: poll {step_ts['poll'] - t0:.3f} s, "
          f"subscribe {step_ts['subscribe'] - t0:.3f} s (the server wrote it at {STEP_AT:.1f} s + its update tick); "
          f"subscribe: {drivers['subscribe'].notifications} notifications, poll: {drivers['poll'].reader.requests} reads")
    assert step_ts["poll"] == step_ts["subscribe"]


def test_agent_recovers_alone_when_the_server_restarts(broker, procs, tmp_path: Path) -> None:
    points = [UaPoint("R_TT", f"nsu={NS};s=R.TT", "float64", {"const": 150.5}),
              UaPoint("R_ON", f"nsu={NS};s=R.ON", "bool", {"const": True})]
    plant = UaPlant(tmp_path, points, mode="subscribe").write(broker.url)
    tags = {p.tag for p in points}
    sim = plant.start_simulator(procs)
    with Subscriber(broker.port, "hazchem/120116999999/GW-TEST-0006/#") as sub:
        agent = Proc([*HAZGATE, "run", "-c", str(plant.config)], tmp_path / "agent.log")
        procs.append(agent)
        sub.wait_until(lambda: {r["tag"] for r in sub.readings() if r["quality"] == "good"} >= tags, 20,
                       f"good readings ({agent.log_path})")
        time.sleep(1.0)
        killed_at = time.time()
        sim.stop(signal.SIGKILL)
        bad = sub.wait_until(lambda: [r for r in sub.readings(tags) if r["quality"] == "bad"
                                      and parse_ts(r["ts"]) >= killed_at - 0.01], 5, "bad readings after the kill")
        went_bad = min(parse_ts(r["ts"]) for r in bad) - killed_at
        assert all(r["value"] is None and r.get("reason") for r in bad), bad
        time.sleep(3.0)  # down for a while: reconnect attempts back off, readings stay bad with a reason
        down = [r for r in sub.readings(tags) if parse_ts(r["ts"]) > killed_at + went_bad + 0.1]
        assert down and all(r["quality"] == "bad" and r["reason"] for r in down), down[-4:]
        restarted_at = time.time()
        plant.start_simulator(procs)
        good = sub.wait_until(lambda: [r for r in sub.readings(tags) if r["quality"] == "good"
                                       and parse_ts(r["ts"]) >= restarted_at], 20, "good readings after the restart")
        recovered = min(parse_ts(r["ts"]) for r in good) - restarted_at
        sub.wait_until(lambda: {r["tag"] for r in sub.readings(tags) if r["quality"] == "good"
                                and parse_ts(r["ts"]) >= restarted_at} >= tags, 10, "every tag good again")
        assert agent.alive(), agent.output()[-3000:]
        assert all(r["value"] == (150.5 if r["tag"] == "R_TT" else True) for r in good), good
    log = agent.output()
    assert "Traceback" not in log and "level=error" not in log, log[-3000:]
    reasons = sorted({r["reason"] for r in down})
    print(f"\nbad {1000 * went_bad:.0f} ms after SIGKILL; reasons while down: {reasons}; "
          f"good again {recovered:.2f} s after the restart began (simulator start-up included)")
    assert went_bad <= 2.0


def _read(config: Path, device: str = "ua") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HAZGATE, "read", "-c", str(config), device], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _openssl_cert(folder: Path, uri: str) -> tuple[Path, Path]:
    """The gateway certificate exactly as docs/device-maps.md tells a technician to make it."""
    folder.mkdir(parents=True, exist_ok=True)
    key, pem, der = folder / "gateway-key.pem", folder / "gateway-cert.pem", folder / "gateway-cert.der"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-days", "1825", "-nodes",
                    "-keyout", str(key), "-out", str(pem), "-subj", "/CN=hazgate GW-TEST-0006/O=Test plant",
                    "-addext", f"subjectAltName=URI:{uri},DNS:localhost",
                    "-addext", "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,dataEncipherment",
                    "-addext", "extendedKeyUsage=clientAuth", "-addext", "basicConstraints=critical,CA:FALSE"],
                   check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "x509", "-in", str(pem), "-outform", "der", "-out", str(der)],
                   check=True, capture_output=True, timeout=30)
    return der, key


def test_sign_and_encrypt_with_generated_certificates_and_a_login(procs, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    server_cert, server_key = make_cert(pki / "server", "sim-server", "urn:hazgate:test:server", server=True)
    gw_cert, gw_key = make_cert(pki / "gw", "gateway", "urn:hazgate:GW-TEST-0006")
    trusted = pki / "trusted-clients"
    trusted.mkdir()
    shutil.copy(gw_cert, trusted)
    points = [UaPoint("TT", f"nsu={NS};s=TT", "float64", {"const": 42.5}),
              UaPoint("ON", f"nsu={NS};s=ON", "bool", {"const": True})]
    (tmp_path / "pass").write_text("s3cret\n")
    (tmp_path / "pass").chmod(0o600)
    plant = UaPlant(tmp_path, points, server={
        "security": ["Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign"], "certificate": server_cert,
        "private_key": server_key, "trusted_clients": trusted, "users": {"operator": "s3cret"},
    }, device={
        "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt", "certificate": gw_cert,
        "private_key": gw_key, "server_certificate": server_cert, "application_uri": "urn:hazgate:GW-TEST-0006",
        "username": "operator", "password_file": "pass",
    }).write()
    plant.start_simulator(procs)
    r = _read(plant.config)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^TT\s.*\s42\.5\s.*good$", r.stdout, re.M) and re.search(r"^ON\s.*True\s.*good$", r.stdout, re.M), r.stdout
    # no security at all is refused: the server offers only signed endpoints
    none = tmp_path / "none.toml"
    none.write_text(re.sub(r"(?m)^(security_|certificate|private_key|server_certificate|username|password_file).*\n",
                           "", plant.config.read_text()))
    r = _read(none)
    assert r.returncode == 1 and "offers no" not in r.stderr, r.stderr
    # a login over Sign only is refused before connecting: its password could cross unencrypted
    sign = tmp_path / "sign.toml"
    sign.write_text(plant.config.read_text().replace('"SignAndEncrypt"', '"Sign"'))
    r = _read(sign)
    assert r.returncode == 2 and "devices.username: the password of 'operator' could cross the network " \
        "unencrypted with security_mode 'Sign'" in r.stderr, r.stderr
    # a certificate made by the documented openssl command (trusted by folder)
    if shutil.which("openssl"):
        der, key = _openssl_cert(pki / "openssl", "urn:hazgate:GW-TEST-0006")
        shutil.copy(der, trusted / "openssl-gateway.der")
        trust_dir = pki / "trusted-servers"
        trust_dir.mkdir()
        shutil.copy(server_cert, trust_dir)
        made = tmp_path / "openssl.toml"
        text = plant.config.read_text()
        text = text.replace(str(gw_cert), str(der)).replace(str(gw_key), str(key)).replace(str(server_cert), str(trust_dir))
        made.write_text(text)
        r = _read(made)
        assert r.returncode == 0, r.stderr
        assert re.search(r"^TT\s.*\s42\.5\s.*good$", r.stdout, re.M), r.stdout
    # a wrong password is named as such
    (tmp_path / "pass").write_text("wrong\n")
    r = _read(plant.config)
    assert r.returncode == 1 and "refused the login of user 'operator'" in r.stderr, r.stderr


def test_wrong_application_uri_and_bad_files_fail_at_start(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    gw_cert, gw_key = make_cert(pki, "gateway", "urn:hazgate:GW-TEST-0006")
    other_cert, other_key = make_cert(pki, "other", "urn:other")
    old_cert, _ = make_cert(pki / "old", "gateway", "urn:hazgate:GW-TEST-0006", days=-2)
    plant = UaPlant(tmp_path, [UaPoint("TT", f"nsu={NS};s=TT", "float64")], device={
        "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt", "certificate": gw_cert,
        "private_key": gw_key, "server_certificate": other_cert, "application_uri": "urn:hazgate:GW-WRONG",
    }).write()
    r = subprocess.run([*HAZGATE, "validate", "-c", str(plant.config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    line = next(n for n, text in enumerate(plant.config.read_text().splitlines(), 1) if text.startswith("application_uri"))
    assert r.stderr.splitlines() == [
        f"{plant.config}:{line}: devices.application_uri: 'urn:hazgate:GW-WRONG' is not the application URI in "
        f"certificate {gw_cert} (urn:hazgate:GW-TEST-0006); valid: 'urn:hazgate:GW-TEST-0006', or a new "
        "certificate made for 'urn:hazgate:GW-WRONG'",
        "1 problem(s) found",
    ]
    # `hazgate run` refuses to start with the same line (not a handshake failure later)
    r = subprocess.run([*HAZGATE, "run", "-c", str(plant.config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "devices.application_uri: 'urn:hazgate:GW-WRONG' is not" in r.stderr, r.stderr
    # an expired certificate, a key of another certificate, a missing server certificate, policy without mode
    text = plant.config.read_text().replace('application_uri = "urn:hazgate:GW-WRONG"\n', "")
    text = text.replace(str(gw_cert), str(old_cert)).replace(str(gw_key), str(other_key))
    text = text.replace(str(other_cert), str(tmp_path / "nowhere.der")).replace('"SignAndEncrypt"', '"None"')
    plant.config.write_text(text)
    r = subprocess.run([*HAZGATE, "validate", "-c", str(plant.config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    problems = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr
    assert any("devices.security_mode: 'None' does not go with security_policy 'Basic256Sha256'" in p for p in problems), problems
    assert any(f"devices.server_certificate: folder or file {tmp_path / 'nowhere.der'} does not exist" in p for p in problems), problems
    assert any(f"devices.certificate: {old_cert} expired on" in p for p in problems), problems
    assert any(f"devices.private_key: {other_key} does not belong to certificate {old_cert}" in p for p in problems), problems


def test_untrusted_server_and_a_server_that_refuses_the_gateway(procs, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    server_cert, server_key = make_cert(pki, "sim-server", "urn:hazgate:test:server", server=True)
    stranger, _ = make_cert(pki, "stranger", "urn:stranger", server=True)
    gw_cert, gw_key = make_cert(pki, "gateway", "urn:hazgate:GW-TEST-0006")
    other_gw, other_gw_key = make_cert(pki, "other-gateway", "urn:hazgate:GW-OTHER")
    trusted, wrong_trust = pki / "trusted-clients", pki / "trust-stranger"
    trusted.mkdir()
    wrong_trust.mkdir()
    shutil.copy(gw_cert, trusted)
    shutil.copy(stranger, wrong_trust)
    plant = UaPlant(tmp_path, [UaPoint("TT", f"nsu={NS};s=TT", "float64", {"const": 1.0})], server={
        "security": ["Basic256Sha256_SignAndEncrypt"], "certificate": server_cert, "private_key": server_key,
        "trusted_clients": trusted,
    }, device={
        "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt", "certificate": gw_cert,
        "private_key": gw_key, "server_certificate": wrong_trust,
    }).write()
    plant.start_simulator(procs)
    started = time.monotonic()
    r = _read(plant.config)
    took = time.monotonic() - started
    assert r.returncode == 1, r.stdout
    assert "server certificate not trusted: CN=sim-server, URI urn:hazgate:test:server, SHA-256 " in r.stderr, r.stderr
    assert f"is not in folder {wrong_trust}" in r.stderr and "valid: put the server's certificate there" in r.stderr
    assert took < 15, f"an untrusted certificate is final: no retries ({took:.1f}s)"
    # the gateway trusts the server, the server does not know this gateway's certificate
    text = plant.config.read_text().replace(str(wrong_trust), str(server_cert))
    plant.config.write_text(text.replace(str(gw_cert), str(other_gw)).replace(str(gw_key), str(other_gw_key)))
    r = _read(plant.config)
    assert r.returncode == 1, r.stdout
    assert (f"the server refused the gateway certificate {other_gw} (BadCertificateUntrusted); "
            "valid: add that certificate to the server's trusted clients") in r.stderr, r.stderr


@pytest.mark.parametrize("depth", [4])
def test_browse_lists_the_address_space_and_writes_a_starter_table(procs, tmp_path: Path, depth: int) -> None:
    plant = UaPlant(tmp_path, [p for p in plant_points() if p.served]).write()
    plant.start_simulator(procs)
    out = tmp_path / "starter.csv"
    r = subprocess.run([*HAZGATE, "browse", "-c", str(plant.config), "ua", "--depth", str(depth), "--csv", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "CLASS"]
    assert any(re.fullmatch(rf"\s+F64\s+Variable\s+Double\s+nsu={re.escape(NS)};s=R101\.F64", ln) for ln in lines), r.stdout
    assert any(re.fullmatch(r"\s+NUM\s+Variable\s+Float\s+nsu=urn:hazgate:test:plant;i=5001", ln) for ln in lines), r.stdout
    assert any(ln.startswith("note: Server (i=2253)") for ln in lines), r.stdout
    assert f"wrote {out}: 11 points" in r.stdout
    # the starter table is a valid point table as written
    gw = tmp_path / "starter.toml"
    gw.write_text(plant.config.read_text().replace('points = "points.csv"', f'points = "{out.name}"'))
    v = subprocess.run([*HAZGATE, "validate", "-c", str(gw)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    assert "valid: 1 devices, 11 points" in v.stdout
    r2 = subprocess.run([*HAZGATE, "read", "-c", str(gw), "ua"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r2.returncode == 0 and "11 points, 2 not good" in r2.stdout, r2.stdout  # UNC and BADS
    # never overwrites; a bad NODE and a Modbus device are usage errors
    again = subprocess.run([*HAZGATE, "browse", "-c", str(plant.config), "ua", "--csv", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "the file exists" in again.stderr
    bad = subprocess.run([*HAZGATE, "browse", "-c", str(plant.config), "ua", "nsu=urn:nope;s=X"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "namespace 'urn:nope' is not on the server" in bad.stderr, bad.stderr


def test_browse_writes_the_starter_table_of_a_device_that_has_none_yet(procs, tmp_path: Path) -> None:
    """Issue 17: a new device's config names a point table that does not exist yet. `validate`
    says so; `browse --csv` writes it, with the columns the platform needs filled in
    (hazard_source, equipment, target_code, ll, l, h, hh); filled in, it validates."""
    plant = UaPlant(tmp_path, [p for p in plant_points() if p.served]).write()
    plant.start_simulator(procs)
    table = tmp_path / "new-device.csv"
    plant.config.write_text(plant.config.read_text().replace('points = "points.csv"', f'points = "{table.name}"'))
    v = subprocess.run([*HAZGATE, "validate", "-c", str(plant.config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert v.returncode == 2 and f"point table {table} not found" in v.stderr, v.stderr
    r = subprocess.run([*HAZGATE, "browse", "-c", str(plant.config), "ua", "--csv", str(table)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"wrote {table}: 11 points" in r.stdout
    rows = table.read_text(encoding="utf-8").splitlines()
    assert rows[0] == ("tag,name,address,type,unit,kind,eng_min,eng_max,deadband,"
                       "hazard_source,equipment,target_code,ll,l,h,hh")
    first = next(i for i, row in enumerate(rows) if row.startswith("ua.F64,"))
    cells = rows[first].split(",")
    assert cells[9:] == [""] * 7, cells
    cells[4:] = ["m", "level", "0", "10", "", "320200001001", "TK-101", "LT0001", "0.5", "1", "9", "9.5"]
    rows[first] = ",".join(cells)
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    v = subprocess.run([*HAZGATE, "validate", "-c", str(plant.config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    assert "valid: 1 devices, 11 points" in v.stdout
    listed = subprocess.run([*HAZGATE, "browse", "-c", str(plant.config), "ua"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and "R101" in listed.stdout  # and with a table, browse as before


def test_drivers_never_write() -> None:
    """Read-only by construction: no driver calls a service or function that writes to a device."""
    import ast

    writes = re.compile(r"write|set_value|set_attribute|call_method|add_node|delete_node|add_reference|mask_write",
                        re.IGNORECASE)
    found = []
    for path in sorted((ROOT / "drivers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if writes.search(name):
                    found.append(f"{path.name}:{node.lineno}: {name}")
    assert found == [], found
