"""The health endpoint of a running agent: /metrics scraped and parsed as Prometheus text (with the
reference parser, prometheus_client, and a strict reading of the format), /healthz as JSON, the
figures following what happens (a PLC stopped, a certificate near its end); and `[health]
listen` validation (off by default, loopback by default).
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import free_port
from plant import DeviceSpec, Subscriber, simple_points, write_plant
from securekit import certificate

from agent import __version__
from agent.common.listen import parse_listen
from agent.common.problems import ConfigError
from agent.config.loader import load_config

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})? '
                    r"(-?[0-9.e+-]+|NaN|[+-]Inf)$")


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def strict_parse(text: str) -> dict[str, dict]:
    """The text format read strictly: HELP and TYPE once per family before its samples, every line
    a comment or a valid sample, no series twice, histograms cumulative with +Inf == _count."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    current = None
    seen = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert NAME.match(name) and name not in families, line
            families[name] = {"help": line, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name == current and families[name]["type"] is None, line
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name]["type"] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name = m.group(1)
            base = re.sub(r"_(bucket|sum|count)$", "", name) if families.get(current, {}).get("type") == "histogram" else name
            assert base == current, f"{name} outside its family ({current})"
            assert line.rsplit(" ", 1)[0] not in seen, f"series twice: {line}"
            seen.add(line.rsplit(" ", 1)[0])
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            families[current]["samples"].append((name, labels, float(m.group(3).replace("Inf", "inf"))))
    for name, fam in families.items():
        if fam["type"] != "histogram":
            continue
        series: dict[tuple, list] = {}
        for sname, labels, value in fam["samples"]:
            key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            series.setdefault(key, []).append((sname, labels, value))
        for key, samples in series.items():
            buckets = [(float(lb["le"].replace("Inf", "inf")), v) for s, lb, v in samples if s.endswith("_bucket")]
            assert buckets == sorted(buckets) and [v for _, v in buckets] == sorted(v for _, v in buckets), (name, key)
            count = next(v for s, _, v in samples if s.endswith("_count"))
            assert buckets[-1] == (float("inf"), count), (name, key)
    return families


def scrape(port: int) -> tuple[dict[str, dict], dict]:
    status, headers, body = get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), (status, headers)
    text = body.decode()
    strict = strict_parse(text)
    from prometheus_client.parser import text_string_to_metric_families

    ref = {f.name: f for f in text_string_to_metric_families(text)}
    assert ref, "the reference parser found no families"
    return strict, ref


def value(ref: dict, family: str, sample: str | None = None, **labels: str) -> float:
    fam = ref[family]
    for s in fam.samples:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"{family}{labels} not in {[(s.name, s.labels) for s in fam.samples]}")


def test_metrics_scraped_and_parsed_as_prometheus_text(broker, procs, tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    a = DeviceSpec("plc-a", simple_points("A"), poll_interval="200ms", timeout="150ms")
    b = DeviceSpec("plc-b", simple_points("B"), poll_interval="200ms", timeout="150ms")
    plant = write_plant(tmp_path, broker.url, [a, b])
    certificate(tmp_path / "gateway.pem", name="GW-TEST-0001", days=10)  # a client certificate close to its end
    port = free_port()
    text = plant.config.read_text().replace(
        "[uplink]\n", '[uplink]\ncert_file = "gateway.pem"\nkey_file = "gateway.key"\n', 1)
    plant.config.write_text(text + f'\n[health]\nlisten = "127.0.0.1:{port}"\n')
    plant.start_simulator(procs, "plc-a")
    sim_b = plant.start_simulator(procs, "plc-b")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: {r["tag"] for r in sub.readings() if r["quality"] == "good"}
                       >= set(plant.tags("plc-a")) | set(plant.tags("plc-b")), 20, "good readings from both PLCs")
        assert "certificate expires in under 30 days" in agent.output()
        # the store figures are refreshed every 10 s at most, longer when a read was slow (as at
        # start-up): scrape until they include an acknowledgement, bounded
        time.sleep(11.0)
        deadline = time.monotonic() + 20
        while True:
            strict, ref = scrape(port)
            acked = "hazgate_uplink_last_ack_seq" in ref and value(ref, "hazgate_uplink_last_ack_seq") > 0
            if acked or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert value(ref, "hazgate_build_info", version=__version__, gateway=plant.gateway_id) == 1
        assert value(ref, "hazgate_ready") == 1 and value(ref, "hazgate_healthy") == 1
        for dev in ("plc-a", "plc-b"):
            assert value(ref, "hazgate_device_up", device=dev) == 1
            polls = value(ref, "hazgate_device_polls", device=dev)  # the parser drops _total
            assert polls >= 40, polls
            reads = value(ref, "hazgate_device_read_duration_seconds", "hazgate_device_read_duration_seconds_count",
                          device=dev)
            assert polls - 2 <= reads <= polls + 2, (polls, reads)
            assert value(ref, "hazgate_device_read_duration_seconds", "hazgate_device_read_duration_seconds_bucket",
                         device=dev, le="+Inf") == reads
        assert strict["hazgate_device_read_duration_seconds"]["type"] == "histogram"
        assert value(ref, "hazgate_uplink_up") == 1
        assert value(ref, "hazgate_uplink_published") >= value(ref, "hazgate_uplink_acked") > 0
        assert value(ref, "hazgate_readings_buffered") >= 0 and value(ref, "hazgate_store_writable") == 1
        assert 0 <= value(ref, "hazgate_oldest_unsent_age_seconds") < 10
        assert value(ref, "hazgate_uplink_last_ack_seq") > 0
        assert value(ref, "hazgate_active_alarms") == 0 and value(ref, "hazgate_active_bypasses") == 0
        expiry = value(ref, "hazgate_certificate_expiry_timestamp_seconds", use="uplink:mqtt")
        assert 9 * 86400 < expiry - time.time() < 11 * 86400
        assert value(ref, "process_resident_memory_bytes") > 10e6 and value(ref, "process_cpu_seconds") > 0
        assert abs(value(ref, "process_start_time_seconds") - time.time()) < 120
        for name, fam in strict.items():
            if fam["type"] == "counter":
                assert name.endswith("_total"), f"counter {name} without _total"
        status, headers, body = get(port, "/healthz")
        report = json.loads(body)
        assert status == 200 and report["status"] == "ok" and not report["problems"], report
        assert any("certificate expires in 9 days" in w or "certificate expires in 10 days" in w
                   for w in report["warnings"]), report

        # PLC B stopped: down, its read errors counted by reason; a warning, not a failure
        sim_b.stop(signal.SIGKILL)
        time.sleep(2.0)
        _, ref2 = scrape(port)
        assert value(ref2, "hazgate_device_up", device="plc-b") == 0
        assert value(ref2, "hazgate_device_up", device="plc-a") == 1
        errors = {s.labels["reason"]: s.value for s in ref2["hazgate_device_read_errors"].samples
                  if s.labels["device"] == "plc-b"}
        assert errors and sum(errors.values()) >= 2, errors
        assert value(ref2, "hazgate_device_polls", device="plc-a") > value(ref, "hazgate_device_polls", device="plc-a")
        status, _, body = get(port, "/healthz")
        report = json.loads(body)
        assert status == 200 and "device down: plc-b" in report["warnings"], report

        # the rest of HTTP: unknown paths, other methods, HEAD
        assert get(port, "/nope")[0] == 404
        assert get(port, "/metrics", "POST")[0] == 405
        status, headers, body = get(port, "/healthz", "HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        print(f"\n/metrics: {len(strict)} families, {sum(len(f['samples']) for f in strict.values())} samples; "
              f"plc-b errors {errors}")
        assert agent.alive()


def test_health_listen_is_off_by_default_and_loopback_by_default(tmp_path: Path) -> None:
    plant = write_plant(tmp_path, "mqtt://127.0.0.1:1883", [DeviceSpec("plc", simple_points("A"))])
    assert load_config(plant.config).health_listen is None
    assert parse_listen("9108") == ("127.0.0.1", 9108)
    assert parse_listen("[::1]:9108") == ("::1", 9108)
    assert parse_listen("127.0.0.1:9108") == ("127.0.0.1", 9108)
    base = plant.config.read_text()
    for bad, message in (('"0.0.0.0"', "has no valid port"), ('"plc.example:9108"', "is not an IP address"),
                         ('"127.0.0.1:70000"', "has no valid port"), ("9108", "is not a non-empty string")):
        plant.config.write_text(base + f"\n[health]\nlisten = {bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(plant.config)
        line = len(base.splitlines()) + 3
        assert any(p.line == line and p.key == "health.listen" and message in p.message
                   for p in err.value.problems.items), err.value.problems.lines()
