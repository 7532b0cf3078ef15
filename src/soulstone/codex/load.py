"""Read the codex from disk: find the files, parse, validate, advise."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import orjson

from soulstone.codex.advice import advise, model_reference
from soulstone.codex.conflicts import conflict_pairs
from soulstone.codex.facts import HostFacts, ModelFiles
from soulstone.codex.models import Codex, Soulstone
from soulstone.codex.parse import Declaration, parse_text
from soulstone.codex.validate import resolve
from soulstone.errors import CodexError, Problem, UsageError
from soulstone.paths import Paths

CODEX_ENV = "SOULSTONE_CODEX"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")

ModelReader = Callable[[str], ModelFiles | None]


def codex_sources(
    given: Sequence[Path], env: Mapping[str, str], paths: Paths
) -> tuple[list[Path], bool]:
    """Where the codex comes from: `--codex`, else $SOULSTONE_CODEX, else the XDG folder.

    The flag says whether the sources were named by the user (True) or defaulted.
    """
    if given:
        return list(given), True
    if env.get(CODEX_ENV):
        return [Path(p) for p in env[CODEX_ENV].split(os.pathsep) if p], True
    return [paths.codex], False


def codex_files(sources: Sequence[Path], named: bool) -> list[Path]:
    """The `*.toml` files of the sources, each once, folders listed in name order."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(
                p for p in source.iterdir() if p.suffix == ".toml" and not p.name.startswith(".")
            )
        elif source.is_file():
            files.append(source)
        elif named:
            raise UsageError(f"codex path {source} does not exist")
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.resolve(), file)
    if not unique:
        where = ", ".join(str(s) for s in sources)
        raise CodexError(
            (
                Problem(
                    where,
                    "",
                    "",
                    "no codex files (*.toml) found: run `soulstone init` or pass --codex PATH",
                ),
            )
        )
    return list(unique.values())


def read_model_files(reference: str) -> ModelFiles | None:
    """Weight size and quantization of a local model path, or None when it is not local."""
    path = Path(reference)
    if not path.is_absolute():
        return None
    try:
        if path.is_file():
            return ModelFiles(
                weight_bytes=path.stat().st_size,
                quant_method="gguf" if path.suffix == ".gguf" else None,
            )
        if not path.is_dir():
            return None
        size = sum(
            p.stat().st_size for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()
        )
        method = None
        config = path / "config.json"
        if config.is_file():
            quant = orjson.loads(config.read_bytes()).get("quantization_config") or {}
            method = quant.get("quant_method") if isinstance(quant, dict) else None
        return ModelFiles(
            weight_bytes=size, quant_method=method if isinstance(method, str) else None
        )
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None


def _has_template(folder: Path) -> bool:
    """Whether a tokenizer folder has a chat template (its own file, or in a JSON config)."""
    if (folder / "chat_template.jinja").is_file():
        return True
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            found = orjson.loads((folder / name).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(found, dict) and found.get("chat_template"):
            return True
    return False


def tokenizer_libraries_missing() -> list[str]:
    """The libraries of the `tokenizer` extra (tokenizers, jinja2) that are not installed."""
    return [n for n in ("tokenizers", "jinja2") if importlib.util.find_spec(n) is None]


def tokenizer_problems(soulstones: Sequence[Soulstone]) -> tuple[list[Problem], list[Problem]]:
    """Errors and warnings about remotes' `tokenizer` folders and the libraries that read them."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    missing = tokenizer_libraries_missing() if any(s.tokenizer for s in soulstones) else []
    for s in soulstones:
        if s.remote is None or s.tokenizer is None or not s.tokenizer.startswith(("/", "~/")):
            continue  # none declared, or an error of its own (relative, or not a remote)
        folder = Path(s.tokenizer).expanduser()
        if not folder.is_dir():
            problems.append(Problem(s.file, s.id, "tokenizer", f"{folder} is not a folder"))
        elif not (folder / "tokenizer.json").is_file():
            message = f"{folder} holds no tokenizer.json (the Hugging Face tokenizer file)"
            problems.append(Problem(s.file, s.id, "tokenizer", message))
        elif missing:
            warnings.append(Problem(s.file, s.id, "tokenizer", (
                f"{' and '.join(missing)} not installed (pip install 'soulstone[tokenizer]'): "
                "prompts are counted by the remote's POST /tokenize; where it has none, "
                "context budgets are the remote's")))  # fmt: skip
        elif not _has_template(folder):
            warnings.append(Problem(s.file, s.id, "tokenizer", (
                f"{folder} has no chat template: chat prompts are counted by an estimate "
                "(each message as a 'role: text' line)")))  # fmt: skip
    return problems, warnings


def read_toml_text(file: Path) -> str | Problem:
    """A declaration file's text, or the Problem that it is unreadable or not UTF-8."""
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        return Problem(str(file), "", "", f"not UTF-8 text: {error.reason} at byte {error.start}")
    except OSError as error:
        return Problem(str(file), "", "", f"cannot read: {error.strerror}")


def _read(file: Path) -> tuple[list[Declaration], list[Problem]]:
    text = read_toml_text(file)
    if isinstance(text, Problem):
        return [], [text]
    return parse_text(text, str(file))


def load_files(
    files: Sequence[Path], host: HostFacts, read_models: ModelReader = read_model_files
) -> Codex:
    """Parse and validate these files as one codex; raise CodexError with every problem."""
    declarations: list[Declaration] = []
    problems: list[Problem] = []
    for file in files:
        found, file_problems = _read(file)
        declarations += found
        problems += file_problems
    soulstones, resolve_problems, warnings = resolve(declarations, host)
    problems += resolve_problems
    tokenizer_errors, tokenizer_warnings = tokenizer_problems(soulstones)
    problems += tokenizer_errors
    warnings += tuple(tokenizer_warnings)
    references = {ref for s in soulstones if (ref := model_reference(s))}
    models = {ref: info for ref in sorted(references) if (info := read_models(ref))}
    warnings += advise(soulstones, host, models)
    if problems:
        raise CodexError(tuple(sorted(problems)), tuple(sorted(warnings)))
    ordered = tuple(sorted(soulstones, key=lambda s: s.id))
    return Codex(ordered, conflict_pairs(ordered), tuple(sorted(warnings)))


def load_codex(
    sources: Sequence[Path],
    host: HostFacts,
    *,
    named: bool = True,
    read_models: ModelReader = read_model_files,
) -> Codex:
    """Load the codex from files and folders; raise CodexError or UsageError."""
    return load_files(codex_files(sources, named), host, read_models)
