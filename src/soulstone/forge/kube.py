"""Soulstones to Kubernetes manifests: a Deployment and a Service each (pure).

The container's `args` are the Quadlet unit's `Exec=` exactly (the codex's
`exec` plus what soulstone derives, such as llama-server's `--alias`); the
image's own entrypoint runs them, as under Podman.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from soulstone.codex.conflicts import in_conflict
from soulstone.codex.engines import (
    MODEL_PLACEHOLDER,
    TRAITS,
    derived_arguments,
    engine_env,
    exec_model,
    kept_argv,
    option,
)
from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import CodexError, Problem
from soulstone.forge.units import MARKER, qualified_image
from soulstone.forge.yaml_text import Noted, comments, stream

NAME_LABEL = "app.kubernetes.io/name"
GROUP_LABEL = "soulstone.dev/group"
ANNOTATION = "soulstone.dev"
CONTAINER = "engine"
PORT_NAME = "http"
GPU_RESOURCE = "nvidia.com/gpu"
# Options that spread one engine over several GPUs (vLLM, SGLang).
TENSOR_PARALLEL = ("--tensor-parallel-size", "-tp", "--tp", "--tp-size")
# Engines that listen on 127.0.0.1 unless told `--host`, and the variable that tells them too.
LOOPBACK_BY_DEFAULT = {"llamacpp": "LLAMA_ARG_HOST", "sglang": None}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHARED_MEMORY_ENGINES = frozenset({"vllm", "sglang"})
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
MAX_NAME = 63


@dataclass(frozen=True)
class KubeFile:
    """One file of the Kubernetes forge: its path under the output folder, and its text."""

    name: str
    text: str


@dataclass
class _Findings:
    """Problems (nothing is written) and warnings of one soulstone."""

    soulstone: Soulstone
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def problem(self, field_name: str, message: str) -> None:
        s = self.soulstone
        self.problems.append(Problem(s.file, s.id, field_name, message))

    def warn(self, field_name: str, message: str) -> None:
        s = self.soulstone
        self.warnings.append(Problem(s.file, s.id, field_name, message))


def kube_name(soulstone: Soulstone) -> str:
    """The Deployment and Service name: the unit name where Kubernetes accepts it.

    Otherwise (capitals, `_`, too long) it is made lowercase and DNS-safe, with
    a short hash of the id added so that two ids never share a name.
    """
    unit = soulstone.unit
    if len(unit) <= MAX_NAME and _DNS_LABEL.fullmatch(unit):
        return unit
    digest = hashlib.sha256(soulstone.id.encode()).hexdigest()[:8]
    base = re.sub(r"[^a-z0-9-]+", "-", unit.lower())[: MAX_NAME - len(digest) - 1].rstrip("-")
    return f"{base}-{digest}"


def engine_args(soulstone: Soulstone) -> tuple[str, ...]:
    """The container's args: the Quadlet unit's Exec= (exec, then the derived options)."""
    return (*kept_argv(soulstone), *derived_arguments(soulstone))


def gpu_count(soulstone: Soulstone) -> int:
    """How many `nvidia.com/gpu` the engine needs: 0 without a GPU, else its tensor parallelism.

    A GPU is used where the codex's `devices` name an NVIDIA one, or, with no
    `devices`, where the engine family runs on a GPU.
    """
    if soulstone.devices is None:
        uses_gpu = TRAITS[soulstone.engine].gpu
    else:
        uses_gpu = any("nvidia" in device for device in soulstone.devices)
    if not uses_gpu:
        return 0
    value = option(soulstone.argv, *TENSOR_PARALLEL)
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else 1


def scheduling_group(soulstone: Soulstone) -> tuple[str, ...]:
    """The values of `soulstone.dev/group` a node may carry to host this soulstone.

    Its groups, or, for a solitary soulstone, its own id (a group of one).
    """
    return soulstone.groups or (soulstone.id,)


def _listen_note(soulstone: Soulstone) -> str | None:
    """Why a Service may not reach the engine (it listens on loopback only), or None."""
    host = option(soulstone.argv, "--host")
    if host is not None:
        if host in LOOPBACK:
            return f"exec passes --host {host}: a Service cannot reach it; use --host 0.0.0.0"
        return None
    if soulstone.engine not in LOOPBACK_BY_DEFAULT or not soulstone.argv:
        return None
    variable = LOOPBACK_BY_DEFAULT[soulstone.engine]
    if variable is not None and variable in dict(soulstone.env):
        return None
    told = f"--host 0.0.0.0 in exec{f' or {variable}=0.0.0.0 in env' if variable else ''}"
    return (f"{soulstone.engine} listens on 127.0.0.1 unless told otherwise, and a Service "
            f"cannot reach that: add {told} (unless the image sets it)")  # fmt: skip


def _volumes(soulstone: Soulstone, found: _Findings) -> tuple[list[object], list[object]]:
    """(volumeMounts, volumes) for the codex's `volumes` (host:container[:opts], validated)."""
    mounts: list[object] = []
    volumes: list[object] = []
    for index, text in enumerate(soulstone.volumes):
        source, target, *opts = text.split(":")
        name = f"volume-{index}"
        if source.startswith("/"):
            volume: dict[str, object] = {"name": name, "hostPath": {"path": source}}
        else:  # a Podman named volume: a claim of the same name
            claim = source.lower().replace("_", "-")
            if len(claim) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", claim):
                found.problem("volumes", f"{text!r}: {source!r} cannot name a claim")
                continue
            volume = {"name": name, "persistentVolumeClaim": {"claimName": claim}}
        mount: dict[str, object] = {"name": name, "mountPath": target}
        if opts and "ro" in opts[0].split(","):
            mount["readOnly"] = True
        mounts.append(mount)
        volumes.append(volume)
    return mounts, volumes


def _volume_notes(volumes: Sequence[object]) -> tuple[str, ...]:
    kinds = {key for volume in volumes if isinstance(volume, Mapping) for key in volume}
    notes = []
    if "hostPath" in kinds:
        notes.append("hostPath: the folder must exist on every node this pod may run on (the "
                     "weights, copied there); on a real cluster prefer a PersistentVolumeClaim "
                     "(ReadOnlyMany) that holds them")  # fmt: skip
    if "persistentVolumeClaim" in kinds:
        notes.append("persistentVolumeClaim: create each claim (a Podman named volume in the "
                     "codex) before applying this file")  # fmt: skip
    return tuple(notes)


def _node_placement(soulstone: Soulstone, found: _Findings) -> dict[str, object]:
    groups = scheduling_group(soulstone)
    for group in groups:
        if len(group) > MAX_NAME or not _LABEL_VALUE.fullmatch(group):
            found.warn("groups", f"{group!r} is not a Kubernetes label value (letters, digits, "
                       "'-', '_', '.', starting and ending with a letter or digit): rename "
                       f"the group, or edit the {GROUP_LABEL} selector")  # fmt: skip
    notes = (
        f"Scheduling: one GPU node per exclusive group. Soulstones that share no group were "
        f"declared not to fit together; label the node for this one: kubectl label node NODE "
        f"{GROUP_LABEL}={groups[0]}",
        "(or delete this selector to let the scheduler place the pod by its GPU request alone)",
    )
    if len(groups) == 1:
        return {"nodeSelector": Noted({GROUP_LABEL: groups[0]}, notes)}
    term = {"key": GROUP_LABEL, "operator": "In", "values": list(groups)}
    required = {"nodeSelectorTerms": [{"matchExpressions": [term]}]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    return {"affinity": Noted(affinity, (*notes, "(any of its groups' nodes will do)"))}


def _container(soulstone: Soulstone, found: _Findings) -> tuple[dict[str, object], list[object]]:
    assert soulstone.image is not None and soulstone.port is not None
    container: dict[str, object] = {
        "name": CONTAINER,
        "image": qualified_image(soulstone.image),
        "imagePullPolicy": "IfNotPresent",
    }
    args = engine_args(soulstone)
    if args:
        container["args"] = list(args)
    env = engine_env(soulstone)
    if env:
        container["env"] = [{"name": key, "value": value} for key, value in env]
    container["ports"] = [{"name": PORT_NAME, "containerPort": soulstone.port, "protocol": "TCP"}]
    container["readinessProbe"] = {
        "httpGet": {"path": soulstone.health.path, "port": PORT_NAME},
        "periodSeconds": max(1, math.ceil(soulstone.health.interval)),
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    gpus = gpu_count(soulstone)
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: gpus}}
    others = [d for d in soulstone.devices or () if "nvidia" not in d]
    if others:
        found.warn("devices", f"{', '.join(others)}: not mapped into the pod (Kubernetes "
                   "hands out devices through device plugins: request its resource)")  # fmt: skip
    mounts, volumes = _volumes(soulstone, found)
    if soulstone.engine in SHARED_MEMORY_ENGINES:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    if mounts:
        container["volumeMounts"] = mounts
    return container, volumes


def deployment(soulstone: Soulstone, codex: Codex, found: _Findings) -> dict[str, object]:
    """The Deployment of one soulstone with an image and a port (one replica)."""
    name = kube_name(soulstone)
    labels = {NAME_LABEL: name, "app.kubernetes.io/component": "engine",
              "app.kubernetes.io/part-of": "soulstone",
              "app.kubernetes.io/managed-by": "soulstone-forge"}  # fmt: skip
    annotations = {f"{ANNOTATION}/id": soulstone.id, f"{ANNOTATION}/engine": soulstone.engine,
                   f"{ANNOTATION}/models": json.dumps(list(soulstone.models)),
                   f"{ANNOTATION}/groups": json.dumps(list(soulstone.groups))}  # fmt: skip
    container, volumes = _container(soulstone, found)
    pod: dict[str, object] = {}
    if any(in_conflict(soulstone, other) for other in codex.soulstones):
        pod.update(_node_placement(soulstone, found))
    pod["containers"] = [container]
    if volumes:
        notes = _volume_notes(volumes)
        pod["volumes"] = Noted(volumes, notes) if notes else volumes
    recreate = ("Recreate: the old pod stops before the new one starts (one GPU, one engine)",)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "replicas": 1,
            "strategy": Noted({"type": "Recreate"}, recreate),
            "selector": {"matchLabels": {NAME_LABEL: name}},
            "template": {"metadata": {"labels": labels, "annotations": annotations},
                         "spec": pod},
        },
    }  # fmt: skip


def service(soulstone: Soulstone) -> dict[str, object]:
    """The ClusterIP Service in front of one soulstone's pod, on the engine's port."""
    name = kube_name(soulstone)
    assert soulstone.port is not None
    port = {"name": PORT_NAME, "port": soulstone.port, "targetPort": PORT_NAME, "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {NAME_LABEL: name},
                     "annotations": {f"{ANNOTATION}/id": soulstone.id}},
        "spec": {"type": "ClusterIP", "selector": {NAME_LABEL: name}, "ports": [port]},
    }  # fmt: skip


def backend_url(soulstone: Soulstone) -> str:
    """The base URL of a soulstone's Service inside the cluster (same namespace)."""
    return f"http://{kube_name(soulstone)}:{soulstone.port}"


def skip_reason(soulstone: Soulstone) -> tuple[str, str] | None:
    """(field, why) when a soulstone cannot be in the fleet, else None."""
    if not soulstone.image:
        return "image", "no image: not in the Kubernetes fleet (a Deployment runs an image)"
    if soulstone.socket is not None:
        return "socket", ("serves on a Unix socket only, which cannot be a Kubernetes Service: "
                          "declare a port instead of the socket for the fleet")  # fmt: skip
    if soulstone.port is None:
        return "port", "no port: a Kubernetes Service needs the engine's TCP port"
    return None


def _header(soulstone: Soulstone, codex: Codex, notes: Sequence[str]) -> list[str]:
    lines = [
        f"Source: {PurePosixPath(soulstone.file).name} [{soulstone.id}]",
        f"soulstone {soulstone.id} ({soulstone.engine}): {soulstone.description or 'engine'}",
        f"Serves {', '.join(soulstone.models)} at {backend_url(soulstone)}/v1 in the cluster "
        "(the router's values file lists it).",
    ]
    rivals = [other.id for other in codex.soulstones if in_conflict(soulstone, other)]
    if rivals:
        groups = ", ".join(soulstone.groups) or "none (solitary)"
        lines.append(f"Conflicts: shares no group with {', '.join(rivals)} (its groups: {groups}); "
                     f"see the nodeSelector below.")  # fmt: skip
    lines += [f"Note: {note}" for note in notes]
    return [MARKER, *comments(lines)]


def manifest(soulstone: Soulstone, codex: Codex) -> tuple[KubeFile | None, _Findings]:
    """The file of one soulstone (Deployment, then Service); None when it has problems."""
    found = _Findings(soulstone)
    doc = deployment(soulstone, codex, found)
    if (note := _listen_note(soulstone)) is not None:
        found.warn("exec", note)
    if soulstone.model is not None and exec_model(soulstone.argv) is None:
        found.warn("model", f"soulstone finds {soulstone.model!r} on its own host; a pod gets "
                   "no weights from it: name the model in exec (vLLM and SGLang download a "
                   "Hub name themselves) or mount the weights")  # fmt: skip
    if any(MODEL_PLACEHOLDER in word for word in soulstone.argv):
        found.warn("exec", f"{MODEL_PLACEHOLDER} is filled in by soulstone on its own host; "
                   "the pod gets it as is: write the model's path in the container")  # fmt: skip
    if found.problems:
        return None, found
    header = _header(soulstone, codex, [w.message for w in found.warnings])
    text = stream(header, [doc, service(soulstone)])
    return KubeFile(f"{soulstone.unit}.yaml", text), found


def fleet(codex: Codex) -> tuple[list[Soulstone], list[Problem]]:
    """The soulstones that can run on Kubernetes, and a warning for each one left out."""
    members: list[Soulstone] = []
    skipped: list[Problem] = []
    for soulstone in codex.soulstones:
        reason = skip_reason(soulstone)
        if reason is None:
            members.append(soulstone)
        else:
            skipped.append(Problem(soulstone.file, soulstone.id, *reason))
    return members, skipped


def forge_manifests(codex: Codex) -> tuple[list[KubeFile], tuple[Problem, ...]]:
    """One manifest file per soulstone of the fleet, sorted; raises CodexError on problems.

    Returns the files and the warnings (soulstones left out among them).
    """
    members, warnings = fleet(codex)
    files: list[KubeFile] = []
    problems: list[Problem] = []
    for soulstone in members:
        made, found = manifest(soulstone, codex)
        problems += found.problems
        warnings += found.warnings
        if made is not None:
            files.append(made)
    if problems:
        raise CodexError(tuple(problems), tuple(warnings))
    return sorted(files, key=lambda f: f.name), tuple(warnings)
