"""The unit every reader produces, and the ledger of what was dropped on the way."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

log = logging.getLogger("finlight.data")


@dataclass(frozen=True)
class Record:
    """One example: text, raw label (None for unlabeled input) and where it came from (``file:line``)."""

    text: str
    label: Optional[str]
    origin: str


@dataclass
class DropLog:
    """Counts and locations of every example dropped, by reason, so nothing disappears silently."""

    by_reason: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, origin: str) -> None:
        self.by_reason[reason].append(origin)

    def total(self) -> int:
        return sum(len(v) for v in self.by_reason.values())

    def warn(self, what: str) -> None:
        for reason, origins in self.by_reason.items():
            shown = ", ".join(origins[:10]) + (f", … (+{len(origins) - 10} more)" if len(origins) > 10 else "")
            log.warning("%s: dropped %d %s: %s", what, len(origins), reason, shown)

    def as_dict(self) -> dict[str, dict]:
        return {r: {"count": len(o), "where": o[:50]} for r, o in self.by_reason.items()}
