"""A local file server that speaks enough of the Hugging Face Hub API for huggingface_hub.

`fake_hub` starts one on a free loopback port (a thread of the test process)
and stops it after the test. It serves model repos held in memory: repo
info (`/api/models/{repo}/revision/{rev}`), the file tree
(`/api/models/{repo}/tree/{rev}`) and the files (`/{repo}/resolve/{rev}/{path}`)
with the headers huggingface_hub reads (`X-Repo-Commit`, `ETag`, for LFS
files `X-Linked-Etag`/`X-Linked-Size`), and the Hub's error codes. Caches are
then written by huggingface_hub itself (`fill_cache`), in the real layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

# huggingface_hub asks its endpoint for a telemetry registry on first use, and writes it under
# HF_HOME; tests must not reach out nor write into the real home.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def git_blob_id(data: bytes) -> str:
    """The git blob sha1 of a file's content (the Hub's ETag for a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def commit_of(files: dict[str, bytes]) -> str:
    """A stable 40-hex commit id for a set of files."""
    digest = hashlib.sha1(usedforsecurity=False)
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


@dataclass
class HubRepo:
    """A repo on the fake Hub: files by commit, and refs (branches, tags) to commits."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def commit(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


@dataclass
class FakeHub:
    """The server's repos and the requests it answered (method and path)."""

    url: str = ""
    repos: dict[str, HubRepo] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def publish(self, repo: str, files: dict[str, bytes], *refs: str) -> str:
        """Add a commit of these files; point the refs (default: main) at it; its id."""
        commit = commit_of(files)
        hub_repo = self.repos.setdefault(repo, HubRepo())
        hub_repo.commits[commit] = dict(files)
        for ref in refs or ("main",):
            hub_repo.refs[ref] = commit
        return commit

    def downloads(self) -> list[str]:
        """The paths of the files served with GET (not HEAD)."""
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]


def _lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(status, body, {"Content-Type": "application/json", "X-Error-Code": code,
                                      "X-Error-Message": message})  # fmt: skip

        def _json(self, document: object) -> None:
            self._send(200, json.dumps(document).encode(), {"Content-Type": "application/json"})

        def _repo(self, parts: list[str]) -> tuple[str, HubRepo] | None:
            repo_id = "/".join(parts[:2])
            found = hub.repos.get(repo_id)
            if found is None:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                return None
            return repo_id, found

        def _api(self, parts: list[str]) -> None:
            # parts: org, name, ("revision", rev) | ("tree", rev...)
            located = self._repo(parts)
            if located is None:
                return
            repo_id, repo = located
            kind = parts[2] if len(parts) > 2 else "revision"
            revision = "/".join(parts[3:]) or "main"
            commit = repo.commit(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            files = repo.commits[commit]
            if kind == "revision":
                siblings = [{"rfilename": name} for name in sorted(files)]
                self._json({"id": repo_id, "modelId": repo_id, "sha": commit,
                            "siblings": siblings, "private": False})  # fmt: skip
                return
            tree = []
            for name in sorted(files):
                data = files[name]
                entry: dict[str, object] = {"type": "file", "path": name, "size": len(data),
                                            "oid": git_blob_id(data)}  # fmt: skip
                if _lfs(name):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                    "pointerSize": 134}  # fmt: skip
                tree.append(entry)
            self._json(tree)

        def _resolve(self, parts: list[str]) -> None:
            # parts: org, name, "resolve", rev, path...
            located = self._repo(parts)
            if located is None:
                return
            _repo_id, repo = located
            commit = repo.commit(parts[3])
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {parts[3]}")
                return
            name = "/".join(parts[4:])
            data = repo.commits[commit].get(name)
            if data is None:
                self._error(404, "EntryNotFound", f"{name} does not exist")
                return
            headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"',
                       "Content-Type": "application/octet-stream"}  # fmt: skip
            if _lfs(name):
                headers |= {"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                            "X-Linked-Size": str(len(data))}  # fmt: skip
            self._send(200, data, headers)

        def _route(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path))
            parts = [p for p in path.split("/") if p]
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(parts[2:])
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(parts)
            else:
                self._error(404, "NotFound", f"{path} is not served here")

        def do_GET(self) -> None:
            self._route()

        def do_HEAD(self) -> None:
            self._route()

    return Handler


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A fake Hub on a free loopback port, stopped after the test."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fill_cache(cache: Path, hub: FakeHub, repo: str, revision: str | None = None,
               allow: list[str] | None = None) -> Path:  # fmt: skip
    """Download a repo from the fake Hub into a cache with huggingface_hub; the snapshot folder."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(repo, revision=revision, cache_dir=cache, endpoint=hub.url,
                               allow_patterns=allow)  # fmt: skip
    return Path(folder)


def model_files(folder: Path) -> dict[str, bytes]:
    """The files of a model folder, by their path in it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip
