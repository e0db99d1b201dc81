"""Test hooks, which the Hub does not have: the request log and injected faults."""

from fastapi import APIRouter, Request

from upload.hub_server.routes_read import hub


router = APIRouter()

#: The faults ``POST /_faults`` can arm (see :class:`upload.hub_server.state.HubState`).
FAULTS = ("fail_lfs_put_after", "fail_commit_after")


@router.get("/_log")
async def get_log(request: Request):
    """Every request served so far, one ``METHOD path -> status`` line each (tests count them)."""
    return hub(request).log


@router.post("/_faults")
async def set_faults(request: Request):
    """Arm (or, with ``{}``, clear) injected faults."""
    body = await request.json()
    faults = hub(request).faults
    faults.clear()
    faults.update({k: int(v) for k, v in body.items() if k in FAULTS})
    return dict(faults)
