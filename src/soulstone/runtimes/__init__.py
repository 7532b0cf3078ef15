"""Runtimes (SPEC C3): start, stop and inspect engines as processes or systemd units."""
