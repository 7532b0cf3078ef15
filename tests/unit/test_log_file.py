"""The gateway's log file: appended, private, rotated past its size."""

from __future__ import annotations

from pathlib import Path

from soulstone.files import tail_lines
from soulstone.observe.logging import LogFile, Tee


def test_the_log_file_is_private_and_rotates_keeping_one_old_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "gateway.log"
    log = LogFile(path, limit=100)
    for number in range(30):
        log.write(f"line {number:02d}\n")
        log.flush()
    log.close()
    assert path.stat().st_mode & 0o777 == 0o600
    old = path.with_name("gateway.log.1")
    assert old.exists() and path.stat().st_size <= 100 + len("line 00\n")
    assert tail_lines(path, 1) == "line 29"
    kept = old.read_text().splitlines() + path.read_text().splitlines()
    assert kept[-1] == "line 29" and kept == sorted(kept)  # nothing out of order


def test_a_tee_writes_on_when_one_stream_fails(tmp_path: Path) -> None:
    class Broken:
        def write(self, _text: str) -> None:
            raise OSError("gone")

        def flush(self) -> None:
            raise ValueError("closed")

    log = LogFile(tmp_path / "g.log")
    tee = Tee(Broken(), log)
    tee.write("kept\n")
    tee.flush()
    assert (tmp_path / "g.log").read_text() == "kept\n"
