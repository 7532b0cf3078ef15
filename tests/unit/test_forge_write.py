"""Forge writes: only changed files, atomically, never touching foreign files."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import EXAMPLES, load, write
from soulstone.errors import SoulstoneError
from soulstone.forge.units import ForgeOptions, forge_units
from soulstone.forge.write import apply, plan, written_by_forge

OPTIONS = ForgeOptions(gateway_command=("/usr/bin/soulstone",))


def forge_into(codex_folder: Path, output: Path) -> tuple[list[str], list[str], list[str]]:
    units, _ = forge_units(load(codex_folder), OPTIONS)
    files = {output / unit.name: unit.text for unit in units}
    report = plan(files, {output})
    apply(files, report)
    return names(report.written), names(report.unchanged), names(report.removed)


def names(paths: list[Path]) -> list[str]:
    return sorted(p.name for p in paths)


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_second_forge_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "units"
    written, _, _ = forge_into(EXAMPLES, out)
    assert len(written) == 7
    before = snapshot(out)
    written, unchanged, removed = forge_into(EXAMPLES, out)
    assert (written, removed) == ([], [])
    assert len(unchanged) == 7
    assert snapshot(out) == before


def test_removed_soulstone_loses_its_unit_and_foreign_files_survive(tmp_path: Path) -> None:
    codex = write(
        tmp_path / "codex",
        {"a.toml": '[a]\nimage = "x/a"\nport = 1\n', "b.toml": '[b]\nimage = "x/b"\nport = 2\n'},
    )
    out = tmp_path / "units"
    forge_into(codex, out)
    foreign = {
        "mine.container": "[Container]\nImage=x\n",
        "soulstone-handmade.container": "[Container]\nImage=y\n",
    }
    write(out, foreign)
    (codex / "b.toml").unlink()
    written, _, removed = forge_into(codex, out)
    assert removed == ["soulstone-b.container"]
    assert "soulstone-a.container" in written  # its conflict with b is gone
    assert not (out / "soulstone-b.container").exists()
    for name, text in foreign.items():
        assert (out / name).read_text() == text
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_changed_soulstone_is_rewritten(tmp_path: Path) -> None:
    codex = write(tmp_path / "codex", {"a.toml": '[a]\nimage = "x/a"\nport = 1\n'})
    out = tmp_path / "units"
    forge_into(codex, out)
    write(codex, {"a.toml": '[a]\nimage = "x/a:2"\nport = 1\n'})
    written, _, _ = forge_into(codex, out)
    assert written == ["soulstone-a.container"]
    assert "Image=docker.io/x/a:2" in (out / "soulstone-a.container").read_text()
    assert written_by_forge(out / "soulstone-a.container")


def test_a_foreign_file_with_our_name_is_never_overwritten(tmp_path: Path) -> None:
    codex = write(tmp_path / "codex", {"a.toml": '[a]\nimage = "x/a"\nport = 1\n'})
    out = write(tmp_path / "units", {"soulstone-a.container": "# mine\n"})
    with pytest.raises(SoulstoneError, match="did not write"):
        forge_into(codex, out)
    assert (out / "soulstone-a.container").read_text() == "# mine\n"
    assert sorted(p.name for p in out.iterdir()) == ["soulstone-a.container"]
