"""`forge --kube` on the reference examples and on edge cases: the YAML is parsed back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import EXAMPLES, load, write
from soulstone.codex.engines import derived_arguments, engine_env, kept_argv
from soulstone.codex.models import Codex
from soulstone.errors import CodexError, SoulstoneError
from soulstone.forge.kube import GPU_RESOURCE, GROUP_LABEL, KubeFile, kube_name
from soulstone.forge.kube_values import VALUES_FILE, forge_kube, image_parts
from soulstone.forge.units import MARKER, qualified_image

DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def parsed(files: list[KubeFile]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Each manifest's documents by file name, and the values file, parsed by PyYAML."""
    manifests = {f.name: list(yaml.safe_load_all(f.text)) for f in files if f.name != VALUES_FILE}
    [values] = [yaml.safe_load(f.text) for f in files if f.name == VALUES_FILE]
    return manifests, values


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def forged(codex: Codex) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    files, _ = forge_kube(codex)
    return parsed(files)


def test_every_example_gets_a_deployment_and_a_service_that_parse() -> None:
    codex = load(EXAMPLES)
    files, _ = forge_kube(codex)
    assert all(f.text.startswith(MARKER + "\n") for f in files)
    manifests, _ = parsed(files)
    assert set(manifests) == {f"{s.unit}.yaml" for s in codex.soulstones}
    for soulstone in codex.soulstones:
        deployment, service = manifests[f"{soulstone.unit}.yaml"]
        assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
        assert (service["apiVersion"], service["kind"]) == ("v1", "Service")
        name = kube_name(soulstone)
        assert deployment["metadata"]["name"] == service["metadata"]["name"] == name
        assert DNS_LABEL.fullmatch(name) and len(name) <= 63
        spec = deployment["spec"]
        assert spec["replicas"] == 1
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        )
        assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
        assert service["spec"]["type"] == "ClusterIP"
        [port] = service["spec"]["ports"]
        assert port["port"] == soulstone.port
        container = container_of(deployment)
        assert soulstone.image is not None
        assert container["image"] == qualified_image(soulstone.image)
        assert container["ports"] == [
            {"name": "http", "containerPort": soulstone.port, "protocol": "TCP"}
        ]
        assert port["targetPort"] == "http"
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"path": soulstone.health.path, "port": "http"}


def test_container_args_are_the_codex_exec_exactly() -> None:
    """The same round trip as the quadlet argv test: exec, then only what soulstone derives."""
    codex = load(EXAMPLES)
    manifests, _ = forged(codex)
    for soulstone in codex.soulstones:
        deployment, _service = manifests[f"{soulstone.unit}.yaml"]
        args = tuple(container_of(deployment)["args"])
        assert args == (*kept_argv(soulstone), *derived_arguments(soulstone))
        assert args[: len(soulstone.argv)] == soulstone.argv, soulstone.id
    beta = manifests["soulstone-logic-beta.yaml"][0]
    assert container_of(beta)["args"][-3:] == ["--alias", "beta", "--metrics"]


def test_gpu_requests_follow_the_engine_its_devices_and_tensor_parallelism(tmp_path: Path) -> None:
    manifests, _ = forged(load(EXAMPLES))
    gpus = {
        name: container_of(docs[0]).get("resources", {}).get("limits", {}).get(GPU_RESOURCE)
        for name, docs in manifests.items()
    }
    assert gpus == {
        "soulstone-flash.yaml": 1,
        "soulstone-logic-alpha.yaml": 1,
        "soulstone-logic-beta.yaml": 1,
        "soulstone-eye.yaml": 2,  # --tp 2
        "soulstone-scribe.yaml": 1,
    }
    codex = write(tmp_path / "codex", {"c.toml": "\n".join([
        '[cpu]\nimage = "ghcr.io/ggml-org/llama.cpp:server"\nport = 9001\ndevices = []',
        'exec = ["-m", "/m/x.gguf", "--host", "0.0.0.0"]',
        '[web]\nengine = "generic"\nimage = "example.org/web:1"\nport = 9002\nmodels = ["w"]',
        '[amd]\nimage = "ghcr.io/ggml-org/llama.cpp:server"\nport = 9003',
        'devices = ["/dev/kfd"]\nmodels = ["a"]\nexec = ["-m", "/m/a.gguf", "--host", "0.0.0.0"]',
        '[big]\nimage = "vllm/vllm-openai:v0.9.0"\nport = 9004',
        'exec = ["--model", "org/m", "--tensor-parallel-size=4"]',
    ])})  # fmt: skip
    files, warnings = forge_kube(load(codex))
    manifests, _ = parsed(files)
    resources = {name: container_of(docs[0]).get("resources") for name, docs in manifests.items()}
    assert resources == {
        "soulstone-cpu.yaml": None,
        "soulstone-web.yaml": None,
        "soulstone-amd.yaml": None,
        "soulstone-big.yaml": {"limits": {GPU_RESOURCE: 4}},
    }
    [unmapped] = [w for w in warnings if w.field == "devices"]
    assert unmapped.table == "amd" and "/dev/kfd" in unmapped.message


def test_the_values_file_routes_every_model_to_its_service() -> None:
    codex = load(EXAMPLES)
    manifests, values = forged(codex)
    assert values["servingEngineSpec"] == {"enableEngine": False, "modelSpec": []}
    router = values["routerSpec"]
    assert router["enableRouter"] is True
    assert router["serviceDiscovery"] == "static"
    models = router["staticModels"].split(",")
    backends = router["staticBackends"].split(",")
    assert len(models) == len(backends)
    assert sorted(models) == sorted(m for s in codex.soulstones for m in s.models)
    services = {
        f"http://{docs[1]['metadata']['name']}:{docs[1]['spec']['ports'][0]['port']}"
        for docs in manifests.values()
    }
    for model, backend in zip(models, backends, strict=True):
        soulstone = codex.serving(model)
        assert soulstone is not None
        assert backend == f"http://{kube_name(soulstone)}:{soulstone.port}"
        assert backend in services


def test_conflicting_groups_get_a_node_selector_and_a_note() -> None:
    codex = load(EXAMPLES)
    files, _ = forge_kube(codex)
    manifests, _ = parsed(files)
    texts = {f.name: f.text for f in files}
    selectors = {
        name: docs[0]["spec"]["template"]["spec"]["nodeSelector"]
        for name, docs in manifests.items()
    }
    assert selectors == {
        "soulstone-flash.yaml": {GROUP_LABEL: "flash"},  # solitary: a group of one
        "soulstone-logic-alpha.yaml": {GROUP_LABEL: "logic"},
        "soulstone-logic-beta.yaml": {GROUP_LABEL: "logic"},
        "soulstone-eye.yaml": {GROUP_LABEL: "vision-ritual"},
        "soulstone-scribe.yaml": {GROUP_LABEL: "vision-ritual"},
    }
    assert (
        "# Conflicts: shares no group with eye, flash, scribe (its groups: logic)"
        in (texts["soulstone-logic-alpha.yaml"])
    )
    assert f"kubectl label node NODE {GROUP_LABEL}=logic" in texts["soulstone-logic-beta.yaml"]
    values = texts[VALUES_FILE]
    assert "# Conflicting pairs (one GPU node per exclusive group): " in values
    for a, b in codex.conflicts:
        assert f"{a}–{b}" in values


def test_no_conflict_no_selector_and_several_groups_any_of_their_nodes(tmp_path: Path) -> None:
    llama = 'image = "ghcr.io/ggml-org/llama.cpp:server"\nexec = ["--host", "0.0.0.0"]'
    together = write(tmp_path / "one", {"c.toml": f"[g.a]\n{llama}\nport = 9001\n"
                                        f"[g.b]\n{llama}\nport = 9002\n"})  # fmt: skip
    manifests, _ = forged(load(together))
    for docs in manifests.values():
        assert "nodeSelector" not in docs[0]["spec"]["template"]["spec"]
        assert "affinity" not in docs[0]["spec"]["template"]["spec"]
    both = write(tmp_path / "two", {"c.toml": (
        f'[x]\n{llama}\nport = 9001\ngroups = ["red", "blue"]\n'
        f'[y]\n{llama}\nport = 9002\ngroups = ["red"]\n[z]\n{llama}\nport = 9003\n'
    )})  # fmt: skip
    manifests, _ = forged(load(both))
    pod = manifests["soulstone-x.yaml"][0]["spec"]["template"]["spec"]
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": GROUP_LABEL, "operator": "In", "values": ["blue", "red"]}]}
    ] or required["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": GROUP_LABEL, "operator": "In", "values": ["red", "blue"]}]}
    ]


def test_soulstones_without_image_or_port_are_reported_not_forged(tmp_path: Path) -> None:
    codex = write(tmp_path / "codex", {"c.toml": "\n".join([
        '[local]\nruntime = "process"\nexec = ["/usr/bin/llama-server", "-m", "/m.gguf"]',
        "port = 9001",
        '[quiet]\nimage = "ghcr.io/ggml-org/llama.cpp:server"\nsocket = "/run/q.sock"',
        '[kept]\nimage = "ghcr.io/ggml-org/llama.cpp:server"\nport = 9002',
        'exec = ["-m", "/m.gguf", "--host", "0.0.0.0"]',
    ])})  # fmt: skip
    files, warnings = forge_kube(load(codex))
    assert [f.name for f in files] == ["soulstone-kept.yaml", VALUES_FILE]
    skipped = {(w.table, w.field): w for w in warnings}
    no_image = skipped[("local", "image")]
    assert no_image.file == str(codex / "c.toml")
    assert "no image: not in the Kubernetes fleet" in no_image.message
    assert "cannot be a Kubernetes Service" in skipped[("quiet", "socket")].message
    values = next(f.text for f in files if f.name == VALUES_FILE)
    assert f"#   {codex / 'c.toml'}: [local] image: no image" in values
    assert yaml.safe_load(values)["routerSpec"]["staticModels"] == "kept"


def test_a_codex_with_nothing_for_kubernetes_is_an_error(tmp_path: Path) -> None:
    codex = write(tmp_path / "codex", {"c.toml": '[p]\nexec = ["/bin/server"]\nport = 9001\n'})
    with pytest.raises(SoulstoneError, match=r"no soulstone can run on Kubernetes: .*\[p\] image"):
        forge_kube(load(codex))


def test_env_volumes_and_awkward_strings_survive_the_yaml(tmp_path: Path) -> None:
    awkward = 'a "quoted" \\ back\tslash\u2028line: #not a comment\x85 ünï'
    table = "\n".join([
        '[Odd_Name]\nimage = "ghcr.io/ggml-org/llama.cpp:server"\nport = 9001',
        f"exec = {json_list(['-m', '/m/x.gguf', '--host', '0.0.0.0', awkward, '', 'yes', '1'])}",
        f'env = {{ LLAMA_ARG_CTX_SIZE = "2048", ODD = {json_str(awkward)}, EMPTY = "" }}',
        'volumes = ["/srv/models:/models:ro,z", "hf_cache:/root/.cache", "/srv/x.gguf:/x.gguf"]',
    ])  # fmt: skip
    codex = load(write(tmp_path / "codex", {"c.toml": table}))
    [soulstone] = codex.soulstones
    files, _ = forge_kube(codex)
    manifests, _ = parsed(files)
    [(name, (deployment, service))] = manifests.items()
    assert name == "soulstone-Odd_Name.yaml"
    assert DNS_LABEL.fullmatch(service["metadata"]["name"])
    assert service["metadata"]["name"] == kube_name(soulstone) != soulstone.unit
    container = container_of(deployment)
    assert tuple(container["args"]) == (*kept_argv(soulstone), *derived_arguments(soulstone))
    assert [(e["name"], e["value"]) for e in container["env"]] == list(engine_env(soulstone))
    assert container["volumeMounts"] == [
        {"name": "volume-0", "mountPath": "/models", "readOnly": True},
        {"name": "volume-1", "mountPath": "/root/.cache"},
        {"name": "volume-2", "mountPath": "/x.gguf"},
    ]
    assert deployment["spec"]["template"]["spec"]["volumes"] == [
        {"name": "volume-0", "hostPath": {"path": "/srv/models"}},
        {"name": "volume-1", "persistentVolumeClaim": {"claimName": "hf-cache"}},
        {"name": "volume-2", "hostPath": {"path": "/srv/x.gguf"}},
    ]
    text = files[0].text
    assert "# hostPath: the folder must exist on every node" in text
    assert "# persistentVolumeClaim: create each claim" in text


def test_kube_names_are_dns_labels_and_never_shared(tmp_path: Path) -> None:
    long = "x" * 60
    table = "\n".join(
        f'[{name}]\nimage = "example.org/e:1"\nengine = "generic"\nport = {9001 + i}\n'
        f'models = ["m{i}"]'
        for i, name in enumerate(["Alpha", "alpha_", "alpha", f"{long}.a", f"{long}.b"])
    )
    codex = load(write(tmp_path / "codex", {"c.toml": table}))
    names = [kube_name(s) for s in codex.soulstones]
    assert len(set(names)) == len(names)
    assert all(DNS_LABEL.fullmatch(n) and len(n) <= 63 for n in names), names
    assert kube_name(codex.soulstones[names.index("soulstone-alpha")]).endswith("alpha")


def test_the_forge_is_deterministic() -> None:
    first, _ = forge_kube(load(EXAMPLES))
    second, _ = forge_kube(load(EXAMPLES))
    assert first == second


def test_a_volume_that_cannot_name_a_claim_is_an_error(tmp_path: Path) -> None:
    table = '[v]\nimage = "example.org/e:1"\nport = 9001\nvolumes = ["a~b:/data"]\n'
    codex = load(write(tmp_path / "codex", {"c.toml": table}))
    with pytest.raises(CodexError) as caught:
        forge_kube(codex)
    [problem] = caught.value.problems
    assert (problem.table, problem.field) == ("v", "volumes")
    assert "cannot name a claim" in problem.message


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("vllm/vllm-openai", ("docker.io/vllm/vllm-openai", "latest")),
        ("vllm/vllm-openai:v0.9.0", ("docker.io/vllm/vllm-openai", "v0.9.0")),
        ("localhost:5000/vllm", ("localhost:5000/vllm", "latest")),
        ("localhost:5000/vllm:x@sha256:ab", ("localhost:5000/vllm", "x")),
    ],
)
def test_image_parts_split_repository_and_tag(image: str, parts: tuple[str, str]) -> None:
    assert image_parts(image) == parts


def test_a_vllm_soulstone_gets_a_chart_engine_hint() -> None:
    files, _ = forge_kube(load(EXAMPLES))
    values = next(f.text for f in files if f.name == VALUES_FILE)
    assert (
        "logic.alpha: {name: soulstone-logic-alpha, repository: docker.io/vllm/vllm-openai, "
        "tag: latest, modelURL: /models/Llama-3-70B-Instruct" in values
    )


def json_str(text: str) -> str:
    """A TOML basic string for any text (TOML's escapes are JSON's, plus \\u for the rest)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif not char.isprintable() or char == "\x85":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def json_list(words: list[str]) -> str:
    return "[" + ", ".join(json_str(w) for w in words) + "]"
