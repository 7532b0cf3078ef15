"""The demo's artifacts, built once and cached outside any checkout.

`llama-server` (CPU) is built from the llama.cpp tree vendored in the
llama-cpp-python sdist on PyPI; the tiny GGUF model is written by
`tiny_models.py`. `python -m soulstone.demo.artifacts` builds both (if
needed) and prints their paths; the demo calls the same functions with a
progress view.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from soulstone.errors import SoulstoneError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
TINY_GGUF_VERSION = "v1"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF",
)  # fmt: skip
_PERCENT = re.compile(rb"^\[\s*(\d+)%\]")

Progress = Callable[[str, float], None]  # (step, fraction done)


def build_cache(env: dict[str, str] | None = None) -> Path:
    """`$SOULSTONE_BUILD_CACHE`, else `$XDG_CACHE_HOME/soulstone-build`."""
    env = dict(os.environ if env is None else env)
    if env.get("SOULSTONE_BUILD_CACHE"):
        return Path(env["SOULSTONE_BUILD_CACHE"])
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "soulstone-build"


def llama_server_path(cache: Path, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Where the built binary lives in the cache."""
    return cache / f"llama-server-{version}" / "bin" / "llama-server"


def _run(command: list[str], log: Path, progress: Progress | None, step: str) -> None:
    with log.open("ab") as sink:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        for line in process.stdout:
            sink.write(line)
            if progress is not None and (match := _PERCENT.match(line)):
                progress(step, int(match.group(1)) / 100)
        if process.wait() != 0:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise SoulstoneError(f"{step} failed ({' '.join(command[:3])}...):\n" + "\n".join(tail))


def ensure_llama_server(
    cache: Path | None = None,
    progress: Progress | None = None,
    version: str = LLAMA_CPP_PYTHON_VERSION,
) -> Path:
    """The cached llama-server binary, building it first if it is missing (minutes, once)."""
    cache = cache or build_cache()
    binary = llama_server_path(cache, version)
    if binary.exists():
        return binary
    missing = [tool for tool in ("cmake", "c++", "make") if shutil.which(tool) is None]
    if missing:
        raise SoulstoneError(
            f"building llama-server needs {', '.join(missing)}: apt-get install cmake g++ make"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".llama-build-") as scratch:
        work = Path(scratch)
        log = work / "build.log"
        report = progress or (lambda _step, _fraction: None)
        report("downloading the llama.cpp sources", 0.0)
        _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
              "--no-binary", ":all:", "--no-deps", "-d", str(work),
              f"llama-cpp-python=={version}"], log, None, "download")  # fmt: skip
        [archive] = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        [source] = work.glob("llama_cpp_python-*/vendor/llama.cpp")
        report("configuring llama.cpp", 0.0)
        _run(["cmake", "-S", str(source), "-B", str(work / "build"), *CMAKE_OPTIONS],
             log, None, "cmake configure")  # fmt: skip
        report("compiling llama-server", 0.0)
        _run(["cmake", "--build", str(work / "build"), "--target", "llama-server",
              "-j", str(os.cpu_count() or 2)], log, progress, "compiling llama-server")  # fmt: skip
        result = work / "result"
        (result / "bin").mkdir(parents=True)
        shutil.copy2(work / "build" / "bin" / "llama-server", result / "bin" / "llama-server")
        (result / "VERSION").write_text(version + "\n")
        shutil.rmtree(binary.parent.parent, ignore_errors=True)
        result.rename(binary.parent.parent)
    return binary


def ensure_tiny_gguf(cache: Path | None = None) -> Path:
    """The cached tiny random GGUF model, written first if it is missing (about a second)."""
    model = (cache or build_cache()) / f"tiny-gguf-{TINY_GGUF_VERSION}" / "tiny.gguf"
    if model.exists():
        return model
    from soulstone.demo.tiny_models import build_gguf

    model.parent.mkdir(parents=True, exist_ok=True)
    partial = model.with_name(f".{model.name}.{os.getpid()}.partial")
    try:
        build_gguf(partial)
        partial.rename(model)
    finally:
        partial.unlink(missing_ok=True)
    return model


def main() -> None:
    """Build what is missing; print the llama-server and model paths."""
    print(ensure_llama_server(), flush=True)
    print(ensure_tiny_gguf(), flush=True)


if __name__ == "__main__":
    main()
