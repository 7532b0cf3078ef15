"""Where the gateway keeps its services in the aiohttp application, and correlation ids."""

from __future__ import annotations

from aiohttp import web

from soulstone.dispatch.call import REQUEST_ID, SESSION_ID
from soulstone.dispatch.path import RequestPath
from soulstone.dispatch.services import Services

GATEWAY = web.AppKey("gateway", Services)
REQUEST_PATH = web.AppKey("request_path", RequestPath)


def correlation(services: Services, request: web.Request, counted: bool = False,
                ) -> dict[str, str]:  # fmt: skip
    """The correlation headers of a response: the request id (generated when missing).

    `counted`: a request to an engine (or a council) that came without an id
    counts in `soulstone_request_ids_generated_total`; health checks, scrapes
    and admin calls do not.
    """
    request_id = request.headers.get(REQUEST_ID) or services.new_request_id(counted)
    session_id = request.headers.get(SESSION_ID)
    if session_id:
        return {REQUEST_ID: request_id, SESSION_ID: session_id}
    return {REQUEST_ID: request_id}
