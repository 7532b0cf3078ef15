"""`soulstone ui` opens a browser only where one would show a window."""

from __future__ import annotations

import sys

from soulstone.cli.ui import has_graphical_browser


def test_a_display_or_browser_means_a_window_and_a_bare_terminal_does_not() -> None:
    assert has_graphical_browser({"DISPLAY": ":0"})
    assert has_graphical_browser({"WAYLAND_DISPLAY": "wayland-0"})
    assert has_graphical_browser({"BROWSER": "firefox"})
    assert has_graphical_browser({}) is (sys.platform == "darwin")
