"""The FastAPI application of the loopback Hub: its routes, the request log, and the Hub's 404 for the rest."""

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from upload.hub_server import routes_read, routes_test, routes_write
from upload.hub_server.payloads import Refused, hub_error
from upload.hub_server.state import HubState
from upload.hub_server.validation import token_matches, upload_signature


logger = logging.getLogger("geollava-hub")
#: The message huggingface_hub shows as an authentication failure (not as "repository not found").
UNAUTHORIZED = "Invalid credentials in Authorization header"
TOKEN_HINT = "this geollava-hub was started with a token; send it (HF_TOKEN, or token=...)"


def authorize(state: HubState, request: Request) -> JSONResponse | None:
    """``None`` when the request may go on; the 401 answer when the server has a token the request lacks."""
    if state.token is None:
        return None
    lfs_put = request.method == "PUT" and request.url.path.startswith("/_lfs/")
    if lfs_put:  # signed URL: the client sends an LFS upload no token, as to presigned storage
        oid, query = request.url.path.removeprefix("/_lfs/"), request.query_params
        expected = upload_signature(state.token, query.get("repo", ""), oid)
        if hmac.compare_digest(query.get("sig", ""), expected):
            return None
    elif token_matches(request.headers.get("authorization"), state.token):
        return None
    return hub_error("Unauthorized", UNAUTHORIZED, 401, detail=f"{UNAUTHORIZED}: {TOKEN_HINT}")


def create_app(state: HubState) -> FastAPI:
    """The server for ``state`` (its storage loaded already)."""
    app = FastAPI()
    app.state.hub = state

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        response = authorize(state, request) or await call_next(request)
        query = f"?{request.url.query}" if request.url.query else ""
        line = f"{request.method} {request.url.path}{query} -> {response.status_code}"
        state.log.append(line)
        logger.info(line)
        return response

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return exc.response

    # Writes first: their literal paths (/api/repos/create) must win over the read routes' {org}/{name}.
    app.include_router(routes_write.router)
    app.include_router(routes_read.router)
    app.include_router(routes_test.router)

    @app.api_route("/{full:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"])
    async def fallback(full: str, request: Request):
        return hub_error("EntryNotFound", f"geollava-hub: no route for {request.method} /{full}")

    return app
