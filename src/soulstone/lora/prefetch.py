"""Which adapter tends to follow which, per session (pure): predict the next one to warm."""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

MAX_SESSIONS = 10_000


@dataclass
class Transitions:
    """Counts of adapter B following adapter A within a session, across sessions."""

    follows: dict[str, Counter[str]] = field(default_factory=dict)
    last: OrderedDict[str, str] = field(default_factory=OrderedDict)  # session -> last adapter
    predicted: dict[str, str] = field(default_factory=dict)  # session -> predicted next

    def observe(self, session: str, adapter: str) -> tuple[bool, str | None]:
        """Record a request; return (whether it was the predicted one, the next to prefetch)."""
        hit = self.predicted.pop(session, None) == adapter
        previous = self.last.pop(session, None)
        if previous is not None and previous != adapter:
            self.follows.setdefault(previous, Counter())[adapter] += 1
        self.last[session] = adapter
        if len(self.last) > MAX_SESSIONS:
            old, _ = self.last.popitem(last=False)
            self.predicted.pop(old, None)
        likely = self.follows.get(adapter)
        following = likely.most_common(1)[0][0] if likely else None
        if following is not None:
            self.predicted[session] = following
        return hit, following
