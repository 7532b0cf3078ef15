"""systemd's command-line rules for the tests: specifiers shown as markers (`%t` -> `<%t>`).

The rules themselves live in soulstone.runtimes.systemd_exec (the podman
runtime reads generated ExecStart= lines with them).
"""

from __future__ import annotations

from soulstone.runtimes.systemd_exec import exec_words, split_words

__all__ = ["exec_argv", "split_words"]


def exec_argv(line: str) -> list[str]:
    """The argv systemd runs for an ExecStart= value, specifiers left as `<%x>` markers."""
    return list(exec_words(line, lambda letter: f"<%{letter}>"))
