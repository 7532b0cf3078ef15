"""The conflict graph: which soulstones may not run at the same time."""

from __future__ import annotations

from collections.abc import Sequence

from soulstone.codex.models import Soulstone


def in_conflict(a: Soulstone, b: Soulstone) -> bool:
    """Two distinct soulstones conflict when they share no group (solitary ones: always).

    A remote soulstone (SPEC C12) runs on other hardware: it conflicts with
    nothing unless it declares groups, and then by the same rule.
    """
    if (a.remote is not None and not a.groups) or (b.remote is not None and not b.groups):
        return False
    return a.id != b.id and not set(a.groups) & set(b.groups)


def conflict_pairs(soulstones: Sequence[Soulstone]) -> tuple[tuple[str, str], ...]:
    """Every conflicting pair once, each pair sorted, the pairs in sorted order."""
    pairs = {
        (min(a.id, b.id), max(a.id, b.id))
        for i, a in enumerate(soulstones)
        for b in soulstones[i + 1 :]
        if in_conflict(a, b)
    }
    return tuple(sorted(pairs))
