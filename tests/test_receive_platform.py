"""`receive_platform` as its own process (the core of `hazgate receive --listen`): it serves,
takes a message and its re-send, stops on SIGTERM and prints the per-gateway summary line."""

from __future__ import annotations

import signal
import sys
import urllib.request
from pathlib import Path

from agent.north.templated import TemplatedBody
from tests.conftest import Proc, free_port, wait_port
from tests.platformkit import MEM_HTTP, context, load, write_secrets

SERVE = """
import sys, tomllib
from pathlib import Path
from agent.common.problems import Problems
from agent.config.toml import TomlReader
from agent.config.uplinks import load_uplinks
from agent.receiver.platform import receive_platform
path = Path(sys.argv[1]); text = path.read_text()
[spec] = load_uplinks(TomlReader(path, text, Problems()), tomllib.loads(text)["uplinks"], path.parent)
sys.exit(receive_platform(sys.argv[2], spec, sys.argv[3], report=sys.argv[4]))
"""


def test_receive_platform_process(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/realtime"
    write_secrets(tmp_path)
    (tmp_path / "uplink.toml").write_text(MEM_HTTP.format(url=url, batch=10, timeout="2s"))
    proc = Proc([sys.executable, "-c", SERVE, str(tmp_path / "uplink.toml"), url,
                 str(tmp_path / "platform.db"), str(tmp_path / "report.json")], tmp_path / "recv.log")
    procs.append(proc)
    wait_port(port)
    [spec], _ = load(tmp_path, (tmp_path / "uplink.toml").read_text())  # the gateway's side
    body = TemplatedBody(context(None), spec.body).readings(False)(5, [
        (1_795_777_200_000, "TK101_LT", "m", "float32", 7.25, "good", None)])
    for _ in range(2):  # a re-send: the same bytes, so the same data_id
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "appsecret": "example-appsecret-0001", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert reply.status == 200 and b'"code":0' in reply.read()
    assert proc.stop(signal.SIGTERM) == 0
    assert proc.log_path.read_text().splitlines()[-1] == (
        "GW-320200-0001: messages=1 records=1 duplicates=1 gaps=0 undecodable=0 violations=0 "
        "rejected=0 missing=[]")
    assert '"duplicates": 1' in (tmp_path / "report.json").read_text()
