"""`soulstone models [--json]`, `models pull NAME`, `models verify [NAME]` (SPEC C10).

huggingface_hub is imported by the artifacts functions these commands call,
never when the CLI starts.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from soulstone.artifacts.cache import hub_cache
from soulstone.artifacts.checks import human_size, short
from soulstone.artifacts.inventory import Report, needs, report
from soulstone.cli.app import Session, guarded, session
from soulstone.codex.models import Codex
from soulstone.codex.references import repo_id_problem
from soulstone.errors import CodexError, ModelError, UsageError

models_app = typer.Typer(
    help="Model artifacts: what the codex needs and what the Hugging Face cache holds.",
    invoke_without_command=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
Reference = tuple[str, str | None]


def _print_json(document: object) -> None:
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def _error(s: Session, message: str) -> None:
    s.err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _cache() -> Path:
    return hub_cache(os.environ)


def _table(reports: list[Report]) -> Table:
    table = Table(title="models", title_justify="left")
    for column in ("model", "revision", "commit", "state", "size", "soulstones"):
        table.add_column(column, overflow="fold")
    for r in reports:
        state = Text("present", style="green") if r.present else Text("missing", style="red")
        if r.present and r.problem:
            state = Text("damaged", style="bold red")
        table.add_row(Text(r.need.model, style="bold"), r.need.revision or "",
                      short(r.commit) if r.commit else "", state,
                      human_size(r.size) if r.size is not None else "",
                      ", ".join(r.need.soulstones))  # fmt: skip
    return table


@models_app.callback()
def models(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the models the codex needs: present or missing, size, revision, soulstones.

    Exit 1 when one is missing or fails the pre-start checks.
    """
    if ctx.invoked_subcommand is not None:
        return
    s = session(ctx)
    codex = guarded(ctx, s.load)
    cache = _cache()
    reports = guarded(ctx, lambda: [report(need, cache) for need in needs(codex)])
    if as_json:
        _print_json({"cache": str(cache), "models": [r.summary() for r in reports]})
    else:
        s.out.print(f"Hugging Face cache: {cache}", highlight=False)
        s.out.print(_table(reports))
        for r in reports:
            if r.problem:
                _error(s, r.problem)
    if any(r.problem for r in reports):
        raise typer.Exit(1)


def _codex_if_any(s: Session) -> Codex | None:
    try:
        return s.load()
    except (CodexError, UsageError):
        return None


def _references(codex: Codex | None, name: str, revision: str | None) -> list[Reference]:
    """What NAME means: a soulstone's model, or a repo id (with the revisions the codex pins)."""
    soulstone = codex.get(name) if codex is not None else None
    if soulstone is not None:
        if soulstone.model is None:
            raise UsageError(f"[{name}] in {soulstone.file} has no `model` (a Hugging Face "
                             "repo id) to pull or verify")  # fmt: skip
        return [(soulstone.model, revision or soulstone.revision)]
    if repo_id_problem(name) is not None:
        raise UsageError(f"{name!r} is neither a soulstone id of the codex nor a Hugging Face "
                         "repo id (org/name)")  # fmt: skip
    if revision is not None:
        return [(name, revision)]
    pinned = {s.revision for s in codex.soulstones if s.model == name} if codex else set()
    return [(name, pin) for pin in sorted(pinned, key=lambda p: p or "")] or [(name, None)]


def _byte_bar(s: Session) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    DownloadColumn(binary_units=True), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=s.err)  # fmt: skip


@models_app.command("pull")
def pull_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A repo id (org/name) or a soulstone id.")],
    revision: Annotated[str | None, typer.Option("--revision", help="A commit, tag or branch "
                                                 "(default: the codex's pin, else main).")] = None,
) -> None:  # fmt: skip
    """Download a model into the Hugging Face cache, with a progress bar.

    Refused, saying why, without a network or without room for the model plus 20 %.
    """
    from soulstone.artifacts.pull import plan_pull, pull

    s = session(ctx)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # no telemetry from our pulls
    codex = guarded(ctx, s.load) if "/" not in name else _codex_if_any(s)
    cache = _cache()
    for repo, pin in guarded(ctx, lambda: _references(codex, name, revision)):
        plan = guarded(ctx, partial(plan_pull, cache, repo, pin))
        cached = len(plan.files) - len(plan.to_fetch)
        s.err.print(f"{repo} {plan.revision} = {short(plan.commit)}: {len(plan.files)} files, "
                    f"{human_size(plan.download_bytes)} to download ({cached} cached)",
                    highlight=False)  # fmt: skip
        with _byte_bar(s) as bar:
            task = bar.add_task(f"pulling {repo}", total=plan.download_bytes)
            folder = guarded(ctx, partial(pull, plan, cache, partial(bar.advance, task)))
        s.out.print(f"{repo} {short(plan.commit)} is in {folder}", highlight=False)


def _verify_one(s: Session, cache: Path, repo: str, pin: str | None) -> dict[str, object]:
    from soulstone.artifacts.verify import snapshot_bytes, verify_model

    try:
        total = snapshot_bytes(cache, repo, pin)
        with _byte_bar(s) as bar:
            task = bar.add_task(f"hashing {repo}", total=total)
            verdict = verify_model(cache, repo, pin, partial(bar.advance, task))
    except ModelError as error:
        _error(s, str(error))
        return {"model": repo, "commit": None, "ok": False, "problems": [str(error)], "blobs": []}
    for line in verdict.messages():
        _error(s, line)
    if verdict.ok:
        unchecked = sum(1 for b in verdict.blobs if b.kind == "unchecked")
        note = f" ({unchecked} blob(s) with no hash in their name)" if unchecked else ""
        s.out.print(f"{repo} {short(verdict.commit)}: {len(verdict.blobs)} files intact{note}",
                    highlight=False)  # fmt: skip
    return verdict.summary()


@models_app.command("verify")
def verify_command(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="A repo id or soulstone id (default: every "
                                               "model of the codex).")] = None,
    as_json: JsonOption = False,
) -> None:  # fmt: skip
    """Hash every file of a cached model against the hash its blob's name promises.

    Exit 1 when a file differs, or a model is missing or fails the quick checks.
    """
    s = session(ctx)
    codex = guarded(ctx, s.load) if name is None or "/" not in name else _codex_if_any(s)
    cache = _cache()
    if name is None:
        assert codex is not None
        references = [(n.model, n.revision) for n in needs(codex) if n.source == "hub"]
    else:
        references = guarded(ctx, lambda: _references(codex, name, None))
    results = [guarded(ctx, partial(_verify_one, s, cache, *r)) for r in references]
    if as_json:
        _print_json({"cache": str(cache), "models": results})
    if not all(result["ok"] for result in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the command group of this module to the application."""
    app.add_typer(models_app, name="models")
