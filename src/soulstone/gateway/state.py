"""Where the gateway keeps its services in the aiohttp application, and correlation ids."""

from __future__ import annotations

from aiohttp import web

from soulstone.dispatch.call import REQUEST_ID, SESSION_ID
from soulstone.dispatch.path import RequestPath
from soulstone.dispatch.services import Services

GATEWAY = web.AppKey("gateway", Services)
REQUEST_PATH = web.AppKey("request_path", RequestPath)


def correlation(services: Services, request: web.Request) -> dict[str, str]:
    """The correlation headers of a response: the request id (generated when missing)."""
    request_id = request.headers.get(REQUEST_ID) or services.new_request_id()
    session_id = request.headers.get(SESSION_ID)
    if session_id:
        return {REQUEST_ID: request_id, SESSION_ID: session_id}
    return {REQUEST_ID: request_id}
