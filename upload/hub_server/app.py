"""The FastAPI application of the loopback Hub: its routes, the request log, and the Hub's 404 for the rest."""

import logging

from fastapi import FastAPI, Request

from upload.hub_server import routes_read, routes_test, routes_write
from upload.hub_server.payloads import hub_error
from upload.hub_server.state import HubState


logger = logging.getLogger("geollava-hub")


def create_app(state: HubState) -> FastAPI:
    """The server for ``state`` (its storage loaded already)."""
    app = FastAPI()
    app.state.hub = state

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        response = await call_next(request)
        query = f"?{request.url.query}" if request.url.query else ""
        line = f"{request.method} {request.url.path}{query} -> {response.status_code}"
        state.log.append(line)
        logger.info(line)
        return response

    # Writes first: their literal paths (/api/repos/create) must win over the read routes' {org}/{name}.
    app.include_router(routes_write.router)
    app.include_router(routes_read.router)
    app.include_router(routes_test.router)

    @app.api_route("/{full:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"])
    async def fallback(full: str, request: Request):
        return hub_error("EntryNotFound", f"geollava-hub: no route for {request.method} /{full}")

    return app
