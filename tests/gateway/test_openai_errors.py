"""The official `openai` client shows the gateway's reason and code (SPEC C4a error shape)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from gateway_harness import RunningGateway, StartGateway, fake_codex, fake_table, keyed

DEFAULT_MAX_OUTPUT = 2048


def openai_client(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.tcp_port}/v1", api_key=key,
                         timeout=60, max_retries=0)  # fmt: skip


def ask(client: openai.OpenAI, model: str, **fields: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **fields
    )


@pytest.fixture
def gateway_and_keys(
    tmp_path: Path, start_gateway: StartGateway
) -> tuple[RunningGateway, dict[str, str]]:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"), fake_table("b", model="n"))
    keys: dict[str, str] = {}
    clients: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {
        "app": {"models": ["m"]}, "limited": {"limits": {"requests_per_minute": 1}},
        "flat": {"models": ["m"], "errors": "flat"},
    }  # fmt: skip
    for name, entry in entries.items():
        keys[name], declared = keyed(name, **entry)
        clients |= declared
    return start_gateway(codex, clients={"clients": clients}), keys


def test_the_openai_client_shows_the_gateways_message_and_code(
    gateway_and_keys: tuple[RunningGateway, dict[str, str]],
) -> None:
    gateway, keys = gateway_and_keys
    app, limited = openai_client(gateway, keys["app"]), openai_client(gateway, keys["limited"])
    ask(limited, "m", max_tokens=2)  # its one request this minute
    cases: list[tuple[Any, type[openai.APIStatusError], int, str, str, str]] = [
        (lambda: ask(app, "m", max_tokens=10**5), openai.BadRequestError, 400,
         "TOKEN_BUDGET_EXCEEDED", "invalid_request_error", "exceeds max_output_tokens"),
        (lambda: ask(openai_client(gateway, "sk-nobody"), "m"), openai.AuthenticationError, 401,
         "UNAUTHORIZED", "authentication_error", ""),
        (lambda: ask(app, "n"), openai.PermissionDeniedError, 403, "MODEL_FORBIDDEN",
         "permission_error", "may not use 'n'"),
        (lambda: ask(app, "nope"), openai.NotFoundError, 404, "MODEL_NOT_FOUND",
         "invalid_request_error", "no soulstone serves the model 'nope'"),
        (lambda: ask(limited, "m"), openai.RateLimitError, 429, "RATE_LIMITED",
         "rate_limit_error", "in the last minute"),
    ]  # fmt: skip
    for call, kind, status, code, error_type, words in cases:
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        error = caught.value
        sent = error.response.json()["error"]  # what the gateway sent
        assert (type(error), error.status_code, error.code, error.type) == (
            kind, status, code, error_type,
        ), sent  # fmt: skip
        assert sent["message"] and words in sent["message"], sent
        assert sent["message"] in error.message, error.message  # what the caller is shown
    budget = caught_budget(app)
    assert (budget["limit"], budget["max_tokens"]) == (DEFAULT_MAX_OUTPUT, 10**5)


def caught_budget(client: openai.OpenAI) -> Any:
    """The extra fields of a budget refusal, as the openai client hands them over."""
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "m", max_tokens=10**5)
    return caught.value.body


def test_flat_errors_for_clients_that_ask(
    gateway_and_keys: tuple[RunningGateway, dict[str, str]],
) -> None:
    gateway, keys = gateway_and_keys
    base = f"http://127.0.0.1:{gateway.tcp_port}"

    def raw(key: str, model: str, **headers: str) -> httpx2.Response:
        body = {"model": model, "messages": [], "max_tokens": 10**5}
        return httpx2.post(f"{base}/v1/chat/completions", json=body, timeout=60,
                           headers={"Authorization": f"Bearer {key}", **headers})  # fmt: skip

    forbidden = raw(keys["flat"], "n")  # clients.yaml says `errors: flat`
    assert forbidden.status_code == 403
    assert forbidden.json() == {"error": "MODEL_FORBIDDEN", "param": "model",
                                "message": "flat may not use 'n'"}  # fmt: skip
    budget = raw(keys["flat"], "m")
    assert budget.status_code == 400
    assert budget.json()["error"] == "TOKEN_BUDGET_EXCEEDED"
    assert {"message", "prompt_tokens", "max_tokens", "limit"} <= budget.json().keys()
    assert budget.json()["limit"] == DEFAULT_MAX_OUTPUT
    asked = raw(keys["app"], "n", **{"X-Soulstone-Errors": "flat"})  # the header alone
    assert asked.json()["error"] == "MODEL_FORBIDDEN"
    nobody = raw("sk-nobody", "m", **{"X-Soulstone-Errors": "flat"})  # before any identity
    assert (nobody.status_code, nobody.json()["error"]) == (401, "UNAUTHORIZED")
    assert raw(keys["app"], "n").json()["error"]["code"] == "MODEL_FORBIDDEN"  # default shape
