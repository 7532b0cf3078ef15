"""The top-level commands load lazily: `--help` imports none of them, and the table is true."""

from __future__ import annotations

import importlib
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


def test_help_imports_no_command_module_and_no_pydantic() -> None:
    probe = (
        "import sys\n"
        "from soulstone.cli.app import app\n"
        "try:\n"
        "    app(['--help'], prog_name='soulstone')\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('soulstone.cli.') "
        "and m != 'soulstone.cli.app')\n"
        "print(loaded, 'pydantic' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "│ status " in result.stdout and "│ lora " in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[] False"


def test_lora_trains_the_default_layers_its_help_shows() -> None:
    from soulstone.cli.lora_train import DEFAULT_TARGETS
    from soulstone.lora.train import TrainOptions

    assert ",".join(TrainOptions().target_modules) == DEFAULT_TARGETS
