"""Hardware advice: warnings, never errors, from host and model-file facts."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from soulstone.codex.engines import TRAITS, exec_model, option
from soulstone.codex.facts import HostFacts, ModelFiles
from soulstone.codex.models import Soulstone
from soulstone.errors import Problem

_QUANT_NAMES = ("awq", "gptq", "gguf", "exl2", "bitsandbytes", "fp8", "marlin")
_QUANT_IN_NAME = re.compile(r"(?<![a-z0-9])(awq|gptq|gguf|exl2|bnb)(?![a-z0-9])", re.IGNORECASE)


def _has_flag(argv: Sequence[str], name: str) -> bool:
    return any(word == name or word.startswith(name + "=") for word in argv)


def _family(method: str) -> str:
    method = method.lower()
    if method in ("bnb", "bitsandbytes"):
        return "bitsandbytes"
    for name in _QUANT_NAMES:
        if method.startswith(name) or method.endswith(name):
            return name
    return method


def model_reference(soulstone: Soulstone) -> str | None:
    """The model a soulstone loads: `model_path`, else `model`, else the engine's model argument."""
    return soulstone.model_path or soulstone.model or exec_model(soulstone.argv)


def _model_quant(soulstone: Soulstone, files: ModelFiles | None) -> str | None:
    if files is not None and files.quant_method:
        return _family(files.quant_method)
    reference = model_reference(soulstone)
    if reference and (match := _QUANT_IN_NAME.search(reference)):
        return _family(match.group(1))
    return None


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def advise_one(soulstone: Soulstone, host: HostFacts, files: ModelFiles | None) -> list[Problem]:
    """Warnings for one soulstone on this host with these model files."""
    found: list[tuple[str, str]] = []
    argv = soulstone.argv
    flag_quant = option(argv, "--quantization", "-q")
    model_quant = _model_quant(soulstone, files)

    if soulstone.engine == "vllm" and not (
        _has_flag(argv, "--gpu-memory-utilization") or _has_flag(argv, "--kv-cache-memory-bytes")
    ):
        found.append(
            (
                "exec",
                "vLLM without --gpu-memory-utilization reserves 90% of the GPU "
                "memory, leaving none for other members of its group",
            )
        )
    wants_lora = soulstone.lora is not None or _has_flag(argv, "--enable-lora")
    bnb = "bitsandbytes" in (
        _family(flag_quant or ""),
        _family(option(argv, "--load-format") or ""),
        model_quant,
    )
    if soulstone.engine == "vllm" and wants_lora and bnb:
        found.append(
            (
                "lora",
                "vLLM ignores LoRA adapters on a bitsandbytes-quantized model: "
                "use an AWQ or GPTQ quantization instead",
            )
        )
    if soulstone.lora is not None and not TRAITS[soulstone.engine].runtime_lora:
        found.append(
            (
                "lora",
                f"soulstone loads adapters at run time through vLLM only; "
                f"{soulstone.engine} will not get them",
            )
        )
    if soulstone.engine == "sglang" and host.gpu_vendor != "nvidia":
        found.append(("engine", "SGLang needs an NVIDIA GPU, and this machine has none"))
    if (
        TRAITS[soulstone.engine].whole_model_in_vram
        and files is not None
        and host.gpu_memory_bytes is not None
        and files.weight_bytes > host.gpu_memory_bytes
    ):
        found.append(
            (
                "model_path",
                f"the weights ({_gib(files.weight_bytes)}) are larger than "
                f"the GPU memory ({_gib(host.gpu_memory_bytes)}), and {soulstone.engine} "
                "needs all of them in VRAM",
            )
        )
    if flag_quant and model_quant and _family(flag_quant) != model_quant:
        found.append(
            (
                "exec",
                f"--quantization {flag_quant} does not match the model files, "
                f"which are {model_quant}",
            )
        )
    exec_port = option(argv, "--port")
    if soulstone.port is not None and exec_port is not None and exec_port != str(soulstone.port):
        found.append(
            (
                "exec",
                f"exec passes --port {exec_port} but port = {soulstone.port}: "
                "the gateway will look for the engine on the wrong port",
            )
        )
    return [Problem(soulstone.file, soulstone.id, field, message) for field, message in found]


def advise(
    soulstones: Sequence[Soulstone], host: HostFacts, models: Mapping[str, ModelFiles]
) -> tuple[Problem, ...]:
    """Warnings for every soulstone; `models` maps model references to their files."""
    warnings: list[Problem] = []
    for soulstone in soulstones:
        reference = model_reference(soulstone)
        files = models.get(reference) if reference else None
        warnings += advise_one(soulstone, host, files)
    return tuple(warnings)
