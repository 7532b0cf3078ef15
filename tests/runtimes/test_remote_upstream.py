"""A remote soulstone's upstream over TLS (SPEC C12): base path, Host, key, certificate checks."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from helpers import free_port, load, write
from soulstone.codex.models import Soulstone
from soulstone.dispatch.forward import request_head
from soulstone.runtimes.http1 import post
from soulstone.runtimes.remote import probe_remote
from soulstone.runtimes.upstream import Upstreams

KEY = "sk-remote-test"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (and its key), made with openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return cert, key


async def _echo(request: web.Request) -> web.Response:
    seen = {"path": request.path, "host": request.headers.get("Host"),
            "authorization": request.headers.get("Authorization")}  # fmt: skip
    return web.Response(body=orjson.dumps(seen), content_type="application/json")


async def _models(request: web.Request) -> web.Response:
    data = [{"id": "big"}, {"id": "council/all"}]
    return web.json_response({"object": "list", "data": data})


@pytest.fixture
async def tls_server(certificate: tuple[Path, Path]) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_post("/team/v1/chat/completions", _echo)
    app.router.add_get("/team/v1/models", _models)  # no /health: the probe falls back
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
    await site.start()
    yield port
    await runner.cleanup()


def _remote(tmp_path: Path, port: int) -> Soulstone:
    text = (f'[far]\nremote = "https://localhost:{port}/team/v1"\nkey_env = "FAR_KEY"\n'
            'models = "discover"\n')  # fmt: skip
    found = load(write(tmp_path / "codex", {"far.toml": text})).get("far")
    assert found is not None
    return found


async def test_requests_go_to_the_base_path_with_host_and_key(
    tls_server: int, certificate: tuple[Path, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("FAR_KEY", KEY)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # the default CA store: ours
    far = _remote(tmp_path, tls_server)
    upstreams = Upstreams()
    try:
        body = b'{"model":"big"}'
        head = request_head(upstreams.request_head(far, "/v1/chat/completions"), "r1", len(body))
        connection, answer = await post(upstreams.pool(far), head, body)
        seen = orjson.loads(await connection.read_all())
        connection.release()
        assert answer.status == 200
        assert seen == {"path": "/team/v1/chat/completions", "host": f"localhost:{tls_server}",
                        "authorization": f"Bearer {KEY}"}  # fmt: skip
        probe = await probe_remote(upstreams.session(far), far)
        assert probe.healthy and probe.path == "/v1/models"
        assert probe.models == ("big",)  # councils are the remote's own
    finally:
        await upstreams.close()


async def test_an_untrusted_certificate_is_refused(
    tls_server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAR_KEY", KEY)
    far = _remote(tmp_path, tls_server)
    upstreams = Upstreams()
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await post(upstreams.pool(far), request_head(
                upstreams.request_head(far, "/v1/chat/completions"), "r2", 2), b"{}")  # fmt: skip
        probe = await probe_remote(upstreams.session(far), far)
        assert not probe.healthy and KEY not in (probe.reason or "")
    finally:
        await upstreams.close()
