"""HJ 212-2017 data segments: build, parse, split into PNUM/PNO packets, read replies.

`QN=yyyyMMddHHmmssSSS;ST=..;CN=..;PW=..;MN=..;Flag=..;[PNUM=..;PNO=..;]CP=&&<CP>&&`, fields in
that order, each optional but ST and CN (published frames leave out QN and Flag). CP holds
`;`-separated groups of `,`-separated `key=value` items: parameters such as `DataTime`,
`QnRtn`, and per-code fields such as `w01001-Rtd=8.33,w01001-Flag=N`.
Flag: bit 0 `A` (a reply is wanted), bit 1 `D` (split packet), bits 2-7 the protocol version
(HJ 212-2017 is 1, so Flag is 4, or 5 with A).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from agent.north.hj212.frame import MAX_SEGMENT, HJ212Error

FLAG_REPLY = 1  # A: the sender wants a reply (9014 for data)
FLAG_SPLIT = 2  # D: PNUM / PNO present
VERSION_2017 = 1

CN_REALTIME = "2011"
CN_REQUEST_REPLY = "9011"  # CP: QnRtn
CN_EXECUTION_RESULT = "9012"  # CP: ExeRtn
CN_NOTICE_REPLY = "9013"
CN_DATA_REPLY = "9014"

QN_RTN = {1: "ready to execute", 2: "request refused", 3: "wrong PW", 4: "wrong MN",
          5: "wrong ST", 6: "wrong Flag", 7: "wrong QN", 8: "wrong CN", 9: "wrong CRC",
          100: "unknown error"}
EXE_RTN = {1: "done", 2: "failed, reason unknown", 3: "request conditions wrong",
           4: "communication timeout", 5: "system busy", 6: "system fault", 100: "no data"}

_HEAD = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")
_PW = re.compile(r"PW=[^;&]*")
_INT_HEAD = frozenset({"Flag", "PNUM", "PNO"})


def masked(text: str) -> str:
    """A frame or data segment as it may be shown or logged: its PW replaced by ***."""
    return _PW.sub("PW=***", text)


def make_flag(reply: bool, version: int = VERSION_2017) -> int:
    """The Flag value for a sender (the D bit is set by `split`)."""
    return (version << 2) | (FLAG_REPLY if reply else 0)


def format_qn(when: datetime) -> str:
    """QN (request number) from a local time: yyyyMMddHHmmssSSS."""
    return f"{when:%Y%m%d%H%M%S}{when.microsecond // 1000:03d}"


def format_data_time(when: datetime) -> str:
    """DataTime from a local time: yyyyMMddHHmmss."""
    return f"{when:%Y%m%d%H%M%S}"


def number_text(value: float | int | bool | str) -> str:
    """A value as HJ 212 writes it: plain decimal, never an exponent (1e-05 -> "0.00001"),
    shortest round-trip digits for floats (7.25 -> "7.25", 7.0 -> "7.0"), bools as 1 / 0,
    text unchanged."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int):
        return str(int(value))
    if not math.isfinite(value):
        raise HJ212Error(f"{value!r} cannot be sent; HJ 212 values are finite numbers")
    return format(Decimal(repr(value)), "f")


def _check_text(what: str, value: str, forbidden: str) -> None:
    bad = next((c for c in value if c in forbidden), None)
    if bad is not None:
        raise HJ212Error(f"{what} {value!r} contains {bad!r}, a separator in HJ 212 segments")


@dataclass(frozen=True)
class Cp:
    """The CP field: parameters (DataTime, QnRtn, ...) and per-code fields, both in order.
    A code seen twice when parsing is merged into one entry (later fields win)."""

    params: dict[str, str] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.params.items():
            _check_text("CP key", key, ";,=&-")
            _check_text(f"CP {key} value", value, ";,=&")
        for code, fields in self.codes.items():
            _check_text("CP code", code, ";,=&")
            for name, value in fields.items():
                _check_text(f"CP {code} field", name, ";,=&-")
                _check_text(f"CP {code}-{name} value", value, ";,=&")

    @property
    def data_time(self) -> str | None:
        return self.params.get("DataTime")

    def text(self) -> str:
        parts = [f"{key}={value}" for key, value in self.params.items()]
        parts += [",".join(f"{code}-{name}={value}" for name, value in fields.items())
                  for code, fields in self.codes.items()]
        return ";".join(parts)

    @classmethod
    def parse(cls, text: str) -> Cp:
        params: dict[str, str] = {}
        codes: dict[str, dict[str, str]] = {}
        for group in text.split(";"):
            for item in group.split(",") if group else ():
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise HJ212Error(f"CP item {item!r} is not key=value")
                code, dash, name = key.rpartition("-")
                if dash and code and name:
                    codes.setdefault(code, {})[name] = value
                else:
                    params[key] = value
        return cls(params, codes)


def realtime_cp(data_time: str, items: Iterable[tuple[str, float | int | str | None, str | None]]
                ) -> Cp:
    """CP of a data upload: DataTime, then `code-Rtd=value,code-Flag=flag` per item.
    A None value writes the data flag only (e.g. D for a fault); a None flag writes the value only."""
    codes: dict[str, dict[str, str]] = {}
    for code, value, data_flag in items:
        if code in codes:
            raise HJ212Error(f"code {code!r} appears twice in one upload")
        fields = {}
        if value is not None:
            fields["Rtd"] = number_text(value)
        if data_flag is not None:
            fields["Flag"] = data_flag
        if not fields:
            raise HJ212Error(f"code {code!r} has neither a value nor a data flag")
        codes[code] = fields
    return Cp({"DataTime": data_time}, codes)


@dataclass(frozen=True, kw_only=True)
class Segment:
    """One data segment; None leaves a header field out."""

    st: str
    cn: str
    cp: Cp = field(default_factory=Cp)
    qn: str | None = None
    pw: str | None = None
    mn: str | None = None
    flag: int | None = None
    pnum: int | None = None
    pno: int | None = None

    def __post_init__(self) -> None:
        for name in ("st", "cn", "qn", "pw", "mn"):
            value = getattr(self, name)
            if value is not None:
                _check_text(name.upper(), value, ";&")
        if self.qn is not None and not (len(self.qn) == 17 and self.qn.isdigit()):
            raise HJ212Error(f"QN {self.qn!r} is not yyyyMMddHHmmssSSS (17 digits)")
        if self.flag is not None and not 0 <= self.flag <= 255:
            raise HJ212Error(f"Flag {self.flag} is not 0..255")
        if (self.pnum is None) != (self.pno is None):
            raise HJ212Error("PNUM and PNO come together")
        if self.pnum is not None and not 1 <= self.pno <= self.pnum:
            raise HJ212Error(f"PNO {self.pno} is not within 1..PNUM {self.pnum}")

    @property
    def reply_wanted(self) -> bool:
        return bool((self.flag or 0) & FLAG_REPLY)

    @property
    def version(self) -> int:
        return (self.flag or 0) >> 2

    def text(self) -> str:
        values = (self.qn, self.st, self.cn, self.pw, self.mn, self.flag, self.pnum, self.pno)
        head = "".join(f"{key}={value};" for key, value in zip(_HEAD, values, strict=True)
                       if value is not None)
        return f"{head}CP=&&{self.cp.text()}&&"

    @classmethod
    def parse(cls, text: str) -> Segment:
        at = text.find("CP=&&")
        if at < 0 or not text.endswith("&&") or len(text) < at + 7:
            raise HJ212Error("the data segment has no CP=&&...&& at its end")
        if at and text[at - 1] != ";":
            raise HJ212Error("the field before CP=&& does not end with ';'")
        head: dict[str, str] = {}
        for item in text[:at - 1].split(";") if at else ():
            key, sep, value = item.partition("=")
            if not sep or key not in _HEAD:
                raise HJ212Error(f"header field {item!r} is not one of {', '.join(_HEAD)} "
                                 "as key=value")
            if key in head:
                raise HJ212Error(f"header field {key} appears twice")
            if key in _INT_HEAD and not value.isdigit():
                raise HJ212Error(f"{key}={value!r} is not a number")
            head[key] = value
        for key in ("ST", "CN"):
            if key not in head:
                raise HJ212Error(f"the data segment has no {key}")
        ints = {key.lower(): int(head[key]) for key in _INT_HEAD if key in head}
        texts = {key.lower(): head.get(key) for key in ("QN", "ST", "CN", "PW", "MN")}
        return cls(**texts, **ints, cp=Cp.parse(text[at + 5:-2]))


def split(segment: Segment, max_length: int = MAX_SEGMENT) -> list[Segment]:
    """The segment as it is if it fits max_length bytes, else PNUM/PNO packets with the D bit.

    Every packet keeps the header (the same QN: the request's number; PNO tells the packets
    apart) and the CP parameters (DataTime), and takes whole code groups in order.
    """
    if not 1 <= max_length <= MAX_SEGMENT:
        raise HJ212Error(f"max_length {max_length} is not within 1..{MAX_SEGMENT}")
    if len(segment.text()) <= max_length:
        return [segment]
    if segment.pnum is not None:
        raise HJ212Error(f"packet PNO={segment.pno} of {segment.pnum} is already split, and "
                         f"{len(segment.text())} bytes is still longer than {max_length}")
    flags = (segment.flag or 0) | FLAG_SPLIT
    params = dict(segment.cp.params)
    digits = 1
    while True:
        widest = 10 ** digits - 1
        base = len(replace(segment, flag=flags, pnum=widest, pno=widest, cp=Cp(params)).text())
        if base > max_length:
            raise HJ212Error(f"the header and CP parameters alone are {base} bytes; "
                             f"max_length is {max_length}")
        packets: list[dict[str, dict[str, str]]] = [{}]
        size = base
        for code, fields in segment.cp.codes.items():
            group = len(Cp(codes={code: fields}).text())
            grown = size + group + (1 if packets[-1] or params else 0)
            if grown > max_length and packets[-1]:
                packets.append({})
                grown = base + group + (1 if params else 0)
            if grown > max_length:
                raise HJ212Error(f"code {code!r} alone makes a {grown}-byte packet; "
                                 f"max_length is {max_length}")
            packets[-1][code] = fields
            size = grown
        if len(str(len(packets))) <= digits:
            break
        digits += 1
    return [replace(segment, flag=flags, pnum=len(packets), pno=number, cp=Cp(dict(params), codes))
            for number, codes in enumerate(packets, 1)]


def join(packets: Sequence[Segment]) -> Segment:
    """One segment from all PNUM/PNO packets of a message (any order); the D bit is cleared."""
    if not packets:
        raise HJ212Error("no packets to join")
    first = packets[0]
    if first.pnum is None:
        if len(packets) == 1:
            return first
        raise HJ212Error("packets without PNUM/PNO cannot be joined")
    by_number: dict[int, Segment] = {}
    for packet in packets:
        if packet.pnum != first.pnum:
            raise HJ212Error(f"packet PNO={packet.pno} says PNUM={packet.pnum}, "
                             f"packet PNO={first.pno} says {first.pnum}")
        if (packet.qn, packet.st, packet.cn, packet.mn) != (first.qn, first.st, first.cn, first.mn):
            raise HJ212Error(f"packet PNO={packet.pno} (QN={packet.qn}, CN={packet.cn}, "
                             f"MN={packet.mn}) belongs to another message than QN={first.qn}")
        if packet.pno in by_number:
            raise HJ212Error(f"packet PNO={packet.pno} appears twice")
        by_number[packet.pno] = packet
    missing = [n for n in range(1, first.pnum + 1) if n not in by_number]
    if missing:
        raise HJ212Error(f"packets PNO={', '.join(map(str, missing))} of PNUM={first.pnum} "
                         "are missing")
    codes: dict[str, dict[str, str]] = {}
    for number in range(1, first.pnum + 1):
        codes.update(by_number[number].cp.codes)
    return replace(first, flag=(first.flag or 0) & ~FLAG_SPLIT, pnum=None, pno=None,
                   cp=Cp(dict(by_number[1].cp.params), codes))


@dataclass(frozen=True)
class Reply:
    """A platform's reply: 9014 data / 9013 notice reply (no code), 9011 QnRtn, 9012 ExeRtn."""

    cn: str
    qn: str | None
    code: int | None

    @property
    def ok(self) -> bool:
        return self.code is None or self.code == 1

    def describe(self) -> str:
        if self.cn == CN_REQUEST_REPLY:
            return f"QnRtn={self.code} ({QN_RTN.get(self.code, 'not in HJ 212-2017')})"
        if self.cn == CN_EXECUTION_RESULT:
            return f"ExeRtn={self.code} ({EXE_RTN.get(self.code, 'not in HJ 212-2017')})"
        return f"CN={self.cn} received"


_REPLY_CODES: Mapping[str, str | None] = {
    CN_REQUEST_REPLY: "QnRtn", CN_EXECUTION_RESULT: "ExeRtn",
    CN_NOTICE_REPLY: None, CN_DATA_REPLY: None,
}


def parse_reply(segment: Segment) -> Reply:
    """The reply a segment carries; its QN is the request's (header QN, or CP QN as in 2005)."""
    if segment.cn not in _REPLY_CODES:
        raise HJ212Error(f"CN={segment.cn} is not a reply; replies are "
                         f"{', '.join(sorted(_REPLY_CODES))}")
    qn = segment.qn or segment.cp.params.get("QN")
    name = _REPLY_CODES[segment.cn]
    if name is None:
        return Reply(segment.cn, qn, None)
    value = segment.cp.params.get(name, "")
    if not value.isdigit():
        raise HJ212Error(f"CN={segment.cn} reply has {name}={value!r}, not a number")
    return Reply(segment.cn, qn, int(value))
