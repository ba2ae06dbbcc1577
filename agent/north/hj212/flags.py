"""HJ 212 data flags from hazgate's quality and reason: the default mapping and the lookup.

HJ 212-2017 flags: N normal, F stopped, M maintenance, S manual, D fault, C calibration,
T over the measuring range's upper limit, B communication abnormal. A reading's flag is, in
this order: its reason's entry (the whole reason, else its text before the first ':', so
`connection lost: reset by peer` finds `connection lost`), then `over_range` for a good value
above the point's `eng_max`, then its quality's entry. `[uplinks.flags]` entries replace the
defaults key by key.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.model import BAD, GOOD, UNCERTAIN

LETTERS = {"N": "normal", "F": "stopped", "M": "maintenance", "S": "manual", "D": "fault",
           "C": "calibration", "T": "over the upper limit", "B": "communication abnormal"}
OVER_RANGE = "over_range"
DEFAULT_FLAGS: Mapping[str, str] = {
    GOOD: "N", UNCERTAIN: "N", BAD: "D", OVER_RANGE: "T",
    # the device could not be reached (docs/uplink.md, "Quality and reason")
    "timeout": "B", "connection lost": "B", "connection refused or timed out": "B",
    "connect failed": "B", "not connected yet": "B",
    "declared_stop": "M",  # readings under a technician's declared stop
}


def flag_problem(letter: object) -> str | None:
    """Why `letter` is not an HJ 212 data flag; None when it is."""
    if isinstance(letter, str) and letter in LETTERS:
        return None
    return (f"{letter!r} is not an HJ 212 data flag; valid: "
            + ", ".join(f"{k} ({v})" for k, v in LETTERS.items()))


def flag_of(flags: Mapping[str, str], quality: str, reason: str | None, value: object,
            eng_max: float | None) -> str:
    """The data flag of one reading under `flags` (DEFAULT_FLAGS with the config's entries)."""
    if reason:
        found = flags.get(reason) or flags.get(reason.partition(":")[0].strip())
        if found:
            return found
    if (quality == GOOD and eng_max is not None and isinstance(value, int | float)
            and not isinstance(value, bool) and value > eng_max):
        return flags[OVER_RANGE]
    return flags.get(quality, flags[BAD])
