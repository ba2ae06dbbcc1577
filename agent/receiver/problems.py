"""What both reference receivers keep of a message's problems: a bounded list of lines."""

from __future__ import annotations

MAX_PROBLEMS = 10  # problems listed per rejected message
MAX_PROBLEM_TEXT = 300  # characters of one problem: a hostile value is never stored whole


class Problems(list):
    """Problems of one message, bounded."""

    def add(self, where: str, what: str) -> None:
        if len(self) < MAX_PROBLEMS:
            self.append(f"{where}: {what[:MAX_PROBLEM_TEXT]}")
        elif len(self) == MAX_PROBLEMS:
            self.append("... more problems not listed")

    @property
    def full(self) -> bool:
        return len(self) > MAX_PROBLEMS
