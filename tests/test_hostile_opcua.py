"""The OPC UA driver against a hostile server (tests/hostile/opcua_server.py) on loopback.

Each test builds the device as `hazgate run` does (a gateway config in tmp_path, load_config,
make_driver) and reads it through the real driver:

- a source timestamp at year 9999 or 1601 is refused with a reason; the reading keeps the
  collection time, and the point's later honest timestamps are not poisoned (issue 19, item 2);
- a subscription that stops publishing while Read still works turns the points uncertain/bad
  with a reason and the session is renewed; back to good once the server publishes (item 4);
- UInt64 2**64-1 on a uint32 point (and Int32 40000 on an int16 point) is bad, never good (item 6);
- a login without SignAndEncrypt is refused before any connection (item 9; the case folder
  tests/cases/opcua_login_in_clear covers `hazgate validate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import ua
from hostile.opcua_server import DECLARED, FAR_FUTURE, FAR_PAST, INITIAL, HostileUaServer
from uaplant import gateway_head, read_until, toml, write_table

from agent.common import timefmt
from agent.common.problems import ConfigError
from agent.config.loader import load_config
from agent.model import Sample
from agent.pipeline.normalize import Normalizer
from drivers.base import DeviceSpec, Driver
from drivers.registry import make_driver

TYPES = {"F64": "float64", "U32": "uint32", "I16": "int16"}
assert set(TYPES) == set(DECLARED)
POLL = "400ms"  # subscribe mode: a publish response (data or keep-alive) every 200 ms
EAST = dt.timezone(dt.timedelta(hours=8))  # where datetime.fromtimestamp overflowed at year 9999


def write_gateway(root: Path, endpoint: str, addresses: dict[str, str], mode: str, **keys: object) -> Path:
    """gateway.toml with one OPC UA device and its points.csv (the hostile server's variables)."""
    write_table(root / "points.csv", [{"tag": name, "name": name, "address": addresses[name], "type": ptype}
                                      for name, ptype in TYPES.items()])
    dev = ["[[devices]]", 'name = "hostile"', 'protocol = "opcua"', f"endpoint = {toml(endpoint)}",
           f"mode = {toml(mode)}", f"poll_interval = {toml(POLL)}", 'timeout = "1s"', 'points = "points.csv"']
    dev += [f"{k} = {toml(v)}" for k, v in keys.items()]
    config = root / "gateway.toml"
    config.write_text("\n".join(gateway_head(root) + dev) + "\n", encoding="utf-8")
    return config


def device(root: Path, plc: HostileUaServer, mode: str) -> DeviceSpec:
    """The hostile server as a gateway device, as `hazgate run` builds it."""
    return load_config(write_gateway(root, plc.endpoint, plc.addresses, mode)).devices[0]


@pytest.fixture
async def plc() -> AsyncIterator[HostileUaServer]:
    server = await HostileUaServer().start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def connected(spec: DeviceSpec) -> AsyncIterator[Driver]:
    driver = make_driver(spec)
    await asyncio.wait_for(driver.connect(), 15)
    try:
        yield driver
    finally:
        await asyncio.wait_for(driver.close(), 10)


def tag(samples: list[Sample], name: str) -> Sample:
    return next(s for s in samples if s.point.tag == name)


def all_good(samples: list[Sample]) -> bool:
    return bool(samples) and all(s.quality == "good" for s in samples)


# --- item 2: implausible source times -----------------------------------------------------

@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_implausible_source_times_keep_the_collection_time(plc, tmp_path: Path, mode: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timefmt, "_LOCAL_TZ", EAST)
    async with connected(device(tmp_path, plc, mode)) as driver:
        await read_until(driver, all_good, 10, every=0.1)
        for value, when in ((4.5, FAR_FUTURE), (5.5, FAR_PAST)):
            # a new value (subscriptions report changes of value, not of time alone) stamped `when`
            await plc.write_raw("F64", ua.Variant(value, ua.VariantType.Double), source_timestamp=when)
            for _ in range(2):  # as it arrives, and again while the server keeps that value and time
                collected = time.time()
                samples = await read_until(driver, lambda ss, v=value: tag(ss, "F64").raw == v, 5, every=0.1)
                s = tag(samples, "F64")
                assert (s.quality, s.ts) == ("uncertain", None), (when, s)
                assert s.reason is not None and s.reason.startswith("source_time_implausible: "), s
                assert all_good([tag(samples, "U32"), tag(samples, "I16")]), samples
                reading = next(r for r in Normalizer(60).process(samples, int(collected * 1000))[0]
                               if r.point.tag == "F64")
                assert reading.ts_ms == int(collected * 1000)
                shown = dt.datetime.fromisoformat(timefmt.rfc3339(reading.ts_ms))  # +08:00, no overflow
                assert abs(shown.timestamp() - collected) < 0.01, shown
                await asyncio.sleep(0.4)
        # an honest change afterwards carries its own source time again (nothing stuck at 9999)
        before = time.time()
        await plc.set_value("F64", 6.5)
        await asyncio.sleep(0.6)  # published before the next read, so no poll has stamped F64 later
        s = tag(await read_until(driver, lambda ss: tag(ss, "F64").raw == 6.5, 5, every=0.1), "F64")
        assert s.quality == "good" and s.ts is not None and before - 0.01 <= s.ts <= time.time(), s


# --- item 4: a subscription that stops publishing -----------------------------------------

async def test_stalled_subscription_is_not_good_and_is_renewed(plc, tmp_path: Path) -> None:
    async with connected(device(tmp_path, plc, "subscribe")) as driver:
        await read_until(driver, all_good, 10, every=0.1)
        sessions = driver.connects  # type: ignore[attr-defined]
        plc.stop_publishing()
        stopped = time.monotonic()
        await plc.set_value("F64", 3.5)  # the true value moves on; no publish tells the gateway
        log: list[tuple[float, Sample]] = []
        while time.monotonic() - stopped < 5.0:
            log += [(time.monotonic() - stopped, s) for s in await driver.read()]
            await asyncio.sleep(0.2)
        renewed = driver.connects - sessions  # type: ignore[attr-defined]
        # 3 keep-alive periods of 200 ms, at least 1 s (drivers/opcua/driver.py STALL_*), plus a
        # poll and slack for a loaded box: after that the frozen 1.5 is never good again
        frozen = [(round(t, 2), s) for t, s in log if s.point.tag == "F64" and s.quality == "good" and s.raw == 1.5]
        assert all(t < 2.0 for t, _ in frozen), frozen
        flagged = [s for _, s in log if s.quality != "good"]
        assert flagged, log[-3:]
        assert all(s.reason and s.reason.startswith("subscription_stalled: ") for s in flagged), flagged[:3]
        assert any(s.quality == "uncertain" and s.raw == 1.5 for s in flagged if s.point.tag == "F64"), flagged
        assert renewed >= 1, "the session was not renewed"
        # what a renewed session reads is the server's true value
        assert all(s.raw == 3.5 for t, s in log if s.point.tag == "F64" and s.quality == "good" and t >= 2.0)
        plc.resume_publishing()
        await read_until(driver, lambda ss: all_good(ss) and tag(ss, "F64").raw == 3.5, 40, every=0.2)
        await plc.set_value("F64", 4.5)  # and changes arrive by subscription again
        await read_until(driver, lambda ss: all_good(ss) and tag(ss, "F64").raw == 4.5, 5, every=0.1)


# --- item 6: values outside the declared type -----------------------------------------------

@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_integers_outside_their_declared_type_are_bad(plc, tmp_path: Path, mode: str) -> None:
    async with connected(device(tmp_path, plc, mode)) as driver:
        await read_until(driver, all_good, 10, every=0.1)
        await plc.write_raw("U32", ua.Variant(2**64 - 1, ua.VariantType.UInt64))
        await plc.write_raw("I16", ua.Variant(40000, ua.VariantType.Int32))

        def changed(ss: list[Sample]) -> bool:
            return all(tag(ss, n).raw != INITIAL[n] for n in ("U32", "I16"))

        samples = await read_until(driver, changed, 5, every=0.1)
        u32, i16 = tag(samples, "U32"), tag(samples, "I16")
        assert (u32.quality, u32.raw) == ("bad", None), u32
        assert u32.reason == "out_of_type_range: 18446744073709551615 is outside uint32 (0 to 4294967295)"
        assert (i16.quality, i16.raw) == ("bad", None), i16
        assert i16.reason == "out_of_type_range: 40000 is outside int16 (-32768 to 32767)"
        assert tag(samples, "F64").quality == "good"
        readings = {r.point.tag: r for r in Normalizer(60).process(samples, int(time.time() * 1000))[0]}
        assert (readings["U32"].quality, readings["U32"].value) == ("bad", None)
        await plc.set_value("U32", 9)
        s = tag(await read_until(driver, lambda ss: tag(ss, "U32").raw == 9, 5, every=0.1), "U32")
        assert (s.quality, s.reason) == ("good", None)


# --- item 9: no password in clear text ------------------------------------------------------

@pytest.mark.parametrize("mode", ["None", "Sign"])
def test_login_without_sign_and_encrypt_is_refused(tmp_path: Path, mode: str) -> None:
    (tmp_path / "ua.pass").write_text("s3cret\n")
    (tmp_path / "ua.pass").chmod(0o600)
    keys = {"username": "operator", "password_file": "ua.pass", "security_mode": mode}
    if mode != "None":
        keys["security_policy"] = "Basic256Sha256"
    addresses = {name: f"nsu=urn:hazgate:test:hostile;s={name}" for name in TYPES}
    config = write_gateway(tmp_path, "opc.tcp://127.0.0.1:4840", addresses, "poll", **keys)
    with pytest.raises(ConfigError) as err:
        load_config(config)
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if text.startswith("username"))
    problem = next(p for p in err.value.problems.lines() if ": devices.username: " in p)
    assert problem.startswith(f"{config}:{line}: devices.username: the password of 'operator' could cross "
                              f"the network unencrypted with security_mode {mode!r}"), problem
    assert problem.endswith('valid: security_policy = "Basic256Sha256" with security_mode = "SignAndEncrypt", '
                            "or no username and password_file (anonymous)"), problem
