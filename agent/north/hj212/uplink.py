"""The HJ 212 uplink: one persistent TCP connection, the data logger as client.

Each message is one real-time data upload (CN 2011, Flag A set), one frame or its PNUM/PNO
packets. It counts as delivered when a data response (CN 9014) with its QN has come for each
packet. Without them within `overtime` the message is written again, up to `recount` times;
after that the connection is given up and the message waits in the store: the drain connects
again (with back-off) and sends it first, unchanged (same QN, same DataTime). A request reply
(9011) naming the message's QN with QnRtn other than 1 refuses it (counted towards
`max_rejects`), except a wrong PW, MN or ST, which is the configuration's fault, not the
message's: the link counts as lost. Requests from the platform on the same connection are
answered in between (agent/north/hj212/requests.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import tzinfo

from agent.common.secrets import read_secret
from agent.north.ack import ACCEPT, NO_ANSWER, REFUSE, Verdict
from agent.north.backoff import CAP
from agent.north.base import ConnectFailed, UplinkContext, why
from agent.north.drain import DrainSettings
from agent.north.framing import Deframer, FrameTooLarge
from agent.north.hj212.body import RealtimeBody
from agent.north.hj212.frame import MAX_FRAME, TAIL, HJ212Error, pack, unpack
from agent.north.hj212.requests import Answers, History
from agent.north.hj212.segment import (
    CN_DATA_REPLY,
    CN_EXECUTION_RESULT,
    CN_NOTICE_REPLY,
    CN_REQUEST_REPLY,
    Segment,
    masked,
    parse_reply,
)
from agent.north.hj212.spec import Hj212Spec
from agent.north.platform import (
    Delivery,
    PlatformUplink,
    SerialLink,
    Unanswered,
    guarded,
    open_stream,
)

log = logging.getLogger("hazgate.uplink")

READ_SIZE = 65536
REPLIES = (CN_DATA_REPLY, CN_REQUEST_REPLY, CN_EXECUTION_RESULT, CN_NOTICE_REPLY)
CONFIG_FAULTS = (3, 4, 5)  # QnRtn: wrong PW, MN, ST
CONNECTION_KEYS = ("host", "port", "delivery", "recount", "body", "minute_interval")


def frames_of(payload: bytes) -> list[bytes]:
    """The frames (with their CR LF) of a stored message."""
    return [part + TAIL for part in payload.split(TAIL) if part]


class Hj212Link(SerialLink):
    """Messages written one after the other, each awaiting its data responses; a reader task
    takes every frame the platform sends: replies for the message on the wire, requests to
    answer."""

    def __init__(self, spec: Hj212Spec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 unanswered: Unanswered, answers: Answers, on_ack: Callable[[int], None],
                 on_reject: Callable[[int, str], None]):
        super().__init__(spec.name, unanswered, on_ack, on_reject)
        self.spec, self.reader, self.writer, self.answers = spec, reader, writer, answers
        self.where = f"{spec.host}:{spec.port}"
        self._qn: str | None = None  # QN of the message on the wire
        self._due = 0  # data responses still wanted for it
        self._verdict: Verdict | None = None
        self._answered = asyncio.Event()
        self._tasks.append(asyncio.ensure_future(guarded(self._read(), spec.name, self.lost)))

    def opened(self) -> None:
        """No login: every frame carries PW and MN."""

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    # --- from the platform ------------------------------------------------------------------
    async def _read(self) -> None:
        deframer = Deframer(TAIL, MAX_FRAME)
        try:
            while data := await self.reader.read(READ_SIZE):
                for raw in deframer.feed(data):
                    await self._take(raw)
        except (FrameTooLarge, OSError) as exc:
            self._lose(f"{self.where}: {why(exc)}")
            return
        self._lose(f"{self.where}: the platform closed the connection")

    async def _take(self, raw: bytes) -> None:
        try:
            segment = Segment.parse(unpack(raw))
        except HJ212Error as exc:
            log.warning("unreadable frame from the platform", extra={"fields": {
                "uplink": self.spec.name, "error": str(exc), "frame": masked(raw[:120].decode("ascii", "replace"))}})
            return
        if segment.cn in REPLIES:
            self._reply(segment)
            return
        replies, done = await self.answers.answer(segment)
        log.info("platform request", extra={"fields": {
            "uplink": self.spec.name, "cn": segment.cn, "qn": segment.qn, "answer": done}})
        await self._write(b"".join(pack(s.text()) for s in replies))

    def _reply(self, segment: Segment) -> None:
        try:
            reply = parse_reply(segment)
        except HJ212Error as exc:
            log.warning("unreadable reply from the platform", extra={"fields": {
                "uplink": self.spec.name, "error": str(exc)}})
            return
        if reply.qn is None or reply.qn != self._qn or self._verdict is not None:
            log.debug("reply for no message on the wire", extra={"fields": {
                "uplink": self.spec.name, "cn": reply.cn, "qn": reply.qn}})
            return
        if reply.cn == CN_DATA_REPLY:
            self._due -= 1
            if self._due <= 0:
                self._verdict = Verdict(ACCEPT)
        elif reply.cn == CN_REQUEST_REPLY and not reply.ok:
            said = f"{self.where}: QN={reply.qn}: {reply.describe()}"
            self._verdict = Verdict(NO_ANSWER if reply.code in CONFIG_FAULTS else REFUSE, said)
        if self._verdict is not None:
            self._answered.set()

    # --- to the platform --------------------------------------------------------------------
    async def _exchange(self, kind: str, payload: bytes) -> Verdict:
        """The message written, and again after each `overtime` without its data responses,
        `recount` times at most."""
        try:
            return await self._upload(payload)
        except OSError as exc:
            return Verdict(NO_ANSWER, f"{self.where}: {why(exc)}")

    async def _upload(self, payload: bytes) -> Verdict:
        frames = frames_of(payload)
        self._qn = Segment.parse(unpack(frames[0])).qn
        overtime = self.spec.delivery.timeout
        for _attempt in range(self.spec.recount + 1):
            self._due, self._verdict = len(frames), None
            self._answered.clear()
            await self._write(payload)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(overtime):
                    await self._answered.wait()
            if self._verdict is not None:
                self._qn = None
                return self._verdict
        sends = self.spec.recount + 1
        return Verdict(NO_ANSWER, f"{self.where}: no data response (9014) to QN={self._qn} after "
                       f"{sends} send{'s' if sends > 1 else ''}, {overtime:g}s each")

    async def close(self, grace: float) -> None:
        self._cancel()
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(grace):
                await self.writer.wait_closed()

    def _shut(self) -> None:
        self._cancel()
        self.writer.transport.abort()


class Hj212Connector:
    def __init__(self, spec: Hj212Spec, unanswered: Unanswered, timezone: tzinfo | None, history: History):
        self.spec, self.unanswered, self.timezone, self.history = spec, unanswered, timezone, history
        self.describe = spec.describe
        self.connect_allowance = spec.delivery.timeout + CAP

    async def connect(self, on_ack: Callable[[int], None],
                      on_reject: Callable[[int, str], None]) -> Hj212Link:
        """A connection, and the PW read afresh for the requests answered on it."""
        spec = self.spec
        reader, writer = await open_stream(spec.host, spec.port, None, spec.delivery.timeout)
        try:
            password = read_secret(spec.body.password_file)
        except (OSError, UnicodeDecodeError) as exc:
            writer.transport.abort()
            raise ConnectFailed(f"cannot read password_file {spec.body.password_file}: {why(exc)}", "file") from None
        answers = Answers(spec.body.st, spec.body.mn, password, self.timezone, self.history,
                          round(spec.minute_interval * 1000))
        return Hj212Link(spec, reader, writer, self.unanswered, answers, on_ack, on_reject)


class Hj212Uplink(PlatformUplink):
    """An `hj212` uplink: the drain loop in snapshot mode, real-time data bodies, the link."""

    def __init__(self, spec: Hj212Spec, ctx: UplinkContext, timezone: tzinfo | None = None):
        super().__init__(spec, ctx, timezone,
                         lambda s, unanswered: Hj212Connector(s, unanswered, timezone, self._history),
                         CONNECTION_KEYS, body_type=RealtimeBody)

    async def _history(self, codes: list[str] | None, start_ms: int, end_ms: int,
                       step_ms: int) -> list[tuple]:
        """The kept minute aggregates of the codes (None: every code sent) per interval."""
        by_code = self.body.codes()
        tags = {by_code[c]: c for c in (by_code if codes is None else codes) if c in by_code}
        rows = await self.drain.store.call("history", self.name, list(tags), start_ms, end_ms, step_ms)
        return [(at, tags[tag], *rest) for at, tag, *rest in rows]

    def _settings(self, delivery: Delivery) -> DrainSettings:
        """Snapshot mode, with the minute aggregates kept for the platform's history requests."""
        return replace(super()._settings(delivery), history_tags=self.body.sent_tags,
                       history_ms=round(self.spec.history * 1000))

    def progress_allowance(self) -> float:
        """Seconds its loop may go without coming round: a message may wait `overtime` for
        each of its `recount` + 1 sendings."""
        if self.stats.state == "up":
            return self.spec.delivery.interval + self.spec.delivery.timeout * (self.spec.recount + 1)
        return super().progress_allowance()
