"""`hazgate receive --listen hj212://HOST:PORT`: a reference HJ 212-2017 platform.

Given the gateway's `hj212` uplink table, it takes connections from the data logger, checks
every frame (length, CRC, the data segment's fields, ST, PW, MN, Flag), stores each real-time
upload's values in SQLite (`hj212_uploads`, `hj212_values`; every receipt, re-sends too, in
`hj212_receipts`), de-duplicates by QN and PNO, and answers as a platform does: a
data response (CN 9014) for each upload with the A bit, a request reply (CN 9011) with QnRtn 3,
4 or 5 for a wrong PW, MN or ST. It can ask the data logger things (`request`: history 2051 /
2061 with BeginTime / EndTime, the time 1011, set time 1012 ...) and collects the answer.

Controls for tests and commissioning: withhold every data response, delay every reply, or
close each connection at its first frame without a reply (a platform that is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlparse

from agent.common.secrets import read_secret
from agent.common.timefmt import now_ms, rfc3339
from agent.north.framing import Deframer, FramingError
from agent.north.hj212.flags import LETTERS
from agent.north.hj212.frame import MAX_FRAME, TAIL, HJ212Error, pack, unpack
from agent.north.hj212.segment import (
    CN_DATA_REPLY,
    CN_EXECUTION_RESULT,
    CN_REALTIME,
    CN_REQUEST_REPLY,
    VERSION_2017,
    Cp,
    Segment,
    format_qn,
    join,
    make_flag,
    masked,
)
from agent.north.hj212.spec import Hj212Spec
from agent.receiver.platform import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    open_db,
    serve_until,
    transaction,
)

log = logging.getLogger("hazgate.receive")

ST_SYSTEM = "91"
TICK = 0.2
SCHEMA = """
CREATE TABLE IF NOT EXISTS hj212_uploads(
  qn TEXT NOT NULL, pno INTEGER NOT NULL, cn TEXT NOT NULL, data_time TEXT, received TEXT NOT NULL,
  PRIMARY KEY(qn, pno));
CREATE TABLE IF NOT EXISTS hj212_receipts(
  qn TEXT NOT NULL, pno INTEGER NOT NULL, data_time TEXT, received TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hj212_values(
  qn TEXT NOT NULL, pno INTEGER NOT NULL, data_time TEXT, code TEXT NOT NULL, rtd TEXT, flag TEXT);
CREATE TABLE IF NOT EXISTS hj212_problems(received TEXT NOT NULL, reason TEXT NOT NULL, frame BLOB);
"""


@dataclass(frozen=True)
class Hj212Controls:
    withhold: bool = False  # take uploads, send no data response
    delay: float = 0.0  # seconds before each reply
    down: bool = False  # close each connection at its first frame, without a reply


@dataclass
class Counts:
    uploads: int = 0  # real-time uploads stored (a split one counts per packet)
    values: int = 0
    duplicates: int = 0  # a QN and PNO seen already: a re-send
    acknowledged: int = 0
    undecodable: int = 0  # length, CRC or data segment wrong
    refused: int = 0  # wrong PW, MN, ST or Flag
    withheld: int = 0

    def line(self, mn: str) -> str:
        return " ".join([f"{mn}:"] + [f"{k}={v}" for k, v in vars(self).items()])


@dataclass
class _Asking:
    """A request to the data logger waiting for its answer frames."""

    qn: str
    answer: list[Segment] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Hj212Platform:
    """Checks, stores and answers one uplink's frames; asks the data logger on its connection."""

    def __init__(self, spec: Hj212Spec, db: sqlite3.Connection, controls: Hj212Controls = Hj212Controls()):
        self.spec, self.db, self.controls = spec, db, controls
        self.password = read_secret(spec.body.password_file)
        self.counts = Counts()
        self.db.executescript(SCHEMA)
        self.last_frame = time.monotonic()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task] = set()  # one per connection
        self._asking: dict[str, _Asking] = {}
        self.connected = asyncio.Event()  # a data logger has sent an upload (a probe that connects and closes has not)
        self._last_qn = 0

    def set_controls(self, controls: Hj212Controls) -> None:
        self.controls = controls

    # --- serving ----------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        log.info("listening", extra={"fields": {"listen": f"hj212://{host}:{port}", "uplink": self.spec.name}})

    async def stop(self) -> None:
        """Down: stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            if self._handlers:  # they end at the aborted connection
                await asyncio.wait(self._handlers, timeout=1.0)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deframer = Deframer(TAIL, MAX_FRAME)
        self._writers.append(writer)
        task = asyncio.current_task()
        handlers = {task} if task is not None else set()
        self._handlers |= handlers
        try:
            while data := await reader.read(65536):
                for raw in deframer.feed(data):
                    self.last_frame = time.monotonic()
                    if self.controls.down:
                        return
                    replies = self.handle(raw)
                    if replies and self.controls.delay:
                        await asyncio.sleep(self.controls.delay)
                    writer.write(b"".join(pack(s.text()) for s in replies))
                    await writer.drain()
        except (OSError, FramingError) as exc:
            log.warning("connection dropped", extra={"fields": {"error": str(exc)}})
        finally:
            self._writers.remove(writer)
            self._handlers -= handlers
            writer.close()

    # --- frames from the data logger ----------------------------------------------------------
    def handle(self, raw: bytes, received_ms: int | None = None) -> list[Segment]:
        """One frame (without its CR LF): checked, stored; the segments to answer with."""
        received = rfc3339(now_ms() if received_ms is None else received_ms)
        try:
            segment = Segment.parse(unpack(raw))
        except HJ212Error as exc:
            self.counts.undecodable += 1
            self._problem(received, str(exc), raw)
            return []
        asking = self._asking.get(segment.qn or "")
        if asking is not None and segment.cn != CN_REALTIME:
            asking.answer.append(segment)
            if segment.cn == CN_EXECUTION_RESULT or (
                    segment.cn == CN_REQUEST_REPLY and segment.cp.params.get("QnRtn") != "1"):
                asking.done.set()
            return []
        code, why = self._refusal(segment)
        if code is not None:
            self.counts.refused += 1
            self._problem(received, why, raw)
            return [self._reply(segment.qn, CN_REQUEST_REPLY, Cp({"QnRtn": str(code)}))]
        if segment.cn != CN_REALTIME:
            self._problem(received, f"CN={segment.cn} is not taken here (only 2011 uploads)", raw)
            return [self._reply(segment.qn, CN_REQUEST_REPLY, Cp({"QnRtn": "2"}))]
        if (problem := self._cp_problem(segment.cp)) is not None:
            self.counts.undecodable += 1
            self._problem(received, problem, raw)
            return []
        self._store(segment, received)
        if not segment.reply_wanted:
            return []
        if self.controls.withhold:
            self.counts.withheld += 1
            return []
        self.counts.acknowledged += 1
        return [self._reply(segment.qn, CN_DATA_REPLY, Cp())]

    def _refusal(self, s: Segment) -> tuple[int | None, str]:
        """(QnRtn, why) for a frame this platform refuses, else (None, "")."""
        if s.qn is None or len(s.qn) != 17:
            return 7, f"QN {s.qn!r} is not yyyyMMddHHmmssSSS"
        if s.pw != self.password:
            return 3, "wrong PW"
        if s.mn != self.spec.body.mn:
            return 4, f"MN {s.mn!r} is not {self.spec.body.mn!r}"
        if s.st != self.spec.body.st:
            return 5, f"ST {s.st!r} is not {self.spec.body.st!r}"
        if s.flag is None or s.version != VERSION_2017:
            return 6, f"Flag {s.flag!r} does not say HJ 212-2017 (version 1)"
        return None, ""

    @staticmethod
    def _cp_problem(cp: Cp) -> str | None:
        data_time = cp.data_time
        try:
            datetime.strptime(data_time or "", "%Y%m%d%H%M%S")
        except ValueError:
            return f"DataTime {data_time!r} is not yyyyMMddHHmmss"
        for code, fields in cp.codes.items():
            if not {"Rtd", "Flag"} & fields.keys():
                return f"code {code} has neither Rtd nor Flag"
            if "Flag" in fields and fields["Flag"] not in LETTERS:
                return f"{code}-Flag={fields['Flag']!r} is not an HJ 212 data flag"
            if "Rtd" in fields:
                try:
                    float(fields["Rtd"])
                except ValueError:
                    return f"{code}-Rtd={fields['Rtd']!r} is not a number"
        return None

    def _store(self, s: Segment, received: str) -> None:
        self.connected.set()
        pno = s.pno or 1
        qn = s.qn or ""
        self.db.execute("INSERT INTO hj212_receipts VALUES (?,?,?,?)", (qn, pno, s.cp.data_time, received))
        if self.db.execute("SELECT 1 FROM hj212_uploads WHERE qn=? AND pno=?", (qn, pno)).fetchone():
            self.counts.duplicates += 1
            return
        with transaction(self.db):  # an upload and its values together
            self.db.execute("INSERT INTO hj212_uploads VALUES (?,?,?,?,?)", (qn, pno, s.cn, s.cp.data_time, received))
            self.db.executemany("INSERT INTO hj212_values VALUES (?,?,?,?,?,?)", (
                (qn, pno, s.cp.data_time, code, f.get("Rtd"), f.get("Flag")) for code, f in s.cp.codes.items()))
        self.counts.uploads += 1
        self.counts.values += len(s.cp.codes)

    def _problem(self, received: str, reason: str, raw: bytes) -> None:
        log.warning("frame refused", extra={"fields": {"reason": reason}})
        self.db.execute("INSERT INTO hj212_problems VALUES (?,?,?)", (received, reason, raw))

    def _reply(self, qn: str | None, cn: str, cp: Cp) -> Segment:
        return Segment(qn=qn, st=ST_SYSTEM, cn=cn, pw=self.password, mn=self.spec.body.mn,
                       flag=make_flag(False), cp=cp)

    # --- asking the data logger -------------------------------------------------------------
    def _qn(self) -> str:
        ms = max(now_ms(), self._last_qn + 1)
        self._last_qn = ms
        return format_qn(datetime.fromtimestamp(ms / 1000))

    async def request(self, cn: str, params: dict[str, str] | None = None, within: float = 10.0,
                      password: str | None = None, mn: str | None = None) -> list[Segment]:
        """Send a request (Flag A) on the newest connection, with this uplink's PW and MN unless
        told others; the frames answered under its QN (9011, the data, 9012), until the
        execution result, a refusal or `within` seconds. Split data packets come joined."""
        if not self._writers:
            raise ConnectionError("no data logger is connected")
        qn = self._qn()
        asking = self._asking[qn] = _Asking(qn)
        body = self.spec.body
        segment = Segment(qn=qn, st=body.st, cn=cn, pw=self.password if password is None else password,
                          mn=body.mn if mn is None else mn, flag=make_flag(True), cp=Cp(dict(params or {})))
        writer = self._writers[-1]
        try:
            writer.write(pack(segment.text()))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await asking.done.wait()
        finally:
            del self._asking[qn]
        return _joined(asking.answer)


def _joined(frames: list[Segment]) -> list[Segment]:
    """Answer frames with the packets of each split message joined, in arrival order."""
    out: list[Segment] = []
    packets: dict[tuple, list[Segment]] = {}
    for s in frames:
        if s.pnum is None:
            out.append(s)
            continue
        key = (s.cn, s.cp.data_time)
        if key not in packets:
            packets[key] = []
            out.append(s)
        packets[key].append(s)
    return [join(packets[(s.cn, s.cp.data_time)]) if s.pnum is not None else s for s in out]


# --- the command --------------------------------------------------------------------------

def parse_hj212_listen(url: str) -> tuple[str, int]:
    """(host, port) from hj212://HOST:PORT; ValueError saying what is valid."""
    u = urlparse(url)
    try:
        port = u.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    if u.scheme != "hj212" or not u.hostname or port is None or u.path not in ("", "/"):
        raise ValueError(f"{url!r} is not a listen address; valid: hj212://127.0.0.1:PORT")
    return u.hostname, port


def hj212_spec(uplinks: list, name: str) -> Hj212Spec:
    """The named hj212 uplink of a gateway config; ValueError saying what is valid."""
    found = {u.name: u for u in uplinks if isinstance(u, Hj212Spec)}
    if name not in found:
        raise ValueError(f"--uplink {name!r}: no hj212 uplink of that name; valid: "
                         f"{', '.join(found) or 'none in this config'}")
    return found[name]


def parse_ask(text: str) -> tuple[str, dict[str, str]]:
    """`CN KEY=VALUE ...` (e.g. `2061 BeginTime=20261127000000 EndTime=20261127235959`) as a
    request's CN and CP parameters; ValueError saying what is valid."""
    parts = text.split()
    cn, items = (parts[0], parts[1:]) if parts else ("", [])
    params = dict(item.partition("=")[::2] for item in items)
    if not (len(cn) == 4 and cn.isdigit()) or any(not k or not v for k, v in params.items()) or \
            len(params) != len(items):
        raise ValueError(f"--ask {text!r} is not a request; valid: a 4-digit CN and KEY=VALUE "
                         "parameters, e.g. \"2061 BeginTime=20261127000000 EndTime=20261127235959\"")
    return cn, params


async def _ask(platform: Hj212Platform, asks: list[tuple[str, dict[str, str]]]) -> None:
    """Once a data logger has sent an upload: each request in turn, its answer printed frame by frame."""
    await platform.connected.wait()
    for cn, params in asks:
        try:
            answer = await platform.request(cn, params)
        except (ConnectionError, OSError) as exc:
            print(f"ask {cn}: {exc}", flush=True)
            continue
        for segment in answer or ():
            print(f"ask {cn}: {masked(segment.text())}", flush=True)
        if not answer:
            print(f"ask {cn}: no answer", flush=True)


def receive_hj212(listen: str, spec: Hj212Spec, db_path: str, controls: Hj212Controls,
                  duration: float | None = None, idle_exit: float | None = None,
                  asks: tuple[tuple[str, dict[str, str]], ...] = ()) -> int:
    """Serve until `duration`, `idle_exit` seconds without a frame, or SIGTERM/SIGINT; `asks`:
    requests sent to the first data logger that connects, their answers printed; print the
    counts; exit code 0, 1 (cannot listen) or 2 (bad usage)."""
    try:
        host, port = parse_hj212_listen(listen)
        db = open_db(db_path)
        platform = Hj212Platform(spec, db, controls)
    except (ValueError, sqlite3.Error, OSError) as exc:
        print(f"hazgate receive: {exc}", file=sys.stderr)
        return EXIT_USAGE
    async def start() -> None:
        await platform.start(host, port)
        if asks:
            asking.append(asyncio.ensure_future(_ask(platform, list(asks))))

    asking: list[asyncio.Future] = []  # holds the task (the loop keeps only a weak reference)
    failed = asyncio.run(serve_until(start, platform.stop, lambda: platform.last_frame, listen,
                                     duration, idle_exit))
    print(platform.counts.line(spec.body.mn))
    db.close()
    if failed:
        print(f"hazgate receive: {failed}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK
