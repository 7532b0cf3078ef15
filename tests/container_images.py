"""Podman for the tests: its environment, and a local llama-server image built with no registry."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SESSION_MARKER, TEST_LABEL
from real_engines import llama_server, tiny_gguf
from soulstone.demo.artifacts import build_cache

IMAGE_REPOSITORY = "localhost/soulstone-test-llama"
SERVER_PATH = "/usr/local/bin/llama-server"
BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class LlamaImage:
    """A local image holding llama-server and its libraries (no model: mount `models` read-only)."""

    name: str
    server: str
    models: Path
    model_file: str


def containers_conf() -> Path:
    """The containers.conf that scripts/get-podman-runtime writes (runc, no default ulimits)."""
    return build_cache() / "containers" / "containers.conf"


def missing(message: str) -> None:
    """Skip, or fail in CI, naming the script that sets Podman up."""
    message = f"{message}: run scripts/get-podman-runtime"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def session_labels() -> list[str]:
    """`podman run` arguments that mark a container as this test session's."""
    return ["--label", f"{TEST_LABEL}={os.environ[SESSION_MARKER]}"]


def podman(env: dict[str, str], *args: str, timeout: float = 60) -> str:
    """Run podman with the tests' environment; its stdout, or a test failure naming the command."""
    done = subprocess.run(
        ["podman", *args], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def container_log(env: dict[str, str], name: str) -> str:
    """The last lines a container wrote, stdout and stderr together (for failure messages)."""
    done = subprocess.run(
        ["podman", "logs", "--tail", "40", name], env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.stdout


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    """Env vars to pass to podman (and soulstone) in the tests: CONTAINERS_CONF and PATH."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not on PATH")
    conf = containers_conf()
    if not conf.is_file():
        missing(f"{conf} is missing")
    return {"CONTAINERS_CONF": str(conf), "PATH": os.environ.get("PATH", os.defpath)}


def shared_libraries(binary: Path) -> list[Path]:
    """The absolute paths `ldd` lists for a binary (its libraries and the dynamic loader)."""
    done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
    if "not found" in done.stdout:
        pytest.fail(f"ldd {binary}: a library is missing:\n{done.stdout}")
    found = []
    for line in done.stdout.splitlines():
        paths = [word for word in line.split() if word.startswith("/")]
        if paths:
            found.append(Path(paths[0]))
    return found


def image_files(binary: Path) -> dict[str, Path]:
    """Path in the image -> host file: busybox (when Debian's busybox-static is there), the
    binary at SERVER_PATH, and each of its libraries at the path it has on the host."""
    files = {SERVER_PATH: binary}
    if BUSYBOX.is_file():
        files["/bin/busybox"] = BUSYBOX
    files.update({str(library): library for library in shared_libraries(binary)})
    return files


def content_hash(files: dict[str, Path]) -> str:
    """A short hash of the image's paths and the bytes of the files behind them."""
    digest = hashlib.sha256()
    for inside, host in sorted(files.items()):
        digest.update(inside.encode() + b"\0")
        with host.open("rb") as source:
            digest.update(hashlib.file_digest(source, "sha256").digest())
    return digest.hexdigest()[:12]


def import_image(name: str, files: dict[str, Path], env: dict[str, str]) -> None:
    """Lay the files out in a rootfs folder and `podman import` its tar as the image `name`."""
    with tempfile.TemporaryDirectory(prefix="ss-rootfs-") as scratch:
        rootfs = Path(scratch)
        for inside, host in files.items():
            target = rootfs / inside.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host, target)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            done = subprocess.run(
                ["podman", "import", "-q", "-", name], stdin=tar.stdout, capture_output=True,
                text=True, env={**os.environ, **env}, timeout=300, check=False,
            )  # fmt: skip
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar_status = tar.wait()
        if tar_status != 0 or done.returncode != 0:
            pytest.fail(f"building {name}: tar exited {tar_status}, podman import exited "
                        f"{done.returncode}: {done.stderr.strip()}")  # fmt: skip


@pytest.fixture(scope="session")
def llama_image(podman_env: dict[str, str]) -> LlamaImage:
    """The llama-server image, imported once per change of the binary or its libraries."""
    files = image_files(llama_server())
    name = f"{IMAGE_REPOSITORY}:{content_hash(files)}"
    exists = subprocess.run(
        ["podman", "image", "exists", name], env={**os.environ, **podman_env}, check=False
    )
    if exists.returncode != 0:
        import_image(name, files, podman_env)
    model = tiny_gguf()
    return LlamaImage(name=name, server=SERVER_PATH, models=model.parent, model_file=model.name)


def quadlet_generator() -> Path | None:
    """Podman's quadlet generator: $SOULSTONE_QUADLET, the one scripts/get-quadlet caches,
    or the system's."""
    candidates = [
        os.environ.get("SOULSTONE_QUADLET"),
        str(build_cache() / "podman-trixie" / "root" / "usr" / "libexec" / "podman" / "quadlet"),
        "/usr/libexec/podman/quadlet",
    ]
    return next((Path(c) for c in candidates if c and Path(c).exists()), None)


@pytest.fixture(scope="session")
def podman_runtime_env(podman_env: dict[str, str]) -> dict[str, str]:
    """What a soulstone process needs for the podman runtime: podman_env and the generator.

    CONTAINERS_CONF is also set for this test process, so that the fixtures' own
    clean-ups (`podman rm`) use the same configuration.
    """
    generator = quadlet_generator()
    if generator is None:
        message = "Podman's quadlet generator is missing: run scripts/get-quadlet"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ["CONTAINERS_CONF"] = podman_env["CONTAINERS_CONF"]
    return {**podman_env, "SOULSTONE_QUADLET": str(generator)}
