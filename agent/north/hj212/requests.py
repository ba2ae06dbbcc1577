"""The platform's requests on the uplink's connection, answered as HJ 212-2017 §6 has a data
logger answer them: a request reply (CN 9011, `QnRtn`), then for a query its data and an
execution result (CN 9012, `ExeRtn`), all under the request's QN.

Answered: the time query (1011). Refused with QnRtn=2 (request refused): every request that
would change the box — set time (1012), set password (1072), set intervals (1062, 1064),
set overtime and recount (1000) — and the queries this version does not serve. A request
whose PW or MN is not this uplink's is refused with QnRtn=3 or 4; a CN HJ 212-2017 does not
define with QnRtn=8.
"""

from __future__ import annotations

from datetime import tzinfo

from agent.common.timefmt import now_ms
from agent.north.hj212.body import local
from agent.north.hj212.segment import (
    CN_EXECUTION_RESULT,
    CN_REQUEST_REPLY,
    Cp,
    Segment,
    format_data_time,
    make_flag,
)

ST_SYSTEM = "91"  # replies go as system interaction
CN_TIME_QUERY = "1011"
CHANGES = {"1000": "set overtime and recount", "1012": "set time", "1062": "set real-time interval",
           "1064": "set minute interval", "1072": "set password"}
KNOWN = {"1011", "1012", "1013", "1014", "1015", "1000", "1061", "1062", "1063", "1064", "1072",
         "2011", "2012", "2021", "2022", "2031", "2041", "2051", "2061", "2081",
         "3011", "3012", "3013", "3014", "3015", "3016", "3017", "3018", "3019", "3020", "3021"}
READY, REFUSED, WRONG_PW, WRONG_MN, WRONG_CN = 1, 2, 3, 4, 8
DONE = 1


class Answers:
    """What the uplink answers to one request segment: the segments to send back, in order."""

    def __init__(self, st: str, mn: str, password: str, timezone: tzinfo | None):
        self.st, self.mn, self.password, self.timezone = st, mn, password, timezone

    def _segment(self, qn: str | None, st: str, cn: str, cp: Cp) -> Segment:
        return Segment(qn=qn, st=st, cn=cn, pw=self.password, mn=self.mn,
                       flag=make_flag(False), cp=cp)

    def _request_reply(self, qn: str | None, code: int) -> Segment:
        return self._segment(qn, ST_SYSTEM, CN_REQUEST_REPLY, Cp({"QnRtn": str(code)}))

    def answer(self, request: Segment) -> tuple[list[Segment], str]:
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
                    self._segment(qn, ST_SYSTEM, CN_EXECUTION_RESULT, Cp({"ExeRtn": str(DONE)}))], "time sent"
        if request.cn in CHANGES:
            return [self._request_reply(qn, REFUSED)], f"refused: {CHANGES[request.cn]} is not taken from a platform"
        if request.cn in KNOWN:
            return [self._request_reply(qn, REFUSED)], "refused: not served by this version"
        return [self._request_reply(qn, WRONG_CN)], "refused: not an HJ 212-2017 command"
