"""`soulstone lora train`: check the data, fine-tune with PEFT, store and make hot (no restart)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from soulstone.cli.app import Session, guarded, session
from soulstone.cli.lora import adapter_names, gateway_for, store_adapter
from soulstone.errors import UsageError
from soulstone.lora.traindata import (
    CAPTURE_PREFIX,
    Example,
    capture_source,
    read_examples,
    write_examples,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from soulstone.codex.models import Codex, Soulstone
    from soulstone.lora.train import TrainerRun, TrainOptions

# `lora` registers this command beside `lora add`: what training needs (the trainer's
# runner, the codex's models, rich's progress bar) is imported only when `train` runs.
CANCELLED_EXIT = 130
DEFAULT_TARGETS = "q_proj,k_proj,v_proj,o_proj"  # TrainOptions().target_modules (a test checks)


def _emit(document: dict[str, Any]) -> None:
    typer.echo(orjson.dumps(document).decode())


def _base(codex: Codex, base: str, options: TrainOptions) -> Soulstone:
    soulstone = codex.get(base)
    if soulstone is None:
        raise UsageError(f"no soulstone named {base!r}")
    if soulstone.lora is None:
        raise UsageError(f"{soulstone.file}: [{soulstone.id}] lora: it takes no adapters; "
                         "give it a `lora` table")  # fmt: skip
    if options.rank > soulstone.lora.max_lora_rank:
        raise UsageError(f"--rank {options.rank} is above [{soulstone.id}]'s lora.max_lora_rank "
                         f"{soulstone.lora.max_lora_rank} ({soulstone.file})")  # fmt: skip
    return soulstone


def _examples(s: Session, data: str) -> tuple[str, list[Example]]:
    """Where the data comes from (for messages) and its checked examples."""
    if data.startswith(CAPTURE_PREFIX):
        path, since = capture_source(data, s.paths.data / "capture", time.time())
        return str(path), read_examples(path, since)
    return data, read_examples(Path(data))


def _progress(s: Session) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=s.err,
    )  # fmt: skip


def _run_trainer(s: Session, run: TrainerRun, where: str, as_json: bool,
                 timings: dict[str, float], began: float) -> dict[str, Any]:  # fmt: skip
    """Follow the trainer's events (a progress bar with the loss); its summary."""
    summary: dict[str, Any] = {"steps": 0, "first_loss": None, "loss": None}
    bar = None if as_json else _progress(s)
    with bar if bar is not None else contextlib.nullcontext():
        task = bar.add_task("checking", total=None, loss="-") if bar is not None else None
        trained_from = time.perf_counter()
        for event in run.events(where):
            if as_json:
                _emit(event)
            kind = event.get("event")
            if kind == "checked":
                trained_from = time.perf_counter()
                timings["check"] = trained_from - began
                summary["examples"] = event.get("examples")
                if bar is not None and task is not None:
                    bar.update(task, description="training")
            elif kind == "backend":
                summary["backend"] = event.get("name")
            elif kind == "step":
                loss = event.get("loss")
                summary["first_loss"] = summary["first_loss"] or loss
                summary["steps"], summary["loss"] = event.get("step"), loss
                if bar is not None and task is not None:
                    bar.update(task, total=event.get("steps"), completed=event.get("step"),
                               loss=f"{loss:.4f}" if isinstance(loss, float) else "-")  # fmt: skip
        timings["train"] = time.perf_counter() - trained_from
    return summary


def train(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The new adapter's name (what clients ask for).")],
    base: Annotated[str, typer.Option("--base", help="The soulstone whose model is trained.")],
    data: Annotated[str, typer.Option("--data", help="FILE.jsonl (OpenAI fine-tuning chat "
                                      "format) or capture:CLIENT[:SINCE].")],
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank.")] = 8,
    alpha: Annotated[float | None, typer.Option("--alpha", help="LoRA alpha (2 × rank).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the data.")] = 3,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 2e-4,
    max_steps: Annotated[int, typer.Option("--max-steps", min=0,
                                           help="Stop after this many steps (0: epochs).")] = 0,
    target_modules: Annotated[str, typer.Option("--target-modules",
                              help="Comma-separated layers to adapt.")] = DEFAULT_TARGETS,
    python: Annotated[Path | None, typer.Option("--python", help="The python to train with "
                      "(default: the engine's own, else this one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the trainer's events as JSON "
                                          "lines (no progress bar).")] = False,
) -> None:  # fmt: skip
    """Fine-tune a LoRA adapter with PEFT from chat examples; store it and make it hot.

    The data is checked first (each bad line named); training runs in a
    subprocess (Ctrl-C cancels it and stores nothing); the adapter is then
    validated, stored and loaded through the running gateway as `lora add`
    would, with no restart.
    """
    from soulstone.lora.adapter import check_name
    from soulstone.lora.train import (
        TrainerRun,
        TrainOptions,
        model_context,
        model_folder,
        trainer_command,
        trainer_environment,
        trainer_python,
        training_folder,
    )

    began = time.perf_counter()
    s = session(ctx)
    options = TrainOptions(rank, alpha if alpha is not None else 2.0 * rank, epochs, lr,
                           max_steps, tuple(m for m in target_modules.split(",") if m))  # fmt: skip
    codex = guarded(ctx, s.load)
    soulstone = guarded(ctx, lambda: _base(codex, base, options))
    guarded(ctx, lambda: check_name(name, codex, adapter_names(s)))
    model = guarded(ctx, lambda: model_folder(soulstone))
    timings: dict[str, float] = {}
    storing = False
    try:
        where, examples = guarded(ctx, lambda: _examples(s, data))
        with training_folder(s.paths.cache, name) as work:
            write_examples(examples, work / "data.jsonl")
            interpreter, engine_env = trainer_python(soulstone, python)
            command = trainer_command(interpreter, model, work / "data.jsonl", work / "adapter",
                                      options, model_context(soulstone, model))  # fmt: skip
            environment = trainer_environment(soulstone, engine_env, os.environ)
            run = guarded(ctx, lambda: TrainerRun(command, environment, work / "trainer.log"))
            if as_json:
                _emit({"event": "started", "pid": run.process.pid, "python": str(interpreter),
                       "examples": len(examples)})  # fmt: skip
            try:
                summary = guarded(ctx, lambda: _run_trainer(s, run, where, as_json, timings,
                                                            began))  # fmt: skip
            finally:
                run.close()
            stored_at, storing = time.perf_counter(), True
            record = guarded(ctx, lambda: store_adapter(s, codex, name, work / "adapter", base))
            timings["store"] = time.perf_counter() - stored_at
    except KeyboardInterrupt:
        if storing:  # one transaction: the adapter is stored whole or not at all
            s.err.print(f"cancelled while {name} was being stored: see `soulstone lora list`")
        else:
            s.err.print(f"cancelled: the training of {name} stopped; no adapter was stored")
        raise typer.Exit(CANCELLED_EXIT) from None
    state = _make_hot(ctx, s, name, timings)
    seconds = {k: round(v, 3) for k, v in timings.items()}
    if as_json:
        _emit({"event": "done", "name": name, "base": base, "state": state, "rank": record["rank"],
               "sha256": record["sha256"], **summary, "seconds": seconds})  # fmt: skip
        return
    s.out.print(
        f"trained {name} on [{base}]: {summary['steps']} steps, loss {summary['first_loss']} → "
        f"{summary['loss']}; stored, {state} (data check {timings['check']:.1f} s, training "
        f"{timings['train']:.1f} s, store {timings['store']:.1f} s"
        + (f", load {timings['load']:.1f} s)" if "load" in timings else ")"), markup=False,
        highlight=False,
    )  # fmt: skip


def _make_hot(ctx: typer.Context, s: Session, name: str, timings: dict[str, float]) -> str:
    """Load the stored adapter through the running gateway; its state (hot, or cold without)."""
    gateway = gateway_for(s)
    if gateway is None:
        return "cold (no gateway runs to make it hot)"
    began = time.perf_counter()
    guarded(ctx, lambda: gateway.call("POST", "/admin/lora/load", {"name": name}))
    timings["load"] = time.perf_counter() - began
    return "hot"
