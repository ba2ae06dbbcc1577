"""Durations as technicians write them in config files."""

from __future__ import annotations

import pytest

from agent.common.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("1s", 1.0),
        ("0.5s", 0.5),
        ("1.25s", 1.25),
        ("2m", 120.0),
        ("8h", 28800.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("2h0m5s", 7205.0),
        ("1s500ms", 1.5),
        ("1S", 1.0),              # case does not matter
        ("1H30M", 5400.0),
        (" 10s ", 10.0),          # surrounding blanks
        ("1h 30m", 5400.0),       # blanks between parts
        ("0s", 0.0),              # parses; config rejects zero where it must be positive
        ("90m", 5400.0),
        ("100000s", 100000.0),
    ],
)
def test_good(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "10",        # a number needs a unit
        "s",         # a unit needs a number
        "fast",
        "1x",
        "1 sec",
        "1second",
        "-1s",
        "+1s",
        "1.s",
        ".5s",
        "1e3s",
        "1,5s",
        "1s-",
        "1h30",      # trailing number without a unit
        "ms",
        "1s 2",
        "PT1S",      # ISO 8601 is not accepted
    ],
)
def test_bad(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_duration(text)
    message = str(exc.value)
    assert repr(text) in message
    assert "valid:" in message and '"500ms"' in message


@pytest.mark.parametrize("value", [5, 1.5, True, None, ["1s"], {"s": 1}])
def test_not_a_string(value: object) -> None:
    """TOML `poll_interval = 5` is a number, not a duration: say so, with what is valid."""
    with pytest.raises(ValueError, match="is not a duration string; valid:"):
        parse_duration(value)
