"""A small client for a running gateway's admin API, over its Unix socket."""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from soulstone.errors import SoulstoneError, UsageError
from soulstone.sse import SSEReader

SOCKET_ENV = "SOULSTONE_SOCKET"


def default_socket(runtime_folder: Path) -> Path:
    """`$SOULSTONE_SOCKET`, else `$XDG_RUNTIME_DIR/soulstone/api.sock`."""
    return Path(os.environ.get(SOCKET_ENV) or runtime_folder / "api.sock")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path))
        self.sock = sock


class GatewayClient:
    """Calls the admin API of the gateway listening on a Unix socket."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 3600) -> dict[str, Any]:  # fmt: skip
        """Send one request; return the JSON answer or raise with the gateway's message."""
        connection = _UnixConnection(self.path, timeout)
        try:
            payload = orjson.dumps(body) if body is not None else None
            connection.request(method, path, body=payload,
                               headers={"Content-Type": "application/json"})  # fmt: skip
            response = connection.getresponse()
            raw = response.read()
        except OSError as error:
            raise SoulstoneError(f"the gateway on {self.path} did not answer: {error}") from None
        finally:
            connection.close()
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            document = {"message": raw.decode(errors="replace")}
        if response.status >= 400:
            _refused(response.status, document, response.reason)
        return dict(document)

    def events(self, path: str, body: dict[str, Any],
               timeout: float = 3600) -> Iterator[tuple[str, Any]]:  # fmt: skip
        """POST and read the answer's server-sent events: (event name, parsed data) each.

        Unnamed events are `message`; `[DONE]` ends the iteration. An error
        status raises with the gateway's message.
        """
        connection = _UnixConnection(self.path, timeout)
        try:
            connection.request("POST", path, body=orjson.dumps(body),
                               headers={"Content-Type": "application/json"})  # fmt: skip
            response = connection.getresponse()
            if response.status >= 400:
                raw = response.read()
                try:
                    document = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    document = {"message": raw.decode(errors="replace")}
                _refused(response.status, document, response.reason)
            reader = SSEReader()
            while chunk := response.read1(65536):
                for event in reader.feed(chunk):
                    if event.data is None:
                        continue
                    if event.data == b"[DONE]":
                        return
                    name = event.name.decode() if event.name else "message"
                    yield name, orjson.loads(event.data)
        except OSError as error:
            raise SoulstoneError(f"the gateway on {self.path} did not answer: {error}") from None
        finally:
            connection.close()


def error_message(document: Any, fallback: str) -> str:
    """The message of an error answer, in OpenAI's shape or the flat one."""
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if document.get("message"):
            return str(document["message"])
        if isinstance(error, str):
            return error
    return fallback


def _refused(status: int, document: Any, reason: str) -> None:
    message = error_message(document, reason)
    if status in (400, 404):
        raise UsageError(message)
    raise SoulstoneError(f"the gateway refused: {message}")


def running_gateway(path: Path) -> GatewayClient | None:
    """A client for the gateway on this socket, or None when none answers there."""
    if not path.exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            return None
    return GatewayClient(path)
