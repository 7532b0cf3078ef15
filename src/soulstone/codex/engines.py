"""Engine kinds: inference from image or command, and per-engine defaults."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from soulstone.codex.models import Soulstone

EngineName = Literal["vllm", "sglang", "llamacpp", "exllamav2", "tabbyapi", "generic"]
ENGINE_NAMES: tuple[EngineName, ...] = get_args(EngineName)


@dataclass(frozen=True)
class EngineTraits:
    """What soulstone knows of one engine family before it runs.

    `tokenize_path` and `metrics_path` are None where the engine has no such
    endpoint; `binds_all_interfaces` says the engine listens on 0.0.0.0 unless
    told `--host`, so soulstone passes `--host 127.0.0.1` itself.
    """

    health_path: str
    start_timeout: float
    gpu: bool
    whole_model_in_vram: bool
    runtime_lora: bool
    tokenize_path: str | None = None
    metrics_path: str | None = None
    port_option: bool = True
    binds_all_interfaces: bool = False


TRAITS: dict[EngineName, EngineTraits] = {
    "vllm": EngineTraits(
        "/health", 900.0, gpu=True, whole_model_in_vram=True, runtime_lora=True,
        tokenize_path="/tokenize", metrics_path="/metrics", binds_all_interfaces=True,
    ),
    "sglang": EngineTraits(
        "/health", 900.0, gpu=True, whole_model_in_vram=True, runtime_lora=False,
        metrics_path="/metrics",
    ),
    "llamacpp": EngineTraits(
        "/health", 300.0, gpu=True, whole_model_in_vram=False, runtime_lora=False,
        tokenize_path="/tokenize", metrics_path="/metrics",
    ),
    "exllamav2": EngineTraits(
        "/health", 600.0, gpu=True, whole_model_in_vram=True, runtime_lora=False,
        port_option=False,
    ),
    "tabbyapi": EngineTraits(
        "/health", 600.0, gpu=True, whole_model_in_vram=True, runtime_lora=False,
        tokenize_path="/v1/token/encode", port_option=False,
    ),
    "generic": EngineTraits(
        "/v1/models", 300.0, gpu=False, whole_model_in_vram=False, runtime_lora=False,
        port_option=False,
    ),
}  # fmt: skip

DEFAULT_HEALTH_INTERVAL = 2.0

# Substrings of an image reference, most specific first.
_IMAGE_HINTS: tuple[tuple[str, EngineName], ...] = (
    ("sglang", "sglang"),
    ("vllm", "vllm"),
    ("llama.cpp", "llamacpp"),
    ("llama-cpp", "llamacpp"),
    ("llama_cpp", "llamacpp"),
    ("llamacpp", "llamacpp"),
    ("tabby", "tabbyapi"),
    ("exllama", "exllamav2"),
)


def _from_argv(argv: tuple[str, ...]) -> EngineName | None:
    for word in argv:
        lowered = word.lower()
        base = os.path.basename(lowered)
        if base == "vllm" or lowered.startswith("vllm.entrypoints"):
            return "vllm"
        if base == "sglang" or lowered.startswith("sglang.launch_server"):
            return "sglang"
        if base == "llama-server" or lowered.startswith("llama_cpp.server"):
            return "llamacpp"
        if "tabbyapi" in lowered:
            return "tabbyapi"
        if "exllamav2" in lowered:
            return "exllamav2"
    return None


def infer_engine(image: str | None, argv: tuple[str, ...]) -> EngineName:
    """Guess the engine family from the image reference, else the command, else generic."""
    if image:
        lowered = image.lower()
        for hint, engine in _IMAGE_HINTS:
            if hint in lowered:
                return engine
    return _from_argv(argv) or "generic"


def without_options(argv: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """Drop `--name value` and `--name=value` options (for these names) from argv."""
    kept: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in names:
            skip = True
            continue
        if any(word.startswith(name + "=") for name in names):
            continue
        kept.append(word)
    return tuple(kept)


def socket_arguments(engine: EngineName, path: str) -> tuple[str, ...] | None:
    """The options that make this engine serve on a Unix socket, or None if it cannot."""
    if engine == "vllm":
        return ("--uds", path)
    if engine == "llamacpp":
        # llama-server treats a --host ending in .sock as a Unix socket path.
        return ("--host", path) if path.endswith(".sock") else None
    return None


def serve_on_socket(engine: EngineName, argv: tuple[str, ...], path: str) -> tuple[str, ...] | None:
    """argv rewritten to serve on the socket instead of a TCP port, or None if unsupported."""
    extra = socket_arguments(engine, path)
    if extra is None:
        return None
    return (*without_options(argv, ("--host", "--port", "--uds")), *extra)


def _has_option(argv: tuple[str, ...], name: str) -> bool:
    return any(word == name or word.startswith(name + "=") for word in argv)


def launch_argv(
    engine: EngineName, argv: tuple[str, ...], port: int | None, socket: str | None
) -> tuple[str, ...]:
    """The command that makes this engine listen where the codex says.

    A soulstone on a socket is rewritten to serve there (vLLM `--uds`,
    llama-server `--host PATH.sock`); one on a port gets `--port` when its
    exec has none and, for engines that would bind every interface,
    `--host 127.0.0.1`. Engines soulstone knows nothing about run unchanged.
    """
    if socket is not None:
        if _has_option(argv, "--uds") or (
            engine == "llamacpp" and socket in argv and _has_option(argv, "--host")
        ):
            return argv
        return serve_on_socket(engine, argv, socket) or argv
    traits = TRAITS[engine]
    extra: list[str] = []
    if port is not None and traits.port_option and not _has_option(argv, "--port"):
        extra += ["--port", str(port)]
    if traits.binds_all_interfaces and not _has_option(argv, "--host"):
        extra += ["--host", "127.0.0.1"]
    return (*argv, *extra)


def _alias_options(engine: EngineName, argv: tuple[str, ...]) -> tuple[str, ...]:
    """The options that name the served model (the first derived), or () where none is known."""
    if engine != "llamacpp":
        return ()
    if any(word.lower().startswith("llama_cpp.server") for word in argv):
        return ("--model_alias",)  # llama-cpp-python's server
    return ("--alias", "-a")


def alias_arguments(soulstone: Soulstone) -> tuple[str, ...]:
    """`--alias NAME` (the first served model name) for llama-server, else ().

    llama-server answers with the GGUF path as `model` unless told an alias.
    Nothing is derived when exec already names one (`--alias`, `-a`;
    `--model_alias` for llama-cpp-python), when `LLAMA_ARG_ALIAS` is in env,
    or when there is no exec (the image's own command then runs unchanged).
    """
    options = _alias_options(soulstone.engine, soulstone.argv)
    if not options or not soulstone.argv or not soulstone.models:
        return ()
    if any(key == "LLAMA_ARG_ALIAS" for key, _ in soulstone.env):
        return ()
    if any(_has_option(soulstone.argv, option) for option in options):
        return ()
    return (options[0], soulstone.models[0])


def metrics_arguments(soulstone: Soulstone) -> tuple[str, ...]:
    """`--metrics` for llama-server (its Prometheus endpoint is off by default), else ().

    Nothing is derived when exec already has it, when `LLAMA_ARG_ENDPOINT_METRICS`
    is in env, for llama-cpp-python's server, or when there is no exec.
    """
    argv = soulstone.argv
    if soulstone.engine != "llamacpp" or not argv or "--metrics" in argv:
        return ()
    if any(word.lower().startswith("llama_cpp.server") for word in argv):
        return ()
    if any(key == "LLAMA_ARG_ENDPOINT_METRICS" for key, _ in soulstone.env):
        return ()
    return ("--metrics",)


MODEL_PLACEHOLDER = "{model_path}"
# The option that hands an engine its model folder, where soulstone knows one.
MODEL_OPTIONS: dict[EngineName, str] = {"vllm": "--model", "sglang": "--model-path"}
_MODEL_FLAGS = ("--model", "--model-path", "-m")
_SERVED_NAME_OPTION = "--served-model-name"


def exec_model(argv: tuple[str, ...]) -> str | None:
    """The model a command names itself (`vllm serve MODEL`, `--model`, `--model-path`, `-m`).

    Python's own `-m MODULE` (`python -m vllm.entrypoints.openai.api_server`) is not a model.
    """
    if argv and os.path.basename(argv[0]).startswith("python") and "-m" in argv:
        argv = argv[argv.index("-m") + 2 :]
    if "serve" in argv:
        following = argv[argv.index("serve") + 1 : argv.index("serve") + 2]
        if following and not following[0].startswith("-"):
            return following[0]
    return option(argv, *_MODEL_FLAGS)


def option(argv: Sequence[str], *names: str) -> str | None:
    """Value of the last `--name value` or `--name=value` option in argv, else None."""
    found: str | None = None
    for i, word in enumerate(argv):
        for name in names:
            if word == name and i + 1 < len(argv):
                found = argv[i + 1]
            elif word.startswith(name + "="):
                found = word.split("=", 1)[1]
    return found


def with_model_path(argv: tuple[str, ...], model_path: str | None) -> tuple[str, ...]:
    """argv with every `{model_path}` replaced by the model folder (unchanged when None)."""
    if model_path is None:
        return argv
    return tuple(word.replace(MODEL_PLACEHOLDER, model_path) for word in argv)


def model_arguments(soulstone: Soulstone) -> tuple[str, ...]:
    """What a soulstone with a Hugging Face `model` adds: the snapshot folder, the served names.

    Only once the model is resolved (`model_path` set by the pre-start checks).
    The folder goes to vLLM as `--model`, to SGLang as `--model-path`, unless
    exec holds `{model_path}`; `--served-model-name` (vLLM: every served name,
    SGLang: the first) is added unless exec has it, since the engine would
    otherwise answer to the folder's path.
    """
    if soulstone.model is None or soulstone.model_path is None or not soulstone.argv:
        return ()
    extra: list[str] = []
    option = MODEL_OPTIONS.get(soulstone.engine)
    placed = any(MODEL_PLACEHOLDER in word for word in soulstone.argv)
    if option is not None and not placed and exec_model(soulstone.argv) is None:
        extra += [option, soulstone.model_path]
    if option is not None and not _has_option(soulstone.argv, _SERVED_NAME_OPTION):
        names = soulstone.models if soulstone.engine == "vllm" else soulstone.models[:1]
        extra += [_SERVED_NAME_OPTION, *names]
    return tuple(extra)


# What a vLLM soulstone's `lora` table means to vLLM (SPEC C7): the user writes it once.
LORA_FLAG = "--enable-lora"
LORA_FLAG_OFF = "--no-enable-lora"
LORA_OPTIONS = ("--max-loras", "--max-lora-rank", "--max-cpu-loras")
LORA_UPDATING = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
VLLM_TRUE = ("1", "true")  # how vLLM reads a boolean variable (case-insensitive)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM 0.x accepts


def derives_lora(soulstone: Soulstone) -> bool:
    """True when soulstone derives the LoRA flags and variable: vLLM with a `lora` table."""
    return soulstone.engine == "vllm" and soulstone.lora is not None


def lora_values(soulstone: Soulstone) -> dict[str, str]:
    """The `lora` table as vLLM options (`--max-loras` -> "2" ...), or {} when none is derived."""
    lora = soulstone.lora
    if lora is None or not derives_lora(soulstone):
        return {}
    values = {"--max-loras": str(lora.max_loras), "--max-lora-rank": str(lora.max_lora_rank)}
    if lora.max_cpu_loras is not None:
        values["--max-cpu-loras"] = str(lora.max_cpu_loras)
    return values


def lora_arguments(soulstone: Soulstone) -> tuple[str, ...]:
    """`--enable-lora --max-loras N --max-lora-rank R [--max-cpu-loras C]`, else ().

    Derived for a vLLM soulstone with a `lora` table and an exec (with no
    exec the image's own command runs unchanged).
    """
    if not soulstone.argv or not derives_lora(soulstone):
        return ()
    pairs = [word for pair in lora_values(soulstone).items() for word in pair]
    return (LORA_FLAG, *pairs)


def lora_environment(soulstone: Soulstone) -> tuple[tuple[str, str], ...]:
    """`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` for a vLLM soulstone with a `lora` table."""
    return ((LORA_UPDATING, "True"),) if derives_lora(soulstone) else ()


# vLLM's sleep mode (`sleep = true`): the flag, and the variable that serves /sleep and /wake_up.
SLEEP_FLAG = "--enable-sleep-mode"
SLEEP_ENDPOINTS = "VLLM_SERVER_DEV_MODE"


def sleep_arguments(soulstone: Soulstone) -> tuple[str, ...]:
    """`--enable-sleep-mode` for a vLLM soulstone with `sleep = true` and an exec, else ().

    Nothing is derived when exec already has it, or when there is no exec
    (the image's own command then runs unchanged).
    """
    if not soulstone.sleep or soulstone.engine != "vllm" or not soulstone.argv:
        return ()
    return () if SLEEP_FLAG in soulstone.argv else (SLEEP_FLAG,)


def sleep_environment(soulstone: Soulstone) -> tuple[tuple[str, str], ...]:
    """`VLLM_SERVER_DEV_MODE=1` for a vLLM soulstone with `sleep = true`.

    vLLM serves POST /sleep, POST /wake_up and GET /is_sleeping only in its
    development mode (checked in vLLM 0.32's api_server routers).
    """
    return ((SLEEP_ENDPOINTS, "1"),) if soulstone.sleep and soulstone.engine == "vllm" else ()


def engine_env(soulstone: Soulstone) -> tuple[tuple[str, str], ...]:
    """The codex's `env` with the derived variables set over it (the derived values win)."""
    merged = dict(soulstone.env)
    merged.update(lora_environment(soulstone))
    merged.update(sleep_environment(soulstone))
    return tuple(merged.items())


def kept_argv(soulstone: Soulstone) -> tuple[str, ...]:
    """exec without the options soulstone derives itself (the LoRA ones), so its values win."""
    if not lora_arguments(soulstone):
        return soulstone.argv
    flags = tuple(word for word in soulstone.argv if word not in (LORA_FLAG, LORA_FLAG_OFF))
    return without_options(flags, LORA_OPTIONS)


def lora_contradictions(soulstone: Soulstone) -> list[tuple[str, str]]:
    """(field, message) for each LoRA setting exec or env gives that the `lora` table overrides."""
    if not derives_lora(soulstone):
        return []
    found: list[tuple[str, str]] = []
    derived = " (soulstone derives it from the `lora` table, and the derived value wins)"
    if soulstone.argv and LORA_FLAG_OFF in soulstone.argv:
        found.append(("exec", f"exec passes {LORA_FLAG_OFF}, but the `lora` table turns "
                      f"LoRA on{derived}"))  # fmt: skip
    for name, value in lora_values(soulstone).items():
        given = option(soulstone.argv, name)
        if given is not None and given != value:
            found.append(("exec", f"exec passes {name} {given}, but the `lora` table means "
                          f"{name} {value}{derived}"))  # fmt: skip
    given_env = dict(soulstone.env).get(LORA_UPDATING)
    if given_env is not None and given_env.strip().lower() not in VLLM_TRUE:
        found.append(("env", f"env sets {LORA_UPDATING}={given_env}, but adapters are loaded "
                      f"at run time, which needs {LORA_UPDATING}=True{derived}"))  # fmt: skip
    assert soulstone.lora is not None
    if soulstone.lora.max_lora_rank not in VLLM_LORA_RANKS:
        found.append(("lora.max_lora_rank", f"vLLM accepts a max_lora_rank of "
                      f"{', '.join(map(str, VLLM_LORA_RANKS))} only; it will refuse to start "
                      f"with {soulstone.lora.max_lora_rank}"))  # fmt: skip
    return found


def derived_arguments(soulstone: Soulstone) -> tuple[str, ...]:
    """What soulstone adds to an engine's exec: served names, metrics, model folder, LoRA, sleep."""
    return (*alias_arguments(soulstone), *metrics_arguments(soulstone),
            *model_arguments(soulstone), *lora_arguments(soulstone),
            *sleep_arguments(soulstone))  # fmt: skip


def served_argv(soulstone: Soulstone) -> tuple[str, ...]:
    """The command the process runtime runs: `launch_argv` plus the derived arguments.

    `{model_path}` in exec becomes the soulstone's model folder (its
    `model_path`, or the snapshot its `model` resolved to); LoRA options in
    exec give way to the derived ones.
    """
    own = with_model_path(kept_argv(soulstone), soulstone.model_path)
    argv = launch_argv(soulstone.engine, own, soulstone.port, soulstone.socket)
    return (*argv, *derived_arguments(soulstone))
