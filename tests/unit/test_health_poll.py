"""The readiness poll schedule: tight at first, a bounded share of the wait, capped."""

from __future__ import annotations

from soulstone.runtimes.health import FIRST_POLL_S, POLL_RATIO, poll_gap


def test_a_start_is_probed_tightly_at_first() -> None:
    assert poll_gap(0.0, 2.0) == FIRST_POLL_S
    assert poll_gap(0.1, 2.0) == FIRST_POLL_S


def test_the_gap_grows_with_the_wait_but_stays_a_small_share_of_it() -> None:
    for elapsed in (1.0, 5.0, 30.0, 90.0):
        gap = poll_gap(elapsed, 2.0)
        assert gap <= max(FIRST_POLL_S, POLL_RATIO * elapsed)
        assert gap <= 0.05 * elapsed  # lateness stays within the 5 % a swap may add


def test_the_gap_never_passes_the_soulstones_interval() -> None:
    assert poll_gap(600.0, 2.0) == 2.0
    assert poll_gap(600.0, 0.005) == 0.005
