"""The ack rule: what the far end must answer for a message to count as delivered.

`status` (HTTP only; empty means any 2xx), then `field` (a dotted path into the JSON reply,
digits index arrays: `data.code`, `errors.0.id`) compared as text with `equals`. A TCP uplink
without `field` accepts any reply frame.

Three outcomes (`judge`):
- accept: delivered;
- refuse: the far end judged this message and said no (counted towards `max_rejects`);
- no answer: nothing says the message was judged (a 5xx, 408 or 429, a redirect, 401/403/404
  and the like, which are about the address or the credentials rather than the message, a
  reply that is not JSON or lacks the field): the link counts as lost and the message goes
  again with back-off, forever, and is never set aside for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

ACCEPT, REFUSE, NO_ANSWER = "accept", "refuse", "no answer"
SHOWN = 200  # characters of a reply quoted in a reason
# statuses about the link, the address or the credentials, not about the message
LINK_STATUSES = frozenset({401, 403, 404, 405, 407, 408, 421, 429})


@dataclass(frozen=True)
class AckRule:
    status: tuple[int, ...] = ()  # HTTP statuses that may carry an acceptance; empty: any 2xx
    field: str | None = None  # dotted path into the JSON reply
    equals: str | None = None  # the field's value, compared as text

    def path(self) -> list[str]:
        return self.field.split(".") if self.field else []


@dataclass(frozen=True)
class Verdict:
    outcome: str  # ACCEPT | REFUSE | NO_ANSWER
    reason: str = ""


def as_text(value: Any) -> str:
    """A JSON value as `equals` compares it: strings as they are, numbers in decimal, true /
    false / null, arrays and objects as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value).decode("utf-8")


def quote(body: bytes) -> str:
    """The start of a reply, one line, for a reason or a log."""
    text = body.decode("utf-8", "replace")
    return repr(text[:SHOWN] + ("..." if len(text) > SHOWN else ""))


def lookup(reply: Any, path: list[str]) -> tuple[bool, Any]:
    """(found, value) at a dotted path in a decoded JSON reply."""
    node = reply
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def judge(rule: AckRule, body: bytes, status: int | None = None) -> Verdict:
    """The verdict on one reply; `status` is the HTTP status (None for a TCP reply frame)."""
    if status is not None:
        accepted = status in rule.status if rule.status else 200 <= status < 300
        if not accepted:
            if status >= 500 or status in LINK_STATUSES or 300 <= status < 400:
                return Verdict(NO_ANSWER, f"HTTP {status}: {quote(body)}")
            wanted = ", ".join(map(str, rule.status)) if rule.status else "2xx"
            return Verdict(REFUSE, f"HTTP {status}, not {wanted}: {quote(body)}")
    if rule.field is None:
        return Verdict(ACCEPT)
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Verdict(NO_ANSWER, f"the reply is not JSON, so ack.field {rule.field!r} cannot be "
                                  f"read: {quote(body)}")
    found, value = lookup(reply, rule.path())
    if not found:
        return Verdict(NO_ANSWER, f"the reply has no field {rule.field!r}: {quote(body)}")
    text = as_text(value)
    if text == rule.equals:
        return Verdict(ACCEPT)
    return Verdict(REFUSE, f"{rule.field} = {text!r}, not {rule.equals!r}: {quote(body)}")
