"""The ack rule: HTTP status, then a dotted field compared as text; refusals versus no answer."""

from __future__ import annotations

import pytest

from agent.north.ack import ACCEPT, NO_ANSWER, REFUSE, AckRule, judge

CODE0 = AckRule(status=(200,), field="code", equals="0")


@pytest.mark.parametrize(("rule", "status", "body", "outcome"), [
    (AckRule(), 200, b"", ACCEPT),  # default: any 2xx
    (AckRule(), 204, b"", ACCEPT),
    (AckRule(), None, b"anything", ACCEPT),  # TCP without field: any reply frame
    (CODE0, 200, b'{"code": 0, "msg": "ok"}', ACCEPT),  # compared as text: 0 == "0"
    (CODE0, 200, b'{"code": "0"}', ACCEPT),
    (CODE0, 200, b'{"code": 1, "msg": "bad"}', REFUSE),
    (CODE0, 201, b'{"code": 0}', REFUSE),  # a status outside the list
    (AckRule(field="data.code", equals="200"), None, b'{"data": {"code": 200}}', ACCEPT),
    (AckRule(field="errors.0.ok", equals="true"), None, b'{"errors": [{"ok": true}]}', ACCEPT),
    (AckRule(field="ok", equals="null"), None, b'{"ok": null}', ACCEPT),
    (AckRule(), 400, b'{"msg": "bad record"}', REFUSE),
    (AckRule(), 422, b"", REFUSE),
    (AckRule(), 500, b"", NO_ANSWER),  # the platform is in trouble, not the message
    (AckRule(), 503, b"", NO_ANSWER),
    (AckRule(), 429, b"", NO_ANSWER),
    (AckRule(), 401, b"", NO_ANSWER),  # credentials: never a reason to set messages aside
    (AckRule(), 404, b"", NO_ANSWER),
    (AckRule(), 302, b"", NO_ANSWER),
    (CODE0, 200, b"<html>proxy error</html>", NO_ANSWER),  # says nothing about the message
    (CODE0, 200, b'{"status": "ok"}', NO_ANSWER),
])
def test_judge(rule: AckRule, status: int | None, body: bytes, outcome: str) -> None:
    assert judge(rule, body, status).outcome == outcome


def test_reasons_quote_the_reply_briefly() -> None:
    refused = judge(CODE0, b'{"code": 1, "msg": "' + b"x" * 500 + b'"}', 200)
    assert refused.reason.startswith("code = '1', not '0': ") and len(refused.reason) < 260
    assert judge(AckRule(), b"oops", 503).reason == "HTTP 503: 'oops'"
    assert "not 200" in judge(CODE0, b"", 201).reason
