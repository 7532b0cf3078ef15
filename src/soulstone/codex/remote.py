"""Remote soulstones (SPEC C12): the `remote` address, and what a remote may not declare.

A remote is an OpenAI-compatible server that soulstone routes to but never
starts or stops: another soulstone gateway, or any server with a `/v1` API.
Its address is one of

- `https://host[:port]/base` or `http://host[:port]/base` (the base path is
  what an OpenAI client's `base_url` ends with, usually `/v1`);
- `http+unix://PERCENT-ENCODED-SOCKET-PATH/base`, the form soulstone itself
  gives a local socket (`http+unix://%2Frun%2Fuser%2F1000%2Fsoulstone%2Fapi.sock/v1`):
  a Unix socket that an SSH tunnel (`ssh -L /path.sock:/remote.sock`) or a
  shared folder provides.

Requests to `/v1/chat/completions` go to `{base}/chat/completions`; paths
outside `/v1` (`/health`, `/tokenize`) go below the base's root (the base
without a trailing `/v1`). Pure: values in, values out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

Scheme = Literal["http", "https", "unix"]
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, the last one NUL
DEFAULT_PORTS = {"http": 80, "https": 443}
URL_FORMS = "https://host[:port]/v1, http://host[:port]/v1 or http+unix://%2Fpath%2Fto.sock/v1"

# Fields that describe a process or container soulstone would run: a remote has none.
LOCAL_ONLY_FIELDS = (
    "image", "exec", "port", "socket", "port_expose", "model", "revision", "model_path",
    "volumes", "env", "devices", "lora", "ttl", "runtime", "warmup",
)  # fmt: skip
# Fields only a remote may have.
REMOTE_ONLY_FIELDS = ("key_file", "key_env", "tokenizer")
# Table keys that would put a secret in the codex itself.
LITERAL_KEY_FIELDS = frozenset({"key", "api_key", "apikey", "token", "bearer", "authorization",
                                "password", "secret"})  # fmt: skip


@dataclass(frozen=True)
class RemoteAddress:
    """A parsed `remote` address: where to connect and the base path of its API."""

    scheme: Scheme
    host: str  # the TCP host; "localhost" (a placeholder for the Host header) on a socket
    port: int  # 0 on a socket
    socket: str | None
    base: str  # the API's base path, without a trailing slash ("/v1"; may be "")

    @property
    def tls(self) -> bool:
        """True for https."""
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        """The Host header's value (the port only when it is not the scheme's default)."""
        if self.socket is not None:
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS.get(self.scheme):
            return host
        return f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """scheme://host[:port] as an HTTP client addresses it (a placeholder on a socket)."""
        if self.socket is not None:
            return "http://localhost"
        return f"{self.scheme}://{self.host_header}"

    @property
    def root(self) -> str:
        """The base path without a trailing `/v1`: where `/health` and `/tokenize` live."""
        return self.base[: -len("/v1")] if self.base.endswith("/v1") else self.base

    def path_for(self, path: str) -> str:
        """The remote's path for a gateway path (`/v1/x` -> base + `/x`, else root + path)."""
        if path == "/v1" or path.startswith("/v1/"):
            return self.base + path[len("/v1") :]
        return self.root + path

    def display(self) -> str:
        """The address as the codex spells it (it never holds a secret)."""
        if self.socket is not None:
            return f"http+unix://{quote(self.socket, safe='')}{self.base}"
        return f"{self.origin}{self.base}"


def parse_remote(text: str) -> RemoteAddress | str:
    """The parsed address, or a message saying what is wrong with it."""
    if text.startswith("http+unix://"):
        rest = text[len("http+unix://") :]
        encoded, slash, base = rest.partition("/")
        socket = unquote(encoded)
        if not socket.startswith("/"):
            return (f"{text!r}: the socket path must be absolute and percent-encoded "
                    "(http+unix://%2Frun%2Fx.sock/v1)")  # fmt: skip
        if len(socket.encode()) > SOCKET_PATH_MAX:
            return f"{text!r}: the socket path is longer than {SOCKET_PATH_MAX} bytes"
        return RemoteAddress("unix", "localhost", 0, socket, _base(slash + base))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        return f"{text!r} is not a URL: {error}"
    if parts.scheme not in ("http", "https"):
        return f"{text!r}: expected {URL_FORMS}"
    if parts.username is not None or parts.password is not None:
        return ("the address holds credentials (user:password@, not repeated here): a key "
                "never goes into the codex; put it in a file (key_file, mode 0600) or a "
                "variable (key_env)")  # fmt: skip
    if not parts.hostname:
        return f"{text!r} names no host"
    if parts.query or parts.fragment:
        return f"{text!r}: a query or fragment has no place in a base URL"
    scheme: Scheme = "https" if parts.scheme == "https" else "http"
    return RemoteAddress(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], None,
                         _base(parts.path))  # fmt: skip


def _base(path: str) -> str:
    return path.rstrip("/")
