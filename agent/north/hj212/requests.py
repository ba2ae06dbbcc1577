"""The platform's requests on the uplink's connection, answered as HJ 212-2017 §6 has a data
logger answer them: a request reply (CN 9011, `QnRtn`), then for a query its data and an
execution result (CN 9012, `ExeRtn`), all under the request's QN.

Answered: the time query (1011); minute (2051) and hour (2061) data between `BeginTime` and
`EndTime` (optionally one `PolId`), one upload per interval that has data, `code-Min`,
`code-Avg`, `code-Max` and `code-Flag` per code (`D` without values where every reading of the
interval was bad), from the minute aggregates the store keeps (agent/pipeline/history.py);
ExeRtn=100 when there is none, 3 when the times cannot be read. Refused with QnRtn=2 (request
refused): every request that would change the box — set time (1012), set password (1072), set
intervals (1062, 1064), set overtime and recount (1000) — and the queries this version does not
serve. A request whose PW or MN is not this uplink's is refused with QnRtn=3 or 4; a CN
HJ 212-2017 does not define with QnRtn=8.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, tzinfo

from agent.common.timefmt import now_ms
from agent.north.hj212.body import local
from agent.north.hj212.segment import (
    CN_EXECUTION_RESULT,
    CN_REQUEST_REPLY,
    Cp,
    Segment,
    format_data_time,
    make_flag,
    number_text,
    split,
)

ST_SYSTEM = "91"  # replies go as system interaction
CN_TIME_QUERY = "1011"
CHANGES = {"1000": "set overtime and recount", "1012": "set time", "1062": "set real-time interval",
           "1064": "set minute interval", "1072": "set password"}
KNOWN = {"1011", "1012", "1013", "1014", "1015", "1000", "1061", "1062", "1063", "1064", "1072",
         "2011", "2012", "2021", "2022", "2031", "2041", "2051", "2061", "2081",
         "3011", "3012", "3013", "3014", "3015", "3016", "3017", "3018", "3019", "3020", "3021"}
CN_MINUTE_DATA, CN_HOUR_DATA = "2051", "2061"
READY, REFUSED, WRONG_PW, WRONG_MN, WRONG_CN = 1, 2, 3, 4, 8
DONE, BAD_CONDITIONS, NO_DATA = 1, 3, 100
HOUR = 3_600_000

# (codes or None for all, start ms, end ms, interval ms) -> (interval start, code, usable values,
# their sum, least, greatest, bad readings) per code and interval with data, in order
History = Callable[[list[str] | None, int, int, int], Awaitable[list[tuple]]]


class Answers:
    """What the uplink answers to one request segment: the segments to send back, in order."""

    def __init__(self, st: str, mn: str, password: str, timezone: tzinfo | None, history: History,
                 minute_ms: int):
        self.st, self.mn, self.password, self.timezone = st, mn, password, timezone
        self.history, self.minute_ms = history, minute_ms

    def _segment(self, qn: str | None, st: str, cn: str, cp: Cp) -> Segment:
        return Segment(qn=qn, st=st, cn=cn, pw=self.password, mn=self.mn,
                       flag=make_flag(False), cp=cp)

    def _request_reply(self, qn: str | None, code: int) -> Segment:
        return self._segment(qn, ST_SYSTEM, CN_REQUEST_REPLY, Cp({"QnRtn": str(code)}))

    async def answer(self, request: Segment) -> tuple[list[Segment], str]:
        """The reply segments and, for the log, what was done."""
        qn = request.qn
        if request.pw != self.password:
            return [self._request_reply(qn, WRONG_PW)], "refused: wrong PW"
        if request.mn != self.mn:
            return [self._request_reply(qn, WRONG_MN)], f"refused: MN {request.mn!r} is not this data logger's"
        if request.cn == CN_TIME_QUERY:
            params = {k: v for k, v in request.cp.params.items() if k == "PolId"}
            params["SystemTime"] = format_data_time(local(now_ms(), self.timezone))
            return [self._request_reply(qn, READY), self._segment(qn, self.st, CN_TIME_QUERY, Cp(params)),
                    self._result(qn, DONE)], "time sent"
        if request.cn in (CN_MINUTE_DATA, CN_HOUR_DATA):
            return await self._data(request)
        if request.cn in CHANGES:
            return [self._request_reply(qn, REFUSED)], f"refused: {CHANGES[request.cn]} is not taken from a platform"
        if request.cn in KNOWN:
            return [self._request_reply(qn, REFUSED)], "refused: not served by this version"
        return [self._request_reply(qn, WRONG_CN)], "refused: not an HJ 212-2017 command"

    def _local_ms(self, text: str | None) -> int | None:
        """yyyyMMddHHmmss in the gateway's zone as epoch ms; None when it is not that."""
        try:
            when = datetime.strptime(text or "", "%Y%m%d%H%M%S")
        except ValueError:
            return None
        return round(when.replace(tzinfo=self.timezone).timestamp() * 1000)  # None: the system's zone

    async def _data(self, request: Segment) -> tuple[list[Segment], str]:
        """Minute or hour data between BeginTime and EndTime, from the kept minute aggregates."""
        qn, params = request.qn, request.cp.params
        start, end = self._local_ms(params.get("BeginTime")), self._local_ms(params.get("EndTime"))
        ready = self._request_reply(qn, READY)
        if start is None or end is None or end < start:
            return [ready, self._result(qn, BAD_CONDITIONS)], \
                f"BeginTime {params.get('BeginTime')!r} / EndTime {params.get('EndTime')!r} are not yyyyMMddHHmmss, in order"
        step = HOUR if request.cn == CN_HOUR_DATA else self.minute_ms
        rows = await self.history([params["PolId"]] if "PolId" in params else None, start, end, step)
        intervals: dict[int, dict[str, dict[str, str]]] = {}
        for at, code, n, total, low, high, _bad in rows:
            intervals.setdefault(at, {})[code] = (
                {"Min": number_text(low), "Avg": number_text(total / n), "Max": number_text(high), "Flag": "N"}
                if n else {"Flag": "D"})
        data = [packet for at, codes in intervals.items() for packet in split(Segment(
            qn=qn, st=self.st, cn=request.cn, pw=self.password, mn=self.mn, flag=make_flag(False),
            cp=Cp({"DataTime": format_data_time(local(at, self.timezone))}, codes)))]
        return [ready, *data, self._result(qn, DONE if data else NO_DATA)], f"{len(intervals)} intervals sent"

    def _result(self, qn: str | None, code: int) -> Segment:
        return self._segment(qn, ST_SYSTEM, CN_EXECUTION_RESULT, Cp({"ExeRtn": str(code)}))
