"""`lora train`: the trainer subprocess (PEFT, in its own environment), its events, its cancel.

The trainer (trainer.py, a standalone script) runs in an environment that has
torch and peft: `--python`, else the engine's own (the python that runs its
exec, or the one beside its `vllm` command), else this one (the
`soulstone[train]` extra). The gateway's install never needs torch. It runs in
a session of its own, writes into a private temporary folder, and reports
JSON lines; cancelling stops its whole process group. Blocking throughout: the
CLI calls it, never the gateway's event loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from soulstone.codex.engines import option
from soulstone.codex.models import Soulstone
from soulstone.errors import SoulstoneError
from soulstone.files import tail_lines
from soulstone.lora.folders import private_folder
from soulstone.lora.traindata import TrainDataRefused
from soulstone.runtimes.process import engine_environment

TRAINER = Path(__file__).with_name("trainer.py")
REFUSED_EXIT = 3  # the trainer's exit code for data over the context (trainer.REFUSED_EXIT)
CANCEL_GRACE_S = 5.0


class TrainingFailed(SoulstoneError):
    """The trainer could not start, failed, or was stopped; the message says why."""


@dataclass(frozen=True)
class TrainOptions:
    """How to train: LoRA rank and alpha, epochs, learning rate, steps, target layers."""

    rank: int = 8
    alpha: float = 16.0
    epochs: int = 3
    lr: float = 2e-4
    max_steps: int = 0  # 0: epochs decide
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    batch_size: int = 4


def model_folder(soulstone: Soulstone) -> Path:
    """The soulstone's model as a Hugging Face folder (its `model_path`); TrainingFailed if none."""
    if soulstone.model_path is None:
        raise TrainingFailed(f"{soulstone.file}: [{soulstone.id}] model_path: training needs the "
                             "model's Hugging Face folder; set model_path")  # fmt: skip
    folder = Path(soulstone.model_path)
    if not (folder / "config.json").is_file():
        raise TrainingFailed(f"{soulstone.file}: [{soulstone.id}] model_path: {folder} is not a "
                             "Hugging Face model folder (no config.json)")  # fmt: skip
    return folder


def model_context(soulstone: Soulstone, folder: Path) -> int | None:
    """The engine's context in tokens: exec's `--max-model-len`, else the model's own."""
    given = option(soulstone.argv, "--max-model-len")
    if given is not None and given.isdigit():
        return int(given)
    try:
        config = orjson.loads((folder / "config.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    length = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return length if isinstance(length, int) and length > 0 else None


def engine_python(soulstone: Soulstone) -> Path | None:
    """The python of the engine's own environment, when its exec shows one on this host."""
    if soulstone.runtime != "process" or not soulstone.argv:
        return None
    program = shutil.which(soulstone.argv[0])
    if program is None:
        return None
    path = Path(program)
    if path.name.startswith("python"):
        return path
    beside = path.with_name("python")  # a console script (`vllm`) in a venv's bin folder
    return beside if beside.is_file() else None


def trainer_python(soulstone: Soulstone, given: Path | None) -> tuple[Path, bool]:
    """The python to train with, and whether it is the engine's (then in the engine's env)."""
    if given is not None:
        return given, False
    found = engine_python(soulstone)
    if found is not None:
        return found, True
    return Path(sys.executable), False


def trainer_command(python: Path, model: Path, data: Path, out: Path, options: TrainOptions,
                    max_length: int | None) -> list[str]:  # fmt: skip
    """The trainer's command line."""
    return [
        str(python), str(TRAINER), "--model", str(model), "--data", str(data), "--out", str(out),
        "--rank", str(options.rank), "--alpha", repr(options.alpha),
        "--epochs", str(options.epochs), "--lr", repr(options.lr),
        "--max-steps", str(options.max_steps), "--batch-size", str(options.batch_size),
        "--target-modules", ",".join(options.target_modules), "--max-length", str(max_length or 0),
    ]  # fmt: skip


def trainer_environment(soulstone: Soulstone, engine_env: bool,
                        base: Mapping[str, str]) -> dict[str, str]:  # fmt: skip
    """The trainer's environment: the engine's (with its `env`) when it uses the engine's python."""
    env = engine_environment(soulstone, base) if engine_env else {**base, "HF_HUB_OFFLINE": "1"}
    return env | {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def training_folder(cache: Path, name: str) -> Iterator[Path]:
    """A private temporary folder for one training (data, log, adapter), removed afterwards."""
    parent = private_folder(cache / "training")
    folder = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class TrainerRun:
    """One trainer subprocess, in a session of its own: its events as they come, and cancel."""

    def __init__(self, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as sink:
            try:
                self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sink,
                                                env=dict(env), start_new_session=True)  # fmt: skip
            except OSError as error:
                raise TrainingFailed(f"cannot run the trainer ({command[0]}): {error}") from None

    def events(self, data: str) -> Iterator[dict[str, Any]]:
        """Each event the trainer reports, until it saved the adapter.

        TrainDataRefused for an example over the context (naming `data` and
        its line); TrainingFailed when it fails or ends without saving.
        """
        stdout: IO[bytes] | None = self.process.stdout
        assert stdout is not None
        for raw in stdout:
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a library's own print: not ours
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind == "refused":
                self.process.wait()
                raise TrainDataRefused(f"{data}:{event.get('line')}: {event.get('message')}")
            if kind == "error":
                self.process.wait()
                raise TrainingFailed(f"the trainer failed: {event.get('message')}")
            yield event
            if kind == "saved":
                self.process.wait()
                return
        code = self.process.wait()
        detail = tail_lines(self.log, 15).strip()
        raise TrainingFailed(f"the trainer ended (exit {code}) without saving an adapter"
                             + (f":\n{detail}" if detail else ""))  # fmt: skip

    def cancel(self) -> None:
        """Stop the trainer's whole process group: TERM, then KILL after a grace period."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def close(self) -> None:
        """Cancel if still running, and close the pipe."""
        self.cancel()
        if self.process.stdout is not None:
            self.process.stdout.close()
