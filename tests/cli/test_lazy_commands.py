"""The top-level commands load lazily: `--help` imports none of them, and the table is true."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import typer

from soulstone.cli.app import COMMANDS, load_command


def test_the_table_names_every_command_each_module_registers_with_its_own_help() -> None:
    registered: dict[str, str] = {}
    for module in {entry.module for entry in COMMANDS.values()}:
        app = typer.Typer()
        importlib.import_module(f"soulstone.cli.{module}").register(app)
        for name in typer.main.get_group(app).commands:
            registered[name] = module
    assert registered == {name: entry.module for name, entry in COMMANDS.items()}
    for name, entry in COMMANDS.items():
        command = load_command(name)
        text = command.short_help or command.help or ""
        first = " ".join(text.split("\n\n")[0].split())
        assert entry.help == first, name


def test_help_imports_no_command_module_no_pydantic_and_no_rich_help() -> None:
    probe = (
        "import sys\n"
        "from soulstone.cli.app import app\n"
        "try:\n"
        "    app(['--help'], prog_name='soulstone')\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('soulstone.cli.') "
        "and m not in ('soulstone.cli.app', 'soulstone.cli.top_help'))\n"
        "heavy = sorted(m for m in ('pydantic', 'typer.rich_utils', 'rich.markdown') "
        "if m in sys.modules)\n"
        "print(loaded, heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "│ status " in result.stdout and "│ lora " in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[] []"


def test_the_top_help_lists_options_and_commands_in_boxes_of_the_asked_width() -> None:
    env = {**os.environ, "COLUMNS": "72"}
    shown = subprocess.run([sys.executable, "-m", "soulstone", "--help"], capture_output=True,
                           text=True, timeout=60, check=False, env=env)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    boxed = [line for line in shown.stdout.splitlines() if line and line[0] in "╭│╰"]
    assert boxed and {len(line) for line in boxed} == {72}
    assert shown.stdout.count("╭─ Options ") == 1 and shown.stdout.count("╭─ Commands ") == 1
    assert "│ --codex    PATH  A codex file" in shown.stdout
    for name in COMMANDS:
        assert f"│ {name} " in shown.stdout, name
    bare = subprocess.run([sys.executable, "-m", "soulstone"], capture_output=True, text=True,
                          timeout=60, check=False, env=env)  # fmt: skip
    assert bare.returncode == 2 and bare.stdout == shown.stdout


def test_lora_trains_the_default_layers_its_help_shows() -> None:
    from soulstone.cli.lora_train import DEFAULT_TARGETS
    from soulstone.lora.train import TrainOptions

    assert ",".join(TrainOptions().target_modules) == DEFAULT_TARGETS
