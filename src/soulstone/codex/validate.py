"""Declarations to resolved soulstones, with every problem of the codex at once."""

from __future__ import annotations

from collections.abc import Sequence

from soulstone.codex.engines import (
    DEFAULT_HEALTH_INTERVAL,
    TRAITS,
    EngineName,
    infer_engine,
    lora_contradictions,
)
from soulstone.codex.facts import HostFacts
from soulstone.codex.fields import (
    ENV_NAME_RE,
    MODEL_RE,
    SOCKET_PATH_MAX,
    TAG_RE,
    split_exec,
    typed,
    unknown_keys,
    volume_problem,
)
from soulstone.codex.models import Health, Lora, RuntimeName, Soulstone, SoulstoneDecl, Warmup
from soulstone.codex.parse import NAME_RULE, Declaration, valid_name
from soulstone.codex.references import reference_problems
from soulstone.codex.remote_checks import (
    BUDGET_WARNING,
    REMOTE_START_TIMEOUT,
    literal_keys,
    local_problems,
    remote_problems,
)
from soulstone.errors import Problem

RESERVED_MODEL_PREFIX = "council/"


class _Collector:
    """Problems for one declaration, tagged with its file and table."""

    def __init__(self, declaration: Declaration) -> None:
        self.file = declaration.file
        self.table = declaration.id
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.mistyped: set[str] = set()

    def error(self, field: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.table, field, message))

    def warn(self, field: str, message: str) -> None:
        self.warnings.append(Problem(self.file, self.table, field, message))


def _unique(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _groups(decl: SoulstoneDecl, declaration: Declaration, out: _Collector) -> tuple[str, ...]:
    for group in decl.groups:
        if not valid_name(group):
            out.error("groups", f"malformed group {group!r}: use {NAME_RULE} characters")
    implied = [declaration.group] if declaration.group else []
    return _unique([*implied, *decl.groups])


def _tags(decl: SoulstoneDecl, out: _Collector) -> tuple[str, ...]:
    for tag in decl.capabilities:
        if TAG_RE.fullmatch(tag) is None:
            out.error("capabilities", f"malformed capability {tag!r}: use a short tag like 'ocr'")
    return _unique(decl.capabilities)


def _models(decl: SoulstoneDecl, name: str, out: _Collector) -> tuple[str, ...]:
    if decl.models is None:
        return (name,)
    if decl.models == "discover":
        return ()  # a remote's own list, read when the gateway probes it
    if not decl.models:
        out.error("models", "the list is empty: leave `models` out to serve the table's name")
    for model in decl.models:
        if MODEL_RE.fullmatch(model) is None:
            out.error("models", f"malformed model name {model!r}: no spaces or control characters")
        elif model.startswith(RESERVED_MODEL_PREFIX):
            out.error("models", f"model name {model!r}: the prefix 'council/' is reserved")
    seen: set[str] = set()
    for model in decl.models:
        if model in seen:
            out.error("models", f"model name {model!r} is listed twice")
        seen.add(model)
    return _unique(decl.models)


def _address(decl: SoulstoneDecl, out: _Collector) -> None:
    if decl.port is not None and decl.socket is not None:
        out.error("socket", "set either port (TCP) or socket (a Unix socket path), not both")
    if decl.port is None and decl.socket is None and not {"port", "socket"} & out.mistyped:
        out.error("port", "no address: set port (TCP) or socket (a Unix socket path)")
    if decl.socket is not None:
        if not decl.socket.startswith("/"):
            out.error("socket", f"{decl.socket!r} is not an absolute path")
        elif len(decl.socket.encode()) > SOCKET_PATH_MAX:
            out.error(
                "socket",
                f"the path is longer than {SOCKET_PATH_MAX} bytes, "
                "the limit of a Unix socket address",
            )
        if decl.port_expose:
            out.error("port_expose", "a soulstone on a Unix socket has no port to publish")


def _check_command(decl: SoulstoneDecl, argv: tuple[str, ...], out: _Collector) -> None:
    """The process runtime runs exec itself: it must be there and start with a program."""
    starts_with_option = bool(argv) and argv[0].startswith("-")
    if decl.image and decl.runtime is None:
        if decl.exec is None or starts_with_option:
            out.warn(
                "runtime",
                "without Podman here the runtime is 'process', but exec is not a whole "
                "command (the image's entrypoint would run it): this soulstone can run "
                "only where the podman or quadlet runtime is available",
            )
    elif decl.exec is None:
        out.error(
            "exec",
            "the process runtime needs exec: the command to run"
            if decl.image
            else "nothing to run: set exec (a command) or image (a container)",
        )
    elif starts_with_option:
        out.error(
            "exec",
            "the process runtime runs exec as a command, but it starts "
            f"with the option {argv[0]!r}: put the program first",
        )


def _runtime(
    decl: SoulstoneDecl, argv: tuple[str, ...], facts: HostFacts, out: _Collector
) -> RuntimeName:
    if decl.runtime is not None:
        runtime = decl.runtime
    elif decl.image:
        runtime = facts.container_runtime
    else:
        runtime = "process"
    if runtime in ("quadlet", "podman") and not decl.image:
        out.error("image", f"the {runtime} runtime runs a container: set image")
    if runtime == "process" and not {"image", "exec"} & out.mistyped:
        _check_command(decl, argv, out)
    return runtime


def _health(decl: SoulstoneDecl, engine: EngineName, out: _Collector) -> Health:
    traits = TRAITS[engine]
    path = decl.health.path or ("/health" if decl.remote is not None else traits.health_path)
    if not path.startswith("/"):
        out.error("health.path", f"{path!r} must start with '/'")
    start_timeout = REMOTE_START_TIMEOUT if decl.remote is not None else traits.start_timeout
    return Health(
        path=path,
        start_timeout=decl.health.start_timeout or start_timeout,
        interval=decl.health.interval or DEFAULT_HEALTH_INTERVAL,
    )


def _lora(decl: SoulstoneDecl, out: _Collector) -> Lora | None:
    if decl.lora is None:
        return None
    lora = decl.lora
    if lora.max_cpu_loras is not None and lora.max_cpu_loras < lora.max_loras:
        out.error(
            "lora.max_cpu_loras", f"{lora.max_cpu_loras} is less than max_loras ({lora.max_loras})"
        )
    return Lora(lora.max_loras, lora.max_lora_rank, lora.max_cpu_loras)


def _warmup(decl: SoulstoneDecl, out: _Collector) -> Warmup | None:
    if decl.warmup is None:
        return None
    if not decl.warmup.prompt.strip():
        out.error("warmup.prompt", "the prompt is empty: leave it out for the default")
    return Warmup(decl.warmup.prompt, decl.warmup.max_tokens)


def _sleep(decl: SoulstoneDecl, engine: EngineName, out: _Collector) -> bool:
    """`sleep = true` is vLLM's sleep mode: refused for any other engine."""
    if decl.sleep and engine != "vllm":
        out.error("sleep", f"sleep mode is vLLM's (--enable-sleep-mode, POST /sleep), but "
                  f"this soulstone's engine is {engine!r}: leave sleep out, or set "
                  'engine = "vllm"')  # fmt: skip
    return decl.sleep and engine == "vllm"


def _simple_fields(decl: SoulstoneDecl, out: _Collector) -> None:
    if decl.image is not None and (not decl.image or any(c.isspace() for c in decl.image)):
        out.error("image", f"malformed image reference {decl.image!r}")
    for volume in decl.volumes:
        if (message := volume_problem(volume)) is not None:
            out.error("volumes", message)
    for key in decl.env:
        if ENV_NAME_RE.fullmatch(key) is None:
            out.error("env", f"malformed variable name {key!r}")
    if any(not device for device in decl.devices or ()):
        out.error("devices", "a device may not be an empty string")
    if decl.model_path is not None and not decl.model_path:
        out.error("model_path", "the path is empty")


def resolve_one(declaration: Declaration, facts: HostFacts) -> tuple[Soulstone, _Collector]:
    """Resolve one declaration; problems and warnings are left in the collector."""
    out = _Collector(declaration)
    table, secrets = literal_keys(declaration.table)
    for field, message in secrets:
        out.error(field, message)
    known, unknown = unknown_keys(table)
    for field, message in unknown:
        out.error(field, message)
    decl, type_problems = typed(known)
    for field, message in type_problems:
        out.error(field, message)
        out.mistyped.add(field.split(".")[0])

    argv: tuple[str, ...] = ()
    if decl.exec is not None:
        argv, exec_problem = split_exec(decl.exec)
        if exec_problem:
            out.error("exec", exec_problem)
    remote = decl.remote is not None
    for field, message in remote_problems(decl) if remote else local_problems(decl):
        out.error(field, message)
    if remote and decl.tokenizer is None:
        out.warn("remote", BUDGET_WARNING)
    if not remote:
        _address(decl, out)
    _simple_fields(decl, out)
    engine = decl.engine or ("generic" if remote else infer_engine(decl.image, argv))
    soulstone = Soulstone(
        id=declaration.id,
        file=declaration.file,
        groups=_groups(decl, declaration, out),
        engine=engine,
        runtime="remote" if remote else _runtime(decl, argv, facts, out),
        argv=argv,
        models=_models(decl, declaration.id.rsplit(".", 1)[-1], out),
        health=_health(decl, engine, out),
        description=decl.description,
        image=decl.image,
        port=decl.port,
        socket=decl.socket,
        port_expose=decl.port_expose,
        model=decl.model,
        revision=decl.revision,
        model_path=decl.model_path,
        volumes=tuple(decl.volumes),
        env=tuple(decl.env.items()),
        devices=None if decl.devices is None else tuple(decl.devices),
        capabilities=_tags(decl, out),
        lora=_lora(decl, out),
        ttl=decl.ttl,
        tool_parser=decl.tool_parser,
        runtime_explicit=decl.runtime is not None,
        warmup=_warmup(decl, out),
        fallback=decl.fallback,
        remote=decl.remote,
        key_file=decl.key_file,
        key_env=decl.key_env,
        tokenizer=decl.tokenizer,
        discover=decl.models == "discover",
        sleep=_sleep(decl, engine, out),
    )
    for field, message in reference_problems(soulstone):
        out.error(field, message)
    for field, message in lora_contradictions(soulstone):
        out.warn(field, message)
    return soulstone, out


def _duplicates(soulstones: Sequence[Soulstone]) -> list[Problem]:
    """Ids, unit names, ports, sockets and model names that two soulstones share."""
    problems: list[Problem] = []
    owners: dict[tuple[str, object], Soulstone] = {}

    def claim(kind: str, value: object, field: str, soulstone: Soulstone, what: str) -> None:
        first = owners.setdefault((kind, value), soulstone)
        if first is not soulstone:
            problems.append(
                Problem(
                    soulstone.file,
                    soulstone.id,
                    field,
                    f"{what} is already taken by [{first.id}] in {first.file}",
                )
            )

    for s in soulstones:
        claim("id", s.id, "", s, f"the soulstone [{s.id}] is declared twice: it")
        if owners[("id", s.id)] is not s:
            continue
        claim("unit", s.unit, "", s, f"the unit name {s.unit}")
        if s.port is not None:
            claim("port", s.port, "port", s, f"port {s.port}")
        if s.socket is not None:
            claim("socket", s.socket, "socket", s, f"socket {s.socket}")
        for model in s.models:
            claim("model", model, "models", s, f"model name {model!r}")
    ids = {s.id: s for s in soulstones}
    for s in soulstones:
        for group in s.groups:
            if group in ids:
                problems.append(
                    Problem(
                        s.file,
                        s.id,
                        "groups",
                        f"group {group!r} has the name of the soulstone [{group}] in "
                        f"{ids[group].file}: `soulstone up {group}` would be ambiguous",
                    )
                )
    return problems


def _fallbacks(soulstones: Sequence[Soulstone]) -> list[Problem]:
    """Each `fallback` must name a model that another soulstone serves."""
    problems = []
    servers = {model: s for s in soulstones for model in s.models}
    for s in soulstones:
        if s.fallback is None:
            continue
        server = servers.get(s.fallback)
        if s.fallback in s.models:
            message = f"{s.fallback!r} is served by this soulstone itself: name another's model"
        elif server is None:
            message = f"no soulstone serves the model {s.fallback!r}; valid models: " + (
                ", ".join(sorted(servers)))  # fmt: skip
        else:
            continue
        problems.append(Problem(s.file, s.id, "fallback", message))
    return problems


def resolve(
    declarations: Sequence[Declaration], facts: HostFacts
) -> tuple[tuple[Soulstone, ...], tuple[Problem, ...], tuple[Problem, ...]]:
    """Resolve every declaration; return soulstones, problems and warnings."""
    soulstones: list[Soulstone] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for declaration in declarations:
        soulstone, out = resolve_one(declaration, facts)
        soulstones.append(soulstone)
        problems += out.problems
        warnings += out.warnings
    problems += _duplicates(soulstones)
    problems += _fallbacks(soulstones)
    return tuple(soulstones), tuple(problems), tuple(warnings)
