"""Helm values for vLLM's production-stack chart (`vllm-stack`): its router fronts the fleet (pure).

The chart's router, with static service discovery, routes each model name to
the Service of the soulstone that serves it (`routerSpec.staticBackends` and
`routerSpec.staticModels`, equally long comma-separated lists). The chart's
own engines (`servingEngineSpec`) stay off: the engines are the forge's
Deployments, whatever their engine family.
"""

from __future__ import annotations

from collections.abc import Sequence

from soulstone.codex.engines import exec_model
from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import Problem, SoulstoneError
from soulstone.forge.kube import (
    KubeFile,
    backend_url,
    fleet,
    forge_manifests,
    gpu_count,
    kube_name,
)
from soulstone.forge.units import MARKER, qualified_image
from soulstone.forge.yaml_text import Noted, comments, document

VALUES_FILE = "helm/vllm-stack-values.yaml"
CHART_REPOSITORY = "https://vllm-project.github.io/production-stack"
# The chart writes staticModels inside a double-quoted YAML string, split at commas.
_UNROUTABLE = (",", '"', "\\")
OUTSIDE = "LoadBalancer or NodePort to reach the router from outside the cluster"


def routes(members: Sequence[Soulstone]) -> tuple[list[tuple[str, str]], list[Problem]]:
    """(model name, backend URL) for every model the fleet serves, sorted by name.

    A name the chart cannot carry in its comma-separated list is left out, with a warning.
    """
    found: list[tuple[str, str]] = []
    warnings: list[Problem] = []
    for soulstone in members:
        for model in soulstone.models:
            if any(char in model for char in _UNROUTABLE):
                warnings.append(Problem(soulstone.file, soulstone.id, "models", (
                    f"{model!r}: the router's staticModels is a comma-separated list in "
                    "quotes, so this name is not routed (rename it)")))  # fmt: skip
                continue
            found.append((model, backend_url(soulstone)))
    return sorted(found), warnings


def image_parts(image: str) -> tuple[str, str]:
    """(repository, tag) of an image reference, the tag `latest` when none is given."""
    qualified = qualified_image(image).split("@", 1)[0]
    name, colon, tag = qualified.rpartition(":")
    if colon and "/" not in tag:
        return name, tag
    return qualified, "latest"


def _chart_engine_hint(soulstone: Soulstone) -> str:
    """A one-line modelSpec entry for running a vLLM soulstone as one of the chart's engines."""
    assert soulstone.image is not None
    repository, tag = image_parts(soulstone.image)
    url = exec_model(soulstone.argv) or soulstone.model or "<the model's Hugging Face name>"
    return (f"{soulstone.id}: {{name: {kube_name(soulstone)}, repository: {repository}, "
            f"tag: {tag}, modelURL: {url}, requestCPU: <cpus>, requestMemory: <memory>, "
            f"requestGPU: {max(1, gpu_count(soulstone))}}}")  # fmt: skip


def _header(
    codex: Codex, models: Sequence[tuple[str, str]], skipped: Sequence[Problem]
) -> list[str]:
    lines = [
        "Helm values for vLLM's production-stack chart: its router is the fleet's front door",
        "(one OpenAI-compatible endpoint; it routes each model name to its soulstone's Service).",
        f"  helm repo add vllm {CHART_REPOSITORY}",
        "  kubectl apply -f DIR   (the soulstone-*.yaml manifests next to the helm folder)",
        f"  helm install soulstone-router vllm/vllm-stack -f DIR/{VALUES_FILE}",
        "Install it in the namespace of the manifests: the backends are short Service names.",
        "Fill in: routerSpec.tag (pin a router version you tested), and routerSpec.vllmApiKey",
        "(an existing Secret) when the engines require an API key. soulstone's gateway, with",
        "its clients, limits and budgets, is not in front of this fleet; the router is.",
        "No swaps here: every soulstone runs at once, each on its own GPUs (node selectors",
        "in the manifests keep conflicting groups on separate nodes).",
        "Models:",
        *[f"  {model} -> {url}" for model, url in models],
    ]
    if codex.conflicts:
        lines.append("Conflicting pairs (one GPU node per exclusive group): " + ", ".join(
            f"{a}–{b}" for a, b in codex.conflicts))  # fmt: skip
    if skipped:
        lines.append("Not in the fleet:")
        lines += [f"  {problem}" for problem in skipped]
    return [MARKER, *comments(lines)]


def values_file(
    codex: Codex, members: Sequence[Soulstone], skipped: Sequence[Problem]
) -> tuple[str, list[Problem]]:
    """The values file's text for the fleet, and warnings for models it cannot route."""
    models, warnings = routes(members)
    hints = [_chart_engine_hint(s) for s in members if s.engine == "vllm" and s.image]
    engine_notes = (
        "Off: the engines are soulstone's Deployments (every engine family, args from the codex).",
        *(("To let the chart run the vLLM engines itself instead (enableEngine: true; the "
           "router's serviceDiscovery k8s then finds only the chart's engines), their modelSpec "
           "entries would be:", *(f"  {hint}" for hint in hints)) if hints else ()),
    )  # fmt: skip
    doc = {
        "servingEngineSpec": Noted({"enableEngine": False, "modelSpec": []}, engine_notes),
        "routerSpec": {
            "enableRouter": True,
            "serviceDiscovery": Noted("static", ("static: the backends below, one per model",)),
            "staticBackends": ",".join(url for _, url in models),
            "staticModels": ",".join(model for model, _ in models),
            "routingLogic": "roundrobin",
            "serviceType": Noted("ClusterIP", (OUTSIDE,)),
        },
    }
    return "\n".join(_header(codex, models, skipped)) + "\n" + document(doc), warnings


def forge_kube(codex: Codex) -> tuple[list[KubeFile], tuple[Problem, ...]]:
    """Every file of the Kubernetes forge: the manifests, then the router's values file.

    Returns the files and the warnings; raises CodexError when a manifest cannot
    be made, SoulstoneError when no soulstone can run on Kubernetes at all.
    """
    files, warnings = forge_manifests(codex)
    members, skipped = fleet(codex)
    if not members:
        reasons = "; ".join(str(problem) for problem in skipped) or "the codex is empty"
        raise SoulstoneError(f"no soulstone can run on Kubernetes: {reasons}")
    text, unrouted = values_file(codex, members, skipped)
    return [*files, KubeFile(VALUES_FILE, text)], (*warnings, *unrouted)
